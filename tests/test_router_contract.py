"""What a client of the router can rely on (issue 14's router defects), with fake backends:

- segment times are ordered and inside the audio in every response format; a segment with words
  spans exactly its words (verbose_json, srt, vtt), or in ``diarized_json`` (speaker turns) covers
  its speaker's turn around them;
- for a file the router sends whole, its text, segments and decoding statistics are the whisper
  server's own;
- the stream's ``transcript.text.done`` carries OpenAI's duration usage;
- the diarization window is the sidecar's ``max_window_s`` (asked once), so a file that fits is
  diarized in one call;
- overlapping turns from the sidecar give overlapping ``diarized_json`` segments, each word in one;
- a speaker turn that got none of its speaker's words is a ``diarized_json`` segment with empty text.
"""

from __future__ import annotations

import asyncio
import json
import re
import struct
from dataclasses import replace

import httpx
import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from server.core.audio import SAMPLE_RATE, to_wav_bytes
from server.core.transcript import Segment, SpeakerTurn, Word
from server.router.merge import (
    MIN_UNTRANSCRIBED_S,
    TURN_REACH_S,
    assign_speakers,
    cover_turns,
    fit_times,
    split_at_pauses,
    split_by_words,
    untranscribed_turns,
)
from server.router.pipeline import text_pieces
from tests.conftest import make_client
from tests.test_router import CONVERSATION, dialogue, fake_whisper, router_app, tone

DIARIZE = "gpt-4o-transcribe-diarize"


# ---------------------------------------------------------------------------------------------
# canned backends: the same answer for any audio (the file is short: the router sends it whole)


def words_of(*spec: tuple[str, float, float]) -> list[dict]:
    return [{"word": w, "start": a, "end": b} for w, a, b in spec]


def canned_whisper(segments: list[dict], log: list | None = None) -> Starlette:
    """verbose_json with ``segments`` (their ``words`` only when asked), json with their text."""

    async def transcribe(request: Request):
        form = await request.form()
        fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        if log is not None:
            log.append(fields)
        want_words = "word" in form.getlist("timestamp_granularities[]")
        out = []
        for i, s in enumerate(segments):
            seg = {
                "id": i,
                "seek": 0,
                "tokens": [10 + i, 11 + i],
                "temperature": 0.0,
                "avg_logprob": -0.2 - 0.1 * i,
                "compression_ratio": 1.1 + 0.2 * i,
                "no_speech_prob": 0.02 * (i + 1),
                **s,
            }
            seg["text"] = "".join(w["word"] for w in s["words"])
            if not want_words:
                seg.pop("words")
            out.append(seg)
        text = "".join(s["text"] for s in out).strip()
        if fields.get("response_format") == "json":
            return JSONResponse({"text": text, "usage": {"type": "duration", "seconds": 1}})
        return JSONResponse({"task": "transcribe", "language": "en", "duration": 10.0, "text": text, "segments": out})

    async def ready(request: Request):
        return JSONResponse({"ready": True, "detail": "ready"})

    async def models(request: Request):
        return JSONResponse({"object": "list", "data": [{"id": "whisper-1"}]})

    return Starlette(
        routes=[
            Route("/v1/audio/transcriptions", transcribe, methods=["POST"]),
            Route("/v1/models", models),
            Route("/ready", ready),
        ]
    )


def canned_sidecar(turns: list[tuple[float, float, str, float]]) -> Starlette:
    async def diarize(request: Request):
        await request.form()
        labels = list(dict.fromkeys(t[2] for t in turns))
        return JSONResponse(
            {
                "segments": [{"start": a, "end": b, "speaker": s, "confidence": c} for a, b, s, c in turns],
                "speakers": labels,
                "fingerprints": {},
                "duration": 10.0,
                "models": {"backend": "canned", "embedder": "none"},
                "warnings": [],
            }
        )

    async def ready(request: Request):
        return JSONResponse({"ready": True, "detail": "ready"})

    return Starlette(routes=[Route("/v1/diarize", diarize, methods=["POST"]), Route("/ready", ready)])


def canned_router(segments, turns, log=None, **overrides):
    return router_app(
        whisper_transport=httpx.ASGITransport(app=canned_whisper(segments, log)),
        sidecar_transport=httpx.ASGITransport(app=canned_sidecar(turns)),
        **overrides,
    )


TEN_SECONDS = tone(300.0, 10.0)


async def canned_diarized(segments, turns):
    """A canned router's SDK client, the 10 s upload it was sent and its ``diarized_json`` answer."""
    client = make_client(canned_router(segments, turns))
    data = ("s.wav", to_wav_bytes(TEN_SECONDS))
    out = await client.audio.transcriptions.create(model=DIARIZE, file=data, response_format="diarized_json")
    return client, data, out


async def streamed_segments(client, data, model: str = DIARIZE) -> list:
    """The ``transcript.text.segment`` events of a streamed ``diarized_json`` request for ``data``."""
    stream = await client.audio.transcriptions.create(
        model=model, file=data, response_format="diarized_json", stream=True
    )
    return [ev for ev in [ev async for ev in stream] if ev.type == "transcript.text.segment"]


# What the whisper server can send (seen on AMI dev00): word times from the alignment disagree with
# the segment's timestamp tokens, here a first word 1.2 s before its segment's start; and a last
# segment whose timestamp and last word run past the end of the audio (10 s).
SKEWED = [
    {"start": 0.0, "end": 3.0, "words": words_of((" Hello", 0.4, 0.9), (" there.", 0.9, 1.5))},
    {"start": 4.2, "end": 6.0, "words": words_of((" Yeah,", 3.0, 3.5), (" I", 4.3, 4.5), (" see.", 4.5, 5.2))},
    {"start": 8.0, "end": 10.6, "words": words_of((" The", 8.2, 8.5), (" end.", 8.5, 10.4))},
]
SKEWED_TURNS = [(0.3, 1.6, "spk0", 0.9), (2.9, 3.6, "spk1", 0.8), (4.2, 5.3, "spk0", 0.9), (8.0, 10.0, "spk1", 0.7)]


