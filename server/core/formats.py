"""Render a ``Transcript`` as each OpenAI ``response_format``: a table of pure functions.

Each renderer returns ``(body, media_type)`` where ``body`` is a ``dict`` (JSON) or ``str``. The
events of OpenAI's transcription stream (server-sent events) are built here too, so a diarized
segment has one shape in ``diarized_json`` and in the stream.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from server.core.transcript import Segment, Transcript, Word

Body = dict[str, Any]

JSON = "application/json"
TEXT = "text/plain; charset=utf-8"


def usage(duration: float) -> Body:
    """OpenAI's ``UsageDuration``: ``{"type": "duration", "seconds"}``, the audio's length in
    seconds rounded up to a whole second."""
    return {"type": "duration", "seconds": int(round(duration + 0.4999))}


def _usage(t: Transcript) -> Body:
    return usage(t.duration)


def _word_dict(w: Word) -> Body:
    return {"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3)}


def _segment_dict(s: Segment, *, words: bool = False) -> Body:
    out: Body = {
        "id": s.id,
        "seek": s.seek,
        "start": round(s.start, 3),
        "end": round(s.end, 3),
        "text": s.text,
        "tokens": list(s.tokens),
        "temperature": s.temperature,
        "avg_logprob": s.avg_logprob,
        "compression_ratio": s.compression_ratio,
        "no_speech_prob": s.no_speech_prob,
    }
    if s.speaker is not None:
        out["speaker"] = s.speaker
    if s.confidence is not None:
        out["confidence"] = s.confidence
    if words:  # faster-whisper's shape; OpenAI's top-level "words" below is the same list
        out["words"] = [_word_dict(w) for w in s.words]
    return out


def diarized_segment(s: Segment) -> Body:
    """OpenAI's ``TranscriptionDiarizedSegment`` (``type: "transcript.text.segment"``), plus the
    segment's ``confidence`` when it has one: the same object in ``diarized_json`` and in the stream."""
    out: Body = {
        "id": f"seg_{s.id}",
        "start": round(s.start, 3),
        "end": round(s.end, 3),
        "speaker": s.speaker,
        "text": s.text.strip(),
        "type": "transcript.text.segment",
    }
    if s.confidence is not None:
        out["confidence"] = s.confidence
    return out


def render_json(t: Transcript, *, words: bool = False) -> tuple[Body, str]:
    """``{"text", "usage"}`` (plus ``warnings`` when there are any)."""
    body: Body = {"text": t.text, "usage": _usage(t)}
    if t.warnings:
        body["warnings"] = list(t.warnings)
    return body, JSON


def render_text(t: Transcript, *, words: bool = False) -> tuple[str, str]:
    """The plain transcript text followed by a newline."""
    return t.text + "\n", TEXT


def render_verbose_json(t: Transcript, *, words: bool = False) -> tuple[Body, str]:
    """OpenAI ``TranscriptionVerbose``: task, language, duration, text, segments, words, usage."""
    body: Body = {
        "task": t.task,
        "language": t.language,
        "duration": round(t.duration, 3),
        "text": t.text,
        "segments": [_segment_dict(s, words=words) for s in t.segments],
    }
    if words:
        body["words"] = [_word_dict(w) for w in t.words]
    body["usage"] = _usage(t)
    if t.warnings:
        body["warnings"] = list(t.warnings)
    return body, JSON


def render_diarized_json(t: Transcript, *, words: bool = False) -> tuple[Body, str]:
    """OpenAI ``TranscriptionDiarized``, each segment also carrying its ``confidence``."""
    segments = [diarized_segment(s) for s in t.segments]
    body: Body = {
        "duration": round(t.duration, 3),
        "task": t.task,
        "text": t.text,
        "segments": segments,
        "usage": _usage(t),
    }
    if t.warnings:
        body["warnings"] = list(t.warnings)
    return body, JSON


def format_timestamp(seconds: float, *, decimal: str = ".", always_hours: bool = True) -> str:
    """``HH:MM:SS.mmm`` (``decimal=","`` for SRT), as in openai/whisper's ``utils.py``."""
    ms = int(round(max(seconds, 0.0) * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    head = f"{hours:02d}:" if always_hours or hours else ""
    return f"{head}{minutes:02d}:{secs:02d}{decimal}{ms:03d}"


def render_srt(t: Transcript, *, words: bool = False) -> tuple[str, str]:
    """SubRip cues, one per segment, ``[A] `` prefixed when the segment has a speaker."""
    cues = []
    for i, s in enumerate(t.segments, start=1):
        text = s.text.strip()
        if s.speaker is not None:
            text = f"[{s.speaker}] {text}"
        start = format_timestamp(s.start, decimal=",")
        end = format_timestamp(s.end, decimal=",")
        cues.append(f"{i}\n{start} --> {end}\n{text}\n")
    return "\n".join(cues), "application/x-subrip; charset=utf-8"


def render_vtt(t: Transcript, *, words: bool = False) -> tuple[str, str]:
    """WebVTT cues, one per segment, with a ``<v A>`` voice tag when the segment has a speaker."""
    cues = ["WEBVTT\n"]
    for s in t.segments:
        text = s.text.strip()
        if s.speaker is not None:
            text = f"<v {s.speaker}>{text}"
        cues.append(f"{format_timestamp(s.start)} --> {format_timestamp(s.end)}\n{text}\n")
    return "\n".join(cues), "text/vtt; charset=utf-8"


RENDERERS: dict[str, Callable[..., tuple[Body | str, str]]] = {
    "json": render_json,
    "text": render_text,
    "srt": render_srt,
    "vtt": render_vtt,
    "verbose_json": render_verbose_json,
    "diarized_json": render_diarized_json,
}
"""response_format → renderer. The whisper server offers all but ``diarized_json``."""

TIMELESS_FORMATS = frozenset({"json", "text"})
"""response_formats whose body carries no times: the engine can decode text tokens only for them
(``TranscribeOptions.without_timestamps``)."""


# ---------------------------------------------------------------------------------------------
# Events of OpenAI's transcription stream (``stream=true``: server-sent events)


def delta_event(delta: str, segment_id: str | None = None) -> Body:
    """``transcript.text.delta``: a piece of text, with the ``segment_id`` it belongs to if any."""
    ev: Body = {"type": "transcript.text.delta", "delta": delta}
    if segment_id is not None:
        ev["segment_id"] = segment_id
    return ev


def segment_event(s: Segment) -> Body:
    """``transcript.text.segment``: one diarized segment, the shape of ``diarized_json``'s segments."""
    return diarized_segment(s)


def done_event(text: str, warnings: Sequence[str] = (), usage: Body | None = None) -> Body:
    """``transcript.text.done``: the whole text, the ``usage`` and the warnings (each once)."""
    ev: Body = {"type": "transcript.text.done", "text": text}
    if usage is not None:
        ev["usage"] = usage
    if warnings:
        ev["warnings"] = list(dict.fromkeys(warnings))
    return ev


def encode_sse(event: Body) -> bytes:
    """One server-sent event: ``data: <json>`` and a blank line, UTF-8."""
    return f"data: {json.dumps(event, ensure_ascii=False)}\n\n".encode()
