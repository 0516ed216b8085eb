"""The router's pipeline: chunk → fan out → link speakers → merge → render, each step a function.

1. **chunk** (``server.router.chunking``): audio up to one chunk long (30 s) goes whole, so the text is
   the whisper server's own for that file; longer audio is cut at silero-vad regions into chunks of
   at most 30 s. Chunks are grouped into diarization windows as long as the sidecar takes in one
   call (its ``max_window_s``), so a file that fits is diarized whole.
2. **fan out** (``Router`` here): every chunk to the whisper server, every window to the sidecar,
   concurrently and bounded; the first chunk's detected language is pinned for the others.
3. **link** (``server.router.speakers``): window-local speakers → global speakers by clustering their
   fingerprints (cosine similarity); each link carries a margin confidence; names ``A, B, …`` or
   the known speakers'. One window needs no linking.
4. **merge** (``server.router.merge``): transcript segments × speaker turns, word by word, split where
   the speaker changes (overlapping turns give overlapping segments); for ``diarized_json``
   (``Job.turn_spans``) a segment is cut where its speaker's turns pause, and each segment then
   covers its speaker's turn around its words, reaching at
   most ``TURN_REACH_S`` outside that speaker's turns (``cover_turns``); ``fit_times`` keeps every
   segment ordered, inside the audio and spanning its words (with turn spans: keeping the span
   ``cover_turns`` gave it). The text is the whisper server's, chunk texts joined; the speaker
   segments never rewrite it.
5. **render**: ``server.core.formats`` for whole responses, the SSE events below for streams.

The sidecar's failures cost speakers (``warnings``), never the transcript. Nothing here knows
HTTP; ``router_app`` turns requests into ``Job`` and events into responses.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace

import numpy as np

from server.core.audio import SAMPLE_RATE, to_wav_bytes
from server.core.formats import delta_event, done_event, segment_event, usage
from server.core.transcript import Segment, SpeakerTurn, Transcript
from server.core.vad import SileroVad, VadOptions
from server.router.chunking import Chunk, Window, group_windows, plan_chunks
from server.router.clients import BackendError, Diarization, SidecarClient, WhisperClient
from server.router.merge import (
    DIARIZED_NEAREST_S,
    NEAREST_S,
    assign_speakers,
    cover_turns,
    fit_times,
    untranscribed_turns,
)
from server.router.speakers import (
    KNOWN_THRESHOLDS,
    KnownSpeaker,
    Link,
    StreamSpeakers,
    cluster_centroids,
    default_threshold,
    global_turns,
    link_speakers,
    local_speakers,
    name_speakers,
    speaker_letter,
)

log = logging.getLogger("chorus.router")

DEFAULT_WINDOW_S = 30.0  # diarization window when neither the sidecar nor the settings give one
# audio up to a chunk and this much more is sent whole: a "30 s" clip a few samples over (AMI's
# excerpts are 480001 samples) is not cut by the VAD; the whisper server windows it as it would alone
WHOLE_SLACK_S = 1.0
WINDOW_RETRY_S = 30.0  # after a failed GET /v1/models, ask the sidecar again after this long
# languages written without spaces between words (openai/whisper's tokenizer splits them by
# character): chunk texts are joined without a space
UNSPACED_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "my", "yue"})


def one_speaker_without_turns(
    segments: list[Segment], turns: Sequence[SpeakerTurn], warnings: list[str]
) -> list[Segment]:
    """``diarized_json`` segments when the diarizer found no speech at all (no ``turns``) although
    Whisper wrote text (a quiet voice, or Whisper's words on silence): one speaker, ``A`` (OpenAI's
    ``TranscriptionDiarizedSegment.speaker`` is a string), and a warning saying so. With turns, or
    segments that already have a speaker, ``segments`` unchanged."""
    if turns or not any(s.speaker is None for s in segments):
        return segments
    note = "the diarizer found no speech where Whisper wrote text: those segments are speaker A"
    if note not in warnings:
        warnings.append(note)
    return [s if s.speaker is not None else replace(s, speaker=speaker_letter(0)) for s in segments]


@dataclass(frozen=True)
class Job:
    """One transcription request as the pipeline sees it.

    ``diarize``: speakers are wanted (the request named a diarize model and a format that carries
    speakers). ``timestamps=False``: the answer carries no times (json/text without speakers), so
    chunks are decoded text-only by the whisper server. ``turn_spans``: segments cover their
    speaker's turn around their words (``diarized_json``, whose segments are speaker turns), not
    only their words (verbose_json, srt, vtt: subtitle and word timing).
    """

    model: str
    task: str = "transcribe"
    language: str | None = None
    prompt: str | None = None
    temperature: float = 0.0
    diarize: bool = True
    vad: VadOptions = VadOptions()
    vad_requested: bool = False  # the client set chunking_strategy (VAD decides what is speech)
    known: tuple[tuple[str, bytes], ...] = ()  # (name, reference audio as WAV bytes)
    words: bool = False  # the client asked for timestamp_granularities[]=word
    timestamps: bool = True
    turn_spans: bool = False
    num_speakers: int | None = None  # the client's bounds on the speaker count (pyannote's names)
    min_speakers: int | None = None
    max_speakers: int | None = None

    @property
    def speaker_cap(self) -> int | None:
        """The most speakers the client allows (``num_speakers`` or ``max_speakers``; None: any)."""
        return self.num_speakers or self.max_speakers

    def window_bounds(self, windows: int) -> dict[str, int]:
        """The bounds each diarization window gets: all of them when the file is one window;
        with several, only ``speaker_cap``, since one window may hold fewer people than the file."""
        if windows == 1:
            bounds = {"num_speakers": self.num_speakers, "min_speakers": self.min_speakers}
            bounds["max_speakers"] = self.max_speakers
        else:
            bounds = {"max_speakers": self.speaker_cap}
        return {k: v for k, v in bounds.items() if v}


@dataclass
class Plan:
    """How the audio was cut."""

    chunks: list[Chunk]
    windows: list[Window]
    method: str  # "whole" (one chunk) | "silero-vad" | "fixed"
    duration: float


class Router:
    """The pipeline bound to its backends. One per app; safe for concurrent requests."""

    def __init__(
        self,
        whisper: WhisperClient,
        sidecar: SidecarClient,
        *,
        vad: SileroVad | None = None,
        max_chunk_s: float = 30.0,
        window_s: float | None = None,
        link_threshold: float | None = None,
        known_threshold: float | None = None,
        models_timeout_s: float = 5.0,
    ) -> None:
        """
        Args:
            whisper, sidecar: the backends' clients.
            vad: silero-vad for cutting audio longer than a chunk; None: cuts at quiet frames.
            max_chunk_s: the longest chunk sent to the whisper server (seconds).
            window_s: the longest diarization window (seconds): a cap on the sidecar's own
                ``max_window_s``; None: the sidecar's, or ``DEFAULT_WINDOW_S`` when it reports none.
            link_threshold, known_threshold: cosine thresholds; None: by embedder.
            models_timeout_s: deadline of the sidecar's ``GET /v1/models``.
        """
        self.whisper = whisper
        self.sidecar = sidecar
        self.vad = vad
        self.max_chunk_s = max_chunk_s
        self.window_s = window_s
        self.models_timeout_s = models_timeout_s
        self._sidecar_window: tuple[float | None] | None = None  # (max_window_s or None,) once answered
        self._window_retry_at = 0.0
        self._window_lock = asyncio.Lock()
        self.link_threshold = link_threshold
        self.known_threshold = known_threshold
        # audio is encoded for a backend only once a slot is free, so a 4-hour file does not hold
        # hundreds of WAV copies at once (the clients bound the requests themselves too)
        self._whisper_slots = asyncio.Semaphore(whisper.concurrency)
        self._sidecar_slots = asyncio.Semaphore(sidecar.concurrency)

    # -- chunk ------------------------------------------------------------------------------
    async def diarization_window_s(self) -> float:
        """The diarization window (seconds): the sidecar's ``max_window_s`` (asked once, then
        cached), capped by ``window_s``; ``window_s`` or ``DEFAULT_WINDOW_S`` when the sidecar
        reports none. An unreachable sidecar costs at most ``models_timeout_s`` and is asked again
        after ``WINDOW_RETRY_S``; meanwhile the fallback is used."""
        fallback = self.window_s if self.window_s is not None else DEFAULT_WINDOW_S
        if self._sidecar_window is None and time.monotonic() >= self._window_retry_at:
            async with self._window_lock:
                if self._sidecar_window is None and time.monotonic() >= self._window_retry_at:
                    try:
                        self._sidecar_window = (
                            await asyncio.wait_for(
                                self.sidecar.max_window_s(timeout_s=self.models_timeout_s), self.models_timeout_s
                            ),
                        )
                    except (TimeoutError, BackendError) as exc:
                        log.warning(
                            "the sidecar's max_window_s is unknown (%s); diarization windows of %g s",
                            str(exc) or type(exc).__name__,
                            fallback,
                        )
                        self._window_retry_at = time.monotonic() + WINDOW_RETRY_S
        reported = self._sidecar_window[0] if self._sidecar_window is not None else None
        if reported is None:
            return fallback
        return min(reported, self.window_s) if self.window_s is not None else reported

    def forget_sidecar(self) -> None:
        """Ask the sidecar for its ``max_window_s`` again on the next request (it restarted)."""
        self._sidecar_window = None
        self._window_retry_at = 0.0

    def plan(
        self, samples: np.ndarray, vad: VadOptions, window_s: float = DEFAULT_WINDOW_S, *, vad_requested: bool = False
    ) -> Plan:
        """Cut ``samples`` into chunks and diarization windows (blocking: run it in a thread).

        Audio no longer than ``max_chunk_s`` + ``WHOLE_SLACK_S`` is one chunk, whole: the whisper
        server then sees exactly the file it would be sent directly, and its text is the router's.
        When the client asked for VAD chunking (``vad_requested``: OpenAI's ``chunking_strategy``
        set) and silero-vad hears no speech at all in it, it has no chunk (an empty transcript, as
        longer silent audio gets, instead of Whisper's words on silence, e.g. "you"). Longer audio
        is cut at silero-vad regions (or at quiet frames without a VAD). Windows group consecutive
        chunks spanning at most ``window_s`` seconds (at least one chunk each); the first starts at
        the file's start and the last ends at its end where they stay within ``window_s``
        (``group_windows``).
        """
        n = int(samples.shape[0])
        duration = n / SAMPLE_RATE
        if n <= (self.max_chunk_s + WHOLE_SLACK_S) * SAMPLE_RATE:
            if vad_requested and n and self.vad is not None:
                try:
                    if not self.vad.regions(samples, vad, self.max_chunk_s):
                        return Plan([], [], "silero-vad", duration)
                except Exception as exc:  # no torch / silero here: the file is sent whole
                    log.warning("VAD failed (%s); the file is sent whole", exc)
            chunks = [Chunk(0, 0, n)] if n else []
            return Plan(chunks, group_windows(chunks, window_s, n), "whole", duration)
        regions, method = None, "fixed"
        if self.vad is not None:
            try:
                regions, method = self.vad.regions(samples, vad, self.max_chunk_s), "silero-vad"
            except Exception as exc:  # no torch / silero here: fixed windows still work
                log.warning("VAD failed (%s); falling back to fixed windows", exc)
        chunks = plan_chunks(samples, regions, self.max_chunk_s)
        return Plan(chunks, group_windows(chunks, window_s, n), method, duration)

    # -- fan out ----------------------------------------------------------------------------
    def _launch_whisper(self, samples: np.ndarray, plan: Plan, job: Job) -> list[asyncio.Task]:
        """One task per chunk, in order; without a language the first chunk's detection pins it."""
        first_language: asyncio.Future = asyncio.get_running_loop().create_future()

        # text-only chunks report no language: the first chunk of several, when the language is to
        # be detected, is decoded with timestamps to learn it
        learn = job.language is None and job.task == "transcribe" and len(plan.chunks) > 1

        async def one(chunk: Chunk) -> Transcript:
            language = job.language
            if language is None and job.task == "transcribe" and chunk.index > 0:
                language = await asyncio.shield(first_language)
            timestamps = job.timestamps or (learn and chunk.index == 0)
            try:
                async with self._whisper_slots:
                    wav = to_wav_bytes(samples[chunk.start : chunk.end])
                    t = await self.whisper.transcribe(
                        wav,
                        model=job.model,
                        task=job.task,
                        language=language,
                        prompt=job.prompt,
                        temperature=job.temperature,
                        words=job.words or job.diarize,
                        timestamps=timestamps,
                    )
            except Exception as exc:
                if chunk.index == 0 and not first_language.done():
                    first_language.set_exception(exc)
                raise
            except BaseException:
                if chunk.index == 0:
                    first_language.cancel()
                raise
            if chunk.index == 0 and not first_language.done():
                first_language.set_result(t.language or None)
            if not job.timestamps:
                t = replace(t, segments=())
            return shift_transcript(t, chunk)

        tasks = [asyncio.create_task(one(c)) for c in plan.chunks]
        # a failed first chunk fails its waiters; keep the future's exception from being "never retrieved"
        first_language.add_done_callback(lambda f: f.cancelled() or f.exception())
        return tasks

    def _launch_sidecar(self, samples: np.ndarray, plan: Plan, job: Job) -> list[asyncio.Task]:
        bounds = job.window_bounds(len(plan.windows))

        async def one(w: Window) -> Diarization:
            async with self._sidecar_slots:
                d = await self.sidecar.diarize(to_wav_bytes(samples[w.start : w.end]), **bounds)
            return shift_diarization(d, w.offset)

        return [asyncio.create_task(one(w)) for w in plan.windows]

    async def _known(self, job: Job) -> tuple[list[KnownSpeaker], list[str]]:
        if not job.known:
            return [], []
        try:
            prints = await asyncio.gather(*(self.sidecar.embed(wav) for _, wav in job.known))
        except BackendError as exc:
            return [], [f"known speaker references were not used: {exc}"]
        return [KnownSpeaker(name, fp) for (name, _), (fp, _) in zip(job.known, prints)], []

    def _thresholds(self, embedder: str) -> tuple[float, float]:
        link = self.link_threshold if self.link_threshold is not None else default_threshold(embedder)
        known = (
            self.known_threshold if self.known_threshold is not None else default_threshold(embedder, KNOWN_THRESHOLDS)
        )
        return link, known

    # -- the whole request ------------------------------------------------------------------
    async def transcribe(self, samples: np.ndarray, plan: Plan, job: Job) -> Transcript:
        """All chunks and windows → one speaker-attributed ``Transcript``.

        Raises:
            BackendError: from the whisper server (the sidecar's failures become warnings).
        """
        whisper_tasks = self._launch_whisper(samples, plan, job)
        sidecar_tasks = self._launch_sidecar(samples, plan, job) if job.diarize and plan.windows else []
        known_task = asyncio.create_task(self._known(job)) if job.diarize else None
        try:
            parts = await asyncio.gather(*whisper_tasks)
        except BaseException:
            for t in [*whisper_tasks, *sidecar_tasks]:
                t.cancel()
            if known_task:
                known_task.cancel()
            await asyncio.gather(*whisper_tasks, *sidecar_tasks, return_exceptions=True)
            raise
        segments = [s for p in parts for s in p.segments]
        language = job.language or (parts[0].language if parts else "") or "en"
        warnings: list[str] = []
        if sidecar_tasks:
            results = await asyncio.gather(*sidecar_tasks, return_exceptions=True)
            known, known_warnings = await known_task
            warnings += known_warnings
            segments, w = self._attribute(
                segments,
                results,
                known,
                turn_spans=job.turn_spans,
                duration=plan.duration,
                max_speakers=job.speaker_cap,
            )
            warnings += w
        text = join_texts([p.text for p in parts], language)
        return assemble(segments, text, language, plan.duration, job.task, warnings, spans_words=not job.turn_spans)

    def _attribute(
        self,
        segments: list[Segment],
        results: list,
        known: list[KnownSpeaker],
        *,
        turn_spans: bool = False,
        duration: float = float("inf"),
        max_speakers: int | None = None,
    ) -> tuple[list[Segment], list[str]]:
        """Offline link + name + merge (and with ``turn_spans``, ``cover_turns`` inside
        ``[0, duration]``; linking stops at no more than ``max_speakers``); failures of the sidecar
        become warnings."""
        warnings = []
        failed = [(i, r) for i, r in enumerate(results) if isinstance(r, BaseException)]
        for i, r in failed:
            if not isinstance(r, BackendError):
                log.error("diarization of window %d failed", i, exc_info=r)
        if failed:
            first = failed[0][1]
            what = "all of the audio" if len(failed) == len(results) else f"{len(failed)} of {len(results)} parts"
            reason = first.message if isinstance(first, BackendError) else f"{type(first).__name__}: {first}"
            warnings.append(f"diarization failed for {what} (sidecar: {reason}); speakers are missing there")
        ok = [(i, r) for i, r in enumerate(results) if not isinstance(r, BaseException)]
        if not ok:
            return segments, warnings
        for _, d in ok:
            warnings += [f"sidecar: {w}" for w in d.warnings]
        embedder = ok[0][1].embedder
        link_thr, known_thr = self._thresholds(embedder)
        locals_ = local_speakers(ok)
        if len(ok) > 1 and not any(s.fingerprint is not None for s in locals_):
            warnings.append("the sidecar returned no speaker fingerprints: labels are not linked across chunks")
            links = {s.key: Link(hash(s.label) % 10**6, 0.5) for s in locals_}
        else:
            links = link_speakers(locals_, link_thr, max_clusters=max_speakers)
        centroids = cluster_centroids(locals_, links)
        turns = global_turns(ok, links)
        order = list(dict.fromkeys(t.speaker for t in sorted(turns, key=lambda t: t.start)))
        names = name_speakers([int(c) for c in order], centroids, known, known_thr)
        turns = [replace(t, speaker=names[int(t.speaker)]) for t in turns]
        segments = assign_speakers(segments, turns, nearest_s=DIARIZED_NEAREST_S if turn_spans else NEAREST_S)
        if turn_spans:
            segments = one_speaker_without_turns(segments, turns, warnings)
            segments = cover_turns(segments, turns, end=duration)
            segments += untranscribed_turns(segments, turns, end=duration)
        return segments, warnings

    async def stream(self, samples: np.ndarray, plan: Plan, job: Job, *, segments_events: bool) -> AsyncIterator[dict]:
        """Events as chunks complete, in order: ``transcript.text.delta`` per segment (with its
        ``segment_id`` and a ``transcript.text.segment`` when ``segments_events``, diarized),
        then ``transcript.text.done`` with the whole text (the same as without streaming) and
        ``usage`` (``{"type": "duration", "seconds"}``). Speakers are linked online
        (``StreamSpeakers``).

        Raises:
            BackendError: from the whisper server, before or between events.
        """
        whisper_tasks = self._launch_whisper(samples, plan, job)
        sidecar_tasks = self._launch_sidecar(samples, plan, job) if job.diarize and plan.windows else []
        known_task = asyncio.create_task(self._known(job)) if job.diarize else None
        tasks = [*whisper_tasks, *sidecar_tasks, *([known_task] if known_task else [])]
        window_of = {c: w.index for w in plan.windows for c in w.chunks}
        speakers: StreamSpeakers | None = None
        window_turns: dict[int, list[SpeakerTurn] | None] = {}
        texts: list[str] = []
        warnings: list[str] = []
        language = job.language
        n_seg = 0
        try:
            for ci, task in enumerate(whisper_tasks):
                part = await task
                language = language or part.language or None
                segs = list(part.segments)
                if sidecar_tasks:
                    w = window_of[ci]
                    if w not in window_turns:
                        try:
                            d = await sidecar_tasks[w]
                        except Exception as exc:  # the sidecar's failure costs speakers, not text
                            reason = exc.message if isinstance(exc, BackendError) else f"{type(exc).__name__}: {exc}"
                            warnings.append(
                                f"diarization failed for part {w} (sidecar: {reason}); speakers are missing there"
                            )
                            window_turns[w] = None
                        else:
                            if speakers is None:
                                known, known_warnings = await known_task
                                warnings += known_warnings
                                speakers = StreamSpeakers(*self._thresholds(d.embedder), known, job.speaker_cap)
                            warnings += [f"sidecar: {x}" for x in d.warnings]
                            window_turns[w] = speakers.add(w, d)
                    if window_turns[w] is not None:
                        segs = assign_speakers(
                            segs, window_turns[w], nearest_s=DIARIZED_NEAREST_S if job.turn_spans else NEAREST_S
                        )
                        if job.turn_spans:
                            segs = one_speaker_without_turns(segs, window_turns[w], warnings)
                            # inside this chunk: the next chunk's segments are not known yet
                            chunk = plan.chunks[ci]
                            segs = cover_turns(
                                segs, window_turns[w], start=chunk.offset, end=chunk.offset + chunk.duration
                            )
                segs = [s for s in fit_times(segs, plan.duration, spans_words=not job.turn_spans) if s.text.strip()]
                silent: list[Segment] = []  # speaker turns without a transcribed word (diarized_json)
                if job.turn_spans and sidecar_tasks and window_turns[window_of[ci]] is not None:
                    chunk = plan.chunks[ci]
                    silent = untranscribed_turns(
                        segs, window_turns[window_of[ci]], start=chunk.offset, end=chunk.offset + chunk.duration
                    )
                if not part.text.strip() and not segs and not silent:
                    continue
                sep = joiner(language) if texts else ""
                pieces = text_pieces([s.text for s in segs] if segs else [part.text], sep)
                if not (segments_events and segs):  # plain deltas: no segment events, or no segments
                    for piece in pieces:
                        if piece:
                            yield delta_event(piece)
                if segments_events:
                    # the transcript's segments in their order (their deltas spell the text), each
                    # turn without words before the first of them starting after it (heapq.merge
                    # keeps each input's order; a tie goes to the transcript's segment), with an
                    # empty delta: every segment event still follows its own delta
                    events = heapq.merge(zip(segs, pieces), ((t, "") for t in silent), key=lambda e: e[0].start)
                    for seg, piece in events:
                        yield delta_event(piece, f"seg_{n_seg}")
                        yield segment_event(replace(seg, id=n_seg))
                        n_seg += 1
                texts.append(part.text)
            yield done_event(join_texts(texts, language or "en"), warnings, usage(plan.duration))
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def shift_transcript(t: Transcript, chunk: Chunk) -> Transcript:
    """Chunk-relative segment times → absolute, clipped to the chunk."""
    segs = []
    for s in t.segments:
        s = s.shifted(chunk.offset)
        end = min(s.end, chunk.offset + chunk.duration)
        segs.append(replace(s, start=round(min(s.start, end), 3), end=round(end, 3)))
    return replace(t, segments=tuple(segs))


def shift_diarization(d: Diarization, offset: float) -> Diarization:
    return replace(d, turns=tuple(replace(t, start=t.start + offset, end=t.end + offset) for t in d.turns))


def joiner(language: str | None) -> str:
    """What goes between two chunks' texts: a space, or nothing for unspaced scripts."""
    return "" if language in UNSPACED_LANGUAGES else " "


def join_texts(texts: Sequence[str], language: str | None) -> str:
    """Chunk texts (each the whisper server's ``text``) → the whole transcript's text; one chunk's
    text is returned as it is."""
    return joiner(language).join(t.strip() for t in texts if t.strip())


def text_pieces(texts: Sequence[str], sep: str) -> list[str]:
    """Consecutive segment texts → stream deltas that concatenate to ``sep`` + their joined,
    stripped text (the chunk's text as the whisper server gives it): one piece per segment, the
    leading and trailing whitespace of the whole cut away, ``sep`` in front of the first."""
    full = "".join(texts)
    lo, hi = len(full) - len(full.lstrip()), len(full.rstrip())
    out, pos, first = [], 0, True
    for t in texts:
        a, b = max(pos, lo), min(pos + len(t), hi)
        piece = full[a:b] if b > a else ""
        if piece and first:
            piece, first = sep + piece, False
        out.append(piece)
        pos += len(t)
    return out


def assemble(
    segments: Sequence[Segment],
    text: str,
    language: str,
    duration: float,
    task: str,
    warnings: Sequence[str],
    *,
    spans_words: bool = True,
) -> Transcript:
    """The response's ``Transcript``: segments with times fitted (``fit_times``, ``spans_words``
    passed on) and renumbered, in order of their start."""
    segs = tuple(
        replace(s, id=i)
        for i, s in enumerate(sorted(fit_times(segments, duration, spans_words=spans_words), key=lambda s: s.start))
    )
    return Transcript(
        text=text,
        segments=segs,
        language=language,
        duration=duration,
        task=task,
        warnings=tuple(dict.fromkeys(warnings)),
    )