def cue_times(body: str) -> list[tuple[float, float]]:
    """(start, end) of every srt or vtt cue, in seconds."""
    out = []
    for h, m, sec, ms, h2, m2, sec2, ms2 in re.findall(
        r"(\d+):(\d\d):(\d\d)[,.](\d{3}) --> (\d+):(\d\d):(\d\d)[,.](\d{3})", body
    ):
        out.append(
            (
                int(h) * 3600 + int(m) * 60 + int(sec) + int(ms) / 1000,
                int(h2) * 3600 + int(m2) * 60 + int(sec2) + int(ms2) / 1000,
            )
        )
    return out


def check_spans(spans, duration: float, what: str) -> None:
    assert spans, what
    for a, b in spans:
        assert 0.0 <= a <= b <= duration + 1e-9, (what, a, b)


@pytest.mark.parametrize("model", ["whisper-1", DIARIZE])
async def test_segment_times_are_ordered_and_inside_the_audio_in_every_format(model):
    client = make_client(canned_router(SKEWED, SKEWED_TURNS))
    data = ("s.wav", to_wav_bytes(TEN_SECONDS))
    duration = 10.0
    for fmt in ("srt", "vtt"):
        body = await client.audio.transcriptions.create(model=model, file=data, response_format=fmt)
        check_spans(cue_times(body), duration, fmt)
    verbose = await client.audio.transcriptions.create(
        model=model, file=data, response_format="verbose_json", timestamp_granularities=["word", "segment"]
    )
    assert verbose.duration == pytest.approx(duration)
    check_spans([(s.start, s.end) for s in verbose.segments], duration, "verbose_json")
    check_spans([(w.start, w.end) for w in verbose.words], duration, "verbose_json words")
    for s in verbose.segments:  # a segment spans exactly its words
        words = s.model_extra["words"]
        assert words and s.start == words[0]["start"] and s.end == max(w["end"] for w in words), s
    if model != DIARIZE:
        return
    out = await client.audio.transcriptions.create(model=model, file=data, response_format="diarized_json")
    check_spans([(s.start, s.end) for s in out.segments], duration, "diarized_json")
    assert all(s.model_extra.get("confidence") is not None for s in out.segments)
    assert [(s.speaker, s.text) for s in out.segments] == [
        ("A", "Hello there."),
        ("B", "Yeah,"),
        ("A", "I see."),
        ("B", "The end."),
    ]
    # diarized_json segments are speaker turns: each covers its speaker's turn around its words
    # (B's "Yeah," is said at 3.0-3.5 inside B's turn 2.9-3.6; the last turn is cut at the audio's end)
    assert [(s.start, s.end) for s in out.segments] == [(0.3, 1.6), (2.9, 3.6), (4.2, 5.3), (8.0, 10.0)]
    segments = await streamed_segments(client, data, model)
    check_spans([(s.start, s.end) for s in segments], duration, "stream")
    assert [(s.start, s.end) for s in segments] == [(s.start, s.end) for s in out.segments]
    assert all(s.model_extra.get("confidence") is not None for s in segments)


# ---------------------------------------------------------------------------------------------
# the whisper server's own answer for a file the router sends whole


def padded_dialogue() -> np.ndarray:
    """Two speakers' tone bursts after 1.5 s of silence, 8.9 s in all (one chunk, sent whole)."""
    samples, _ = dialogue([("A", 2.0, 0.8), ("B", 1.5, 0.3), ("A", 1.2, 1.0)])
    return np.concatenate([np.zeros(int(1.5 * SAMPLE_RATE), np.float32), samples])


async def whisper_direct(samples, **fields) -> dict:
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=fake_whisper([])), base_url="http://w")
    files = {"file": ("a.wav", to_wav_bytes(samples))}
    r = await http.post("/v1/audio/transcriptions", data={"model": "whisper-1", **fields}, files=files)
    return r.json()


async def test_a_short_file_gets_the_whisper_servers_own_segments_and_statistics():
    samples = padded_dialogue()
    control: dict = {}
    client = make_client(router_app(None, control))
    direct = await whisper_direct(samples, response_format="verbose_json")
    assert len(direct["segments"]) >= 2 and len({s["avg_logprob"] for s in direct["segments"]}) > 1
    out = await client.audio.transcriptions.create(
        model="whisper-1", file=("a.wav", to_wav_bytes(samples)), response_format="verbose_json"
    )
    body = out.model_dump(exclude_none=True)
    assert body["text"] == direct["text"]
    assert [{k: v for k, v in s.items()} for s in body["segments"]] == direct["segments"]

    # diarized, the pieces of each segment keep its statistics; the text stays the whisper server's
    out = await client.audio.transcriptions.create(
        model=DIARIZE, file=("a.wav", to_wav_bytes(samples)), response_format="verbose_json"
    )
    assert out.text == direct["text"]
    assert control["calls"] == 1
    assert len(out.segments) > len(direct["segments"])  # some were cut where the speaker changes
    for s in out.segments:
        parent = next(p for p in direct["segments"] if p["start"] <= s.start and s.end <= p["end"])
        assert s.text in parent["text"]
        for key in ("seek", "temperature", "avg_logprob", "compression_ratio", "no_speech_prob"):
            assert getattr(s, key) == parent[key], (key, s, parent)

    direct_json = await whisper_direct(samples, response_format="json")
    for model in ("whisper-1", DIARIZE):
        out = await client.audio.transcriptions.create(model=model, file=("a.wav", to_wav_bytes(samples)))
        assert out.text == direct_json["text"]


def float_wav(samples: np.ndarray) -> bytes:
    """float32 mono 16 kHz samples as an IEEE-float WAV (as AMI's excerpts are stored)."""
    data = np.ascontiguousarray(samples, dtype="<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, SAMPLE_RATE, SAMPLE_RATE * 4, 4, 32)
    body = (
        b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"fact"
        + struct.pack("<II", 4, len(data) // 4)
        + b"data"
        + struct.pack("<I", len(data))
        + data
    )
    return b"RIFF" + struct.pack("<I", len(body)) + body


def test_chunks_carry_exactly_the_decoded_samples():
    """The router re-encodes what it decoded for the backends; decoding that again gives the same
    samples (a float32 upload too), so the whisper server sees what it would see directly."""
    from server.core.audio import decode_audio

    rng = np.random.default_rng(0)
    x = np.clip(0.3 * rng.standard_normal(SAMPLE_RATE), -1, 1).astype(np.float32)
    x[:3] = [1.0, -1.0, 0.0]
    decoded = decode_audio(float_wav(x))
    assert np.array_equal(decode_audio(to_wav_bytes(decoded)), decoded)


@pytest.mark.slow
async def test_the_router_text_is_the_real_whisper_servers(base_engine, base_model_dir, cache_dir, speech_samples):
    """With the real Whisper base (the tiny random model falls back to sampling, so its text is
    not repeatable): the same file through the router and straight to the whisper server gives
    the same text, segments and statistics, in json and verbose_json."""
    from jax_models.whisper_app import create_app as whisper_app
    from server.kit.settings import WhisperSettings

    app = whisper_app(WhisperSettings(model=str(base_model_dir), warmup=False, cache_dir=cache_dir), engine=base_engine)
    silence = np.zeros(int(1.5 * SAMPLE_RATE), np.float32)
    samples = np.concatenate([silence, speech_samples, silence])  # leading silence a VAD would cut
    data = float_wav(samples)  # a float32 upload: re-encoded by the router for the whisper server
    direct = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://w")
    client = make_client(router_app(whisper_transport=httpx.ASGITransport(app=app)))
    for fmt in ("verbose_json", "json"):
        want = (
            await direct.post(
                "/v1/audio/transcriptions",
                data={"model": "whisper-1", "response_format": fmt},
                files={"file": ("a.wav", data)},
            )
        ).json()
        got = (
            await client.audio.transcriptions.create(model="whisper-1", file=("a.wav", data), response_format=fmt)
        ).model_dump(exclude_none=True)
        assert got["text"] == want["text"], fmt
        if fmt == "verbose_json":
            assert want["segments"] and len(got["segments"]) == len(want["segments"])
            for g, w in zip(got["segments"], want["segments"]):
                assert set(g) == set(w)
                for key, value in w.items():  # statistics to float noise: the engine's batches differ
                    assert g[key] == (pytest.approx(value, abs=1e-4) if isinstance(value, float) else value), key


# ---------------------------------------------------------------------------------------------
# stream usage


async def test_the_stream_ends_with_duration_usage():
    samples = padded_dialogue()
    client = make_client(router_app())
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=router_app()), base_url="http://r")
    for model, fmt in (("whisper-1", "json"), (DIARIZE, "diarized_json")):
        r = await http.post(
            "/v1/audio/transcriptions",
            data={"model": model, "response_format": fmt, "stream": "true"},
            files={"file": ("a.wav", to_wav_bytes(samples))},
        )
        events = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: ")]
        done = events[-1]
        assert done["type"] == "transcript.text.done"
        assert done["usage"] == {"type": "duration", "seconds": 9}  # 8.9 s, rounded up as in json
        assert "".join(e["delta"] for e in events if e["type"] == "transcript.text.delta") == done["text"]
        plain = await client.audio.transcriptions.create(model=model, file=("a.wav", to_wav_bytes(samples)))
        assert done["text"] == plain.text  # the same text as without streaming
    stream = await client.audio.transcriptions.create(
        model="whisper-1", file=("a.wav", to_wav_bytes(samples)), stream=True
    )
    done = [ev async for ev in stream][-1]
    assert done.usage.type == "duration" and done.usage.model_extra["seconds"] == 9


def test_text_pieces_concatenate_to_the_chunk_text():
    assert text_pieces([" Hello", " there.", "  "], "") == ["Hello", " there.", ""]
    assert text_pieces([" a ", "b"], " ") == [" a ", "b"]
    assert text_pieces(["  ", " x "], " ") == ["", " x"]


# ---------------------------------------------------------------------------------------------
# diarization windows from the sidecar's max_window_s


@pytest.fixture(scope="module")
def conversation():
    samples, _ = dialogue(CONVERSATION)  # 37 s: four 10 s chunks
    return to_wav_bytes(samples), len(samples) / SAMPLE_RATE


async def diarize_twice(app, data) -> list:
    client = make_client(app)
    outs = []
    for _ in range(2):
        outs.append(
            await client.audio.transcriptions.create(
                model=DIARIZE, file=("c.wav", data), response_format="diarized_json"
            )
        )
    return outs


async def test_a_file_that_fits_the_sidecars_window_is_diarized_in_one_call(conversation):
    data, duration = conversation
    control = {"max_window_s": 600.0}
    log: list = []
    outs = await diarize_twice(router_app(log, control, diarization_window_s=None), data)
    assert control["calls"] == 2 and control["models_calls"] == 1  # one call per request; asked once
    assert len(log) >= 8  # still several chunks for the whisper server
    assert control["seconds"][0] > duration - 1.5  # the whole file (less the silence at its edges)
    for out in outs:
        assert {s.speaker for s in out.segments} == {"A", "B"}
        assert all(s.speaker == ("A" if "low" in s.text else "B") for s in out.segments)


@pytest.mark.parametrize(
    "reported, setting, longest",
    [
        (None, None, 30.0),  # the sidecar reports no max_window_s: 30 s
        ("404", None, 30.0),  # an old sidecar without the route
        (600.0, 10.0, 10.0),  # the router's setting caps the sidecar's
        (15.0, None, 15.0),
    ],
)
async def test_diarization_windows_fall_back_or_are_capped(conversation, reported, setting, longest):
    data, duration = conversation
    control = {} if reported == "404" else {"max_window_s": reported}
    outs = await diarize_twice(router_app(None, control, diarization_window_s=setting), data)
    assert control["calls"] >= 4 and max(control["seconds"]) <= longest + 1e-6
    assert control["models_calls"] == 1
    for out in outs:
        assert all(s.speaker == ("A" if "low" in s.text else "B") for s in out.segments)  # linked across windows


async def test_a_sidecar_slow_to_list_its_models_costs_only_the_timeout(conversation):
    data, _ = conversation
    control = {"max_window_s": 600.0, "models_delay": 30.0}
    app = router_app(None, control, diarization_window_s=None, connect_timeout_s=0.3)
    outs = await asyncio.wait_for(diarize_twice(app, data), timeout=20)
    assert control["models_calls"] == 1  # not asked again at once after a failure
    assert control["calls"] >= 4  # fell back to 30 s windows
    assert all(s.speaker for out in outs for s in out.segments)


# ---------------------------------------------------------------------------------------------
# overlapping speech


OVERLAP = [
    {
        "start": 0.5,
        "end": 7.5,
        "words": words_of(
            (" I", 0.6, 0.8),
            (" think", 0.8, 1.2),
            (" we", 1.2, 1.4),
            (" should", 1.4, 2.0),
            (" yeah,", 3.2, 3.6),
            (" right", 3.7, 4.2),  # said by B while A talks on (A's turn spans them)
            (" ship", 5.0, 5.5),
            (" it", 5.5, 5.7),
            (" Monday.", 6.0, 7.0),
        ),
    }
]
OVERLAP_TURNS = [(0.5, 7.2, "spk0", 0.9), (3.0, 4.5, "spk1", 0.8)]


async def test_overlapping_turns_give_overlapping_segments():
    _, _, out = await canned_diarized(OVERLAP, OVERLAP_TURNS)
    got = [(s.speaker, s.start, s.end, s.text) for s in out.segments]
    # each covers its speaker's turn: A's 0.5-7.2 around B's 3.0-4.5
    assert got == [("A", 0.5, 7.2, "I think we should ship it Monday."), ("B", 3.0, 4.5, "yeah, right")]
    assert out.text == "I think we should yeah, right ship it Monday."  # the whisper server's text
    words = sorted(w for s in out.segments for w in s.text.split())
    assert words == sorted(out.text.split())  # every word in exactly one segment
    assert all(s.model_extra["confidence"] is not None for s in out.segments)


def test_split_by_words_keeps_a_speaker_through_anothers_words():
    from intervaltree import IntervalTree

    words = tuple(Word(w["word"], w["start"], w["end"]) for w in OVERLAP[0]["words"])
    seg = Segment(0, 0.5, 7.5, "".join(w.word for w in words), words=words, avg_logprob=-0.3, seek=7)
    tree = IntervalTree()
    for a, b, s, c in OVERLAP_TURNS:
        tree.addi(a, b, SpeakerTurn(a, b, s, c))
    pieces = split_by_words(seg, tree)
    assert [(p.speaker, p.text) for p in pieces] == [
        ("spk0", " I think we should ship it Monday."),
        ("spk1", " yeah, right"),
    ]
    assert all(p.avg_logprob == -0.3 and p.seek == 7 and p.tokens == () for p in pieces)
    # without the overlap (A stops while B talks) the pieces follow each other
    tree = IntervalTree()
    for a, b, s in ((0.5, 3.0, "spk0"), (3.0, 4.5, "spk1"), (4.5, 7.2, "spk0")):
        tree.addi(a, b, SpeakerTurn(a, b, s, 0.9))
    pieces = split_by_words(seg, tree)
    assert [p.speaker for p in pieces] == ["spk0", "spk1", "spk0"]
    assert all(a.end <= b.start for a, b in zip(pieces, pieces[1:]))


# ---------------------------------------------------------------------------------------------
# diarized_json segments cover their speaker's turn (the pauses inside it are not missed speech)

# A talks 0.2-4.8 with a long pause inside (two sentences, two whisper segments); B answers 5.0-8.9,
# one sentence with a pause mid-way; A's last word at 9.4-9.8 inside A's turn 9.0-9.9
TURN_WORDS = [
    {"start": 0.4, "end": 1.6, "words": words_of((" We", 0.4, 0.7), (" start.", 0.8, 1.6))},
    {"start": 3.0, "end": 4.4, "words": words_of((" Any", 3.0, 3.4), (" news?", 3.5, 4.4))},
    {"start": 5.3, "end": 8.5, "words": words_of((" Not", 5.3, 5.6), (" yet,", 5.6, 6.0), (" sorry.", 7.6, 8.5))},
    {"start": 9.4, "end": 9.8, "words": words_of((" Fine.", 9.4, 9.8))},
]
TURN_TURNS = [(0.2, 4.8, "spk0", 0.9), (5.0, 8.9, "spk1", 0.8), (9.0, 9.9, "spk0", 0.9)]


async def test_diarized_json_segments_cover_their_speakers_turns():
    from bench.router_eval import Reference, score

    client, data, out = await canned_diarized(TURN_WORDS, TURN_TURNS)
    got = [(s.speaker, s.start, s.end, s.text) for s in out.segments]
    # A's two segments in one turn meet at the second one's first word; no segment overlaps its
    # own speaker's; the text is the whisper server's, unchanged
    assert got == [
        ("A", 0.2, 3.0, "We start."),
        ("A", 3.0, 4.8, "Any news?"),
        ("B", 5.0, 8.9, "Not yet, sorry."),
        ("A", 9.0, 9.9, "Fine."),
    ]
    # so the DER of what a client gets is the diarizer's own (0 here), not the words' (the pauses missed)
    ref = Reference(tuple(SpeakerTurn(a, b, s) for a, b, s, _ in TURN_TURNS), uem=(0.0, 10.0))
    assert score([s.model_dump() for s in out.segments], ref)["der"] == pytest.approx(0.0, abs=1e-6)
    # subtitles and verbose_json keep openai/whisper's timing: a segment spans exactly its words
    verbose = await client.audio.transcriptions.create(model=DIARIZE, file=data, response_format="verbose_json")
    assert [(s.start, s.end) for s in verbose.segments] == [(0.4, 1.6), (3.0, 4.4), (5.3, 8.5), (9.4, 9.8)]
    events = await streamed_segments(client, data)
    assert [(e.speaker, e.start, e.end) for e in events] == [g[:3] for g in got]


def test_cover_turns_bounds():
    words = (Word(" a", 2.0, 2.5),)
    seg = Segment(0, 2.0, 2.5, " a", words=words, speaker="A", confidence=0.9, avg_logprob=-0.4)
    turns = [
        SpeakerTurn(1.0, 3.0, "A", 0.9),
        SpeakerTurn(3.1, 4.0, "A", 0.9),  # joined: 0.1 s apart
        SpeakerTurn(0.0, 6.0, "B", 0.5),
    ]
    (out,) = cover_turns([seg], turns)
    assert (out.start, out.end) == (1.0, 4.0) and out.avg_logprob == -0.4 and out.words == words
    (out,) = cover_turns([seg], turns, start=1.5, end=3.5)  # the audio (or the chunk) bounds it
    assert (out.start, out.end) == (1.5, 3.5)
    # a segment outside its speaker's turns, or without a speaker, is left as it is
    far = replace(seg, start=5.0, end=5.5, words=(Word(" a", 5.0, 5.5),))
    assert cover_turns([far, replace(seg, speaker=None)], turns) == [far, replace(seg, speaker=None)]
    # a segment holds its words up to TURN_REACH_S outside its speaker's turns, and no further
    (out,) = cover_turns([seg], [SpeakerTurn(2.1, 2.4, "A", 0.9)])
    assert (out.start, out.end) == (2.0, 2.5)
    (out,) = cover_turns([seg], [SpeakerTurn(2.1, 2.2, "A", 0.9)])
    assert (out.start, out.end) == (2.0, round(2.2 + TURN_REACH_S, 3)) and out.words == words
    (out,) = cover_turns([seg], [SpeakerTurn(2.4, 2.45, "A", 0.9)])
    assert (out.start, out.end) == (round(2.4 - TURN_REACH_S, 3), 2.5)


def test_a_segment_across_its_speakers_pause_becomes_one_segment_per_stretch():
    """One Whisper segment whose words all went to A, across a 2 s pause in A's turns: two
    diarized segments, one per stretch of A's turns, so the pause is not claimed for A."""
    words = (
        Word(" We", 0.5, 0.9),
        Word(" start,", 1.0, 1.8),
        Word(" um", 2.3, 2.6),  # in no turn of A: stays with the word before it
        Word(" then", 4.2, 4.6),
        Word(" go.", 4.7, 5.5),
    )
    seg = Segment(3, 0.5, 5.5, "".join(w.word for w in words), words=words, speaker="A", avg_logprob=-0.3)
    turns = [SpeakerTurn(0.4, 2.0, "A", 0.9), SpeakerTurn(2.1, 2.2, "A", 0.8), SpeakerTurn(4.0, 6.0, "A", 0.7)]
    first, second = split_at_pauses([seg], turns)
    assert [w.word for w in first.words] == [" We", " start,", " um"] and first.text == " We start, um"
    assert [w.word for w in second.words] == [" then", " go."] and second.text == " then go."
    assert (first.start, first.end, second.start, second.end) == (0.5, 2.6, 4.2, 5.5)
    assert {p.speaker for p in (first, second)} == {"A"} and {p.avg_logprob for p in (first, second)} == {-0.3}
    assert first.tokens == () and second.confidence == 0.7
    covered = cover_turns([first, second], turns)  # then each covers its own stretch, not the pause
    assert [(c.start, c.end) for c in covered] == [(0.4, round(2.2 + TURN_REACH_S, 3)), (4.0, 6.0)]
    # turns 0.25 s apart or less are one stretch; no speaker, one word, or no turns of the speaker: unchanged
    joined = [SpeakerTurn(0.4, 2.0, "A", 0.9), SpeakerTurn(2.2, 6.0, "A", 0.9)]
    assert split_at_pauses([seg], joined) == [seg]
    assert split_at_pauses([replace(seg, speaker=None)], turns) == [replace(seg, speaker=None)]
    assert split_at_pauses([replace(seg, speaker="B")], turns) == [replace(seg, speaker="B")]
    one = replace(seg, text=" We", words=words[:1])
    assert split_at_pauses([one], turns) == [one]
    # a word Whisper timed across the pause belongs to the side it overlaps most: one stretch, so the
    # segment is not split, and it covers only that stretch (its edge TURN_REACH_S past it), not the pause
    long = (Word(" I", 1.0, 1.4), Word(" think", 1.5, 4.3))  # 0.7 s in A's first stretch, 0.3 s in the second
    seg2 = replace(seg, start=1.0, end=4.3, text=" I think", words=long)
    assert split_at_pauses([seg2], turns) == [seg2]
    (out,) = cover_turns([seg2], turns)
    assert (out.start, out.end) == (0.4, round(2.2 + TURN_REACH_S, 3)) and out.words == long


PAUSE_WORDS = [
    {
        "start": 0.4,
        "end": 7.6,
        "words": words_of((" We", 0.5, 0.9), (" start.", 1.0, 1.8), (" Then", 6.2, 6.6), (" go.", 6.7, 7.5)),
    }
]
PAUSE_TURNS = [(0.4, 2.0, "spk0", 0.9), (6.0, 8.0, "spk0", 0.8)]


async def test_diarized_json_and_its_stream_split_a_segment_at_its_speakers_pause():
    """Through the router, offline and streamed: the pause (2-6 s) is in no diarized segment."""
    client, data, out = await canned_diarized(PAUSE_WORDS, PAUSE_TURNS)
    got = [(s.speaker, s.start, s.end, s.text.strip()) for s in out.segments]
    assert (
        got == [("A", 0.4, 2.0, "We start."), ("A", 6.0, 8.0, "Then go.")] and out.text.strip() == "We start. Then go."
    )
    events = await streamed_segments(client, data)
    assert [(e.speaker, e.start, e.end) for e in events] == [g[:3] for g in got]


# Whisper times "Well," (0.2-0.6) before A's turn (1.4-3.0) starts and "today." after it ends: the
# diarizer heard nobody there, so the diarized segment stops TURN_REACH_S outside the turn
REACH_WORDS = [
    {
        "start": 0.2,
        "end": 3.9,
        "words": words_of((" Well,", 0.2, 0.6), (" we", 1.5, 1.7), (" ship", 1.8, 2.4), (" today.", 3.1, 3.9)),
    }
]
REACH_TURNS = [(1.4, 3.0, "spk0", 0.9), (6.0, 7.0, "spk1", 0.8)]


async def test_a_diarized_segment_stops_near_its_speakers_turn_but_keeps_its_words():
    client, data, out = await canned_diarized(REACH_WORDS, REACH_TURNS)
    want = (round(1.4 - TURN_REACH_S, 3), round(3.0 + TURN_REACH_S, 3))
    got = [(s.speaker, s.start, s.end, s.text) for s in out.segments]
    assert got == [("A", *want, "Well, we ship today."), ("B", 6.0, 7.0, "")]
    assert out.text == "Well, we ship today."
    segments = await streamed_segments(client, data)
    assert [(e.speaker, e.start, e.end, e.text) for e in segments] == got
    # subtitles and verbose_json still span exactly the words
    verbose = await client.audio.transcriptions.create(model=DIARIZE, file=data, response_format="verbose_json")
    assert [(s.start, s.end) for s in verbose.segments] == [(0.2, 3.9)]


def test_words_that_do_not_spell_the_text_are_not_used_to_cut_it():
    # an alignment that lost the last words: cutting by words would drop "at nine"
    words = (Word(" We", 0.0, 0.3), Word(" meet", 0.3, 0.8))
    seg = Segment(0, 0.0, 4.0, " We meet at nine.", words=words)
    out = assign_speakers([seg], [SpeakerTurn(0.0, 4.0, "A", 0.9)])
    assert "".join(s.text for s in out) == " We meet at nine."


def test_fit_times():
    segs = [
        Segment(0, 4.2, 6.0, " a b", words=(Word(" a", 3.0, 3.5), Word(" b", 4.3, 5.2))),
        Segment(1, 9.0, 10.6, " c", words=(Word(" c", 9.1, 10.4),)),
        Segment(2, 11.0, 10.5, " d"),
        Segment(3, -0.5, 0.2, " e"),
        Segment(4, 2.0, 3.0, " f g h", words=(Word(" f", 1.5, 2.2),)),
    ]  # words missing: widened only
    out = fit_times(segs, 10.0)
    assert [(s.start, s.end) for s in out] == [(3.0, 5.2), (9.1, 10.0), (10.0, 10.0), (0.0, 0.2), (1.5, 3.0)]
    assert out[1].words[0].end == 10.0


async def test_sidecar_deadline_grows_with_the_window():
    """A diarization call may take its audio's duration on top of the configured deadline (CPU
    diarization runs at 1-3x real time), so a long window is not cut off at a fixed 300 s."""
    from server.core.audio import to_wav_bytes
    from server.router.clients import BackendTimeout, SidecarClient

    seen: dict = {}

    async def handler(request: httpx.Request) -> httpx.Response:
        seen["read"] = request.extensions["timeout"]["read"]
        raise httpx.ReadTimeout("slow", request=request)

    client = SidecarClient("http://sidecar.test", concurrency=1, timeout_s=10.0, transport=httpx.MockTransport(handler))
    try:
        with pytest.raises(BackendTimeout, match="in 40 s"):
            await client.diarize(to_wav_bytes(np.zeros(30 * 16000, np.float32)))
        assert seen["read"] == pytest.approx(40.0)
        with pytest.raises(BackendTimeout, match="in 12 s"):
            await client.diarize(to_wav_bytes(np.zeros(2 * 16000, np.float32)))
    finally:
        await client.aclose()


def test_cover_turns_matches_a_plain_scan_on_many_segments():
    # the bisect over each speaker's stretches gives what checking every stretch gives
    rng = np.random.default_rng(0)
    turns, segs = [], []
    for i in range(400):
        a = float(i) + float(rng.uniform(0, 0.3))
        turns.append(SpeakerTurn(a, a + float(rng.uniform(0.2, 1.4)), "AB"[int(rng.integers(2))], 0.9))
    for i in range(300):
        a = round(float(rng.uniform(0, 400)), 3)  # times in ms, as the whisper server gives them
        segs.append(
            Segment(i, a, round(a + float(rng.uniform(0.05, 0.8)), 3), " x", speaker="AB"[int(rng.integers(2))])
        )
    segs.sort(key=lambda s: s.start)
    got = cover_turns(segs, turns)

    def plain(segments):
        from server.router.merge import _stretches

        st = _stretches(turns)
        out = []
        for s in segments:
            hits = [(a, b) for a, b in st[s.speaker] if a < max(s.end, s.start + 1e-3) and b > s.start]
            out.append((min(a for a, _ in hits), max(b for _, b in hits)) if hits else None)
        return out

    for s, g, p in zip(segs, got, plain(segs)):
        if p is None:
            assert (g.start, g.end) == (s.start, s.end)
            continue
        # holds its words, but no further than TURN_REACH_S outside the stretches it overlaps
        own = (max(s.start, p[0] - TURN_REACH_S), min(s.end, p[1] + TURN_REACH_S))
        assert g.start <= own[0] + 1e-3 and g.end >= own[1] - 1e-3
        assert min(own[0], p[0]) - 1e-3 <= g.start and g.end <= max(own[1], p[1]) + 1e-3
    for spk in "AB":  # one speaker's segments never overlap each other (unless their words did)
        mine = sorted((g for g in got if g.speaker == spk), key=lambda g: g.start)
        orig = {s.id: s for s in segs}
        for x, y in zip(mine, mine[1:]):
            assert x.end <= y.start + 1e-9 or orig[x.id].end > orig[y.id].start


# ---------------------------------------------------------------------------------------------
# a speaker turn that got no word of the transcript is still a diarized_json segment

# A talks 0.2-6.0; B says something under A at 2.5-3.2 that Whisper did not write (a second voice),
# and mumbles alone at 7.0-8.0 (no words either); a 0.1 s sliver of B at 9.0-9.1 is no word at all
SILENT_WORDS = [
    {
        "start": 0.3,
        "end": 5.8,
        "words": words_of((" We", 0.3, 0.6), (" ship", 0.7, 1.5), (" on", 3.4, 3.7), (" Monday.", 3.8, 5.8)),
    }
]
SILENT_TURNS = [(0.2, 6.0, "spk0", 0.9), (2.5, 3.2, "spk1", 0.6), (7.0, 8.0, "spk1", 0.8), (9.0, 9.1, "spk1", 0.7)]


async def test_a_turn_without_words_is_a_diarized_segment_with_empty_text():
    from bench.router_eval import Reference, score

    client, data, out = await canned_diarized(SILENT_WORDS, SILENT_TURNS)
    got = [(s.speaker, s.start, s.end, s.text) for s in out.segments]
    assert got == [("A", 0.2, 6.0, "We ship on Monday."), ("B", 2.5, 3.2, ""), ("B", 7.0, 8.0, "")]
    assert out.text == "We ship on Monday."  # the whisper server's text; no word moved or added
    conf = [s.model_extra["confidence"] for s in out.segments]
    # B under A: B's turn confidence times B's share of the speech there (half); B alone: its own
    assert conf[1:] == [pytest.approx(0.6 * 0.5), pytest.approx(0.8)]
    # who spoke when is the diarizer's (DER 0 against its turns), the sliver aside
    ref = Reference(tuple(SpeakerTurn(a, b, s) for a, b, s, _ in SILENT_TURNS[:3]), uem=(0.0, 10.0))
    assert score([s.model_dump() for s in out.segments], ref)["der"] == pytest.approx(0.0, abs=1e-6)
    # the stream gives the same segments, each after its own delta (empty for the turns without words)
    stream = await client.audio.transcriptions.create(
        model=DIARIZE, file=data, response_format="diarized_json", stream=True
    )
    events = [ev async for ev in stream]
    segments = [e for e in events if e.type == "transcript.text.segment"]
    deltas = [e for e in events if e.type == "transcript.text.delta"]
    assert [(e.speaker, e.start, e.end, e.text) for e in segments] == got
    assert [d.segment_id for d in deltas] == [e.id for e in segments]
    assert "".join(d.delta for d in deltas) == events[-1].text == out.text
    # subtitles and verbose_json are the transcript's segments only: no empty cue or segment
    verbose = await client.audio.transcriptions.create(model=DIARIZE, file=data, response_format="verbose_json")
    assert [(s.model_extra["speaker"], s.text) for s in verbose.segments] == [("A", " We ship on Monday.")]
    srt = await client.audio.transcriptions.create(model=DIARIZE, file=data, response_format="srt")
    assert len(cue_times(srt)) == 1


# A says two sentences; between them B mumbles alone (3.0-4.0, no words), and B starts under A's
# second turn at the very moment A's turn starts (4.9), ending before A's first word there
ORDER_WORDS = [
    {"start": 0.4, "end": 2.0, "words": words_of((" Hello", 0.5, 0.9), (" there.", 1.0, 1.9))},
    {"start": 5.8, "end": 7.5, "words": words_of((" We", 5.8, 6.0), (" ship", 6.1, 6.6), (" today.", 6.7, 7.4))},
]
ORDER_TURNS = [(0.4, 2.1, "spk0", 0.9), (3.0, 4.0, "spk1", 0.8), (4.9, 7.6, "spk0", 0.9), (4.9, 5.5, "spk1", 0.6)]


async def test_the_stream_puts_turns_without_words_in_time_order():
    # the stream interleaves the transcript's segments and the turns without words by start, a tie
    # going to the transcript's segment, as the whole response orders them: B's turn at 3.0 comes
    # before A's sentence at 4.9 (not after all of the transcript's segments), and B's turn starting
    # with A's at 4.9 after it
    client, data, out = await canned_diarized(ORDER_WORDS, ORDER_TURNS)
    got = [(s.speaker, s.start, s.end, s.text) for s in out.segments]
    assert got == [
        ("A", 0.4, 2.1, "Hello there."),
        ("B", 3.0, 4.0, ""),
        ("A", 4.9, 7.6, "We ship today."),
        ("B", 4.9, 5.5, ""),
    ]
    stream = await client.audio.transcriptions.create(
        model=DIARIZE, file=data, response_format="diarized_json", stream=True
    )
    events = [ev async for ev in stream]
    segments = [e for e in events if e.type == "transcript.text.segment"]
    deltas = [e for e in events if e.type == "transcript.text.delta"]
    assert [(e.speaker, e.start, e.end, e.text) for e in segments] == got
    assert [e.id for e in segments] == [f"seg_{i}" for i in range(len(got))]
    assert [d.segment_id for d in deltas] == [e.id for e in segments]
    assert [d.delta for d in deltas] == ["Hello there.", "", " We ship today.", ""]
    assert "".join(d.delta for d in deltas) == events[-1].text == out.text


def test_untranscribed_turns_rules():
    a = Segment(0, 1.0, 2.0, " hi", words=(Word(" hi", 1.0, 2.0),), speaker="A")
    turns = [
        SpeakerTurn(0.5, 2.2, "A", 0.9),
        SpeakerTurn(2.3, 3.0, "A", 0.9),  # joined to A's stretch 0.1 s before: it holds "hi"
        SpeakerTurn(4.0, 5.0, "A", 0.8),  # A again, no word: a segment
        SpeakerTurn(1.5, 1.5 + MIN_UNTRANSCRIBED_S - 0.01, "B", 0.9),  # too short for a word
        SpeakerTurn(6.0, 6.0 + MIN_UNTRANSCRIBED_S, "B", 0.9),  # just long enough
        SpeakerTurn(8.0, 9.0, "C", None),
    ]
    out = untranscribed_turns([a], turns)
    assert [(s.speaker, s.start, s.end, s.text, s.words) for s in out] == [
        ("A", 4.0, 5.0, "", ()),
        ("B", 6.0, round(6.0 + MIN_UNTRANSCRIBED_S, 3), "", ()),
        ("C", 8.0, 9.0, "", ()),
    ]
    assert [s.confidence for s in out] == [0.8, 0.9, 1.0] and out[0].seek == 400
    # bounds (the audio, or a stream's chunk) clip them, and what is left must still be long enough
    out = untranscribed_turns([a], turns, start=4.5, end=8.5)
    assert [(s.speaker, s.start, s.end) for s in out] == [("A", 4.5, 5.0), ("B", 6.0, 6.2), ("C", 8.0, 8.5)]
    assert untranscribed_turns([a], turns, start=4.9, end=6.1) == []
    # a speaker's segment anywhere in the stretch (here touching only its end) holds it
    late = replace(a, start=4.9, end=5.4, words=(Word(" x", 4.9, 5.4),))
    assert [s.speaker for s in untranscribed_turns([a, late], turns)] == ["B", "C"]
    # another speaker's words do not count: B's turn under A's segment is still B's untranscribed turn
    over = [SpeakerTurn(0.5, 2.2, "A", 0.9), SpeakerTurn(1.2, 1.8, "B", 0.5)]
    ((spk, s0, s1),) = [(s.speaker, s.start, s.end) for s in untranscribed_turns([a], over)]
    assert (spk, s0, s1) == ("B", 1.2, 1.8)


# AMI trn00 through `make serve`: Whisper heard "Okay." at 2.8 s, the diarizer's first turn starts at
# 5.4 s (more than 2 s later), so the segment came back with "speaker": null
EARLY_WORDS = [
    {"start": 2.8, "end": 3.3, "words": words_of((" Okay.", 2.8, 3.3))},
    {"start": 5.5, "end": 7.0, "words": words_of((" We", 5.5, 5.8), (" ship.", 5.9, 6.9))},
]
EARLY_TURNS = [(5.4, 7.1, "spk0", 0.9), (7.5, 9.0, "spk1", 0.8)]


async def test_every_diarized_segment_has_a_speaker_however_far_its_nearest_turn():
    client, data, out = await canned_diarized(EARLY_WORDS, EARLY_TURNS)
    transcribed = [(s.speaker, s.text) for s in out.segments if s.text]
    assert transcribed == [("A", "Okay."), ("A", "We ship.")]  # the nearest turn's speaker, 2.1 s away
    assert all(isinstance(s.speaker, str) for s in out.segments)
    early = out.segments[0]
    assert early.model_extra["confidence"] == pytest.approx(0.9 / 2)  # half its nearest turn's
    stream = await client.audio.transcriptions.create(
        model=DIARIZE, file=data, response_format="diarized_json", stream=True
    )
    events = [ev async for ev in stream]
    assert [(e.speaker, e.text) for e in events if e.type == "transcript.text.segment" and e.text] == transcribed
    # subtitles keep the 2 s reach: no turn near the early segment, no speaker tag on its cue
    srt = await client.audio.transcriptions.create(model=DIARIZE, file=data, response_format="srt")
    assert "Okay." in srt and "[A] Okay." not in srt and "[A] We ship." in srt
