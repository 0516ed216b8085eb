"""The router's pipeline: chunk → fan out → link speakers → merge → render, each step a function.

1. **chunk** (``server.chunking``): silero-vad regions → chunks of at most 30 s, grouped into
   diarization windows.
2. **fan out** (``Router`` here): every chunk to the whisper server, every window to the sidecar,
   concurrently and bounded; the first chunk's detected language is pinned for the others.
3. **link** (``server.speakers``): window-local speakers → global speakers by clustering their
   fingerprints (cosine similarity); each link carries a margin confidence; names ``A, B, …`` or
   the known speakers'.
4. **merge** (``server.merge``): transcript segments × speaker turns by maximum overlap, split
   where the speaker changes.
5. **render**: ``server.formats`` for whole responses, the SSE events below for streams.

The sidecar's failures cost speakers (``warnings``), never the transcript. Nothing here knows
HTTP; ``router_app`` turns requests into ``Job`` and events into responses.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace

import numpy as np

from server.audio import SAMPLE_RATE, to_wav_bytes
from server.chunking import Chunk, SileroVad, VadOptions, Window, group_windows, plan_chunks
from server.clients import BackendError, Diarization, SidecarClient, WhisperClient
from server.merge import assign_speakers
from server.speakers import (
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
)
from server.transcript import Segment, SpeakerTurn, Transcript

log = logging.getLogger("chorus.router")



@dataclass(frozen=True)
class Job:
    """One transcription request as the pipeline sees it."""

    model: str
    task: str = "transcribe"
    language: str | None = None
    prompt: str | None = None
    temperature: float = 0.0
    diarize: bool = True
    vad: VadOptions = VadOptions()
    known: tuple[tuple[str, bytes], ...] = ()  # (name, reference audio as WAV bytes)
    words: bool = False  # the client asked for timestamp_granularities[]=word


@dataclass
class Plan:
    """How the audio was cut."""

    chunks: list[Chunk]
    windows: list[Window]
    method: str  # "silero-vad" | "fixed"
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
        window_s: float = 30.0,
        link_threshold: float | None = None,
        known_threshold: float | None = None,
    ) -> None:
        self.whisper = whisper
        self.sidecar = sidecar
        self.vad = vad
        self.max_chunk_s = max_chunk_s
        self.window_s = max(window_s, max_chunk_s)
        self.link_threshold = link_threshold
        self.known_threshold = known_threshold
        # audio is encoded for a backend only once a slot is free, so a 4-hour file does not hold
        # hundreds of WAV copies at once (the clients bound the requests themselves too)
        self._whisper_slots = asyncio.Semaphore(whisper.concurrency)
        self._sidecar_slots = asyncio.Semaphore(sidecar.concurrency)

    # -- chunk ------------------------------------------------------------------------------
    def plan(self, samples: np.ndarray, vad: VadOptions) -> Plan:
        """Cut ``samples`` into chunks and diarization windows (blocking: run it in a thread)."""
        regions, method = None, "fixed"
        if self.vad is not None:
            try:
                regions, method = self.vad.regions(samples, vad, self.max_chunk_s), "silero-vad"
            except Exception as exc:  # no torch / silero here: fixed windows still work
                log.warning("VAD failed (%s); falling back to fixed windows", exc)
        chunks = plan_chunks(samples, regions, self.max_chunk_s)
        return Plan(chunks, group_windows(chunks, self.window_s), method, samples.shape[0] / SAMPLE_RATE)

    # -- fan out ----------------------------------------------------------------------------
    def _launch_whisper(self, samples: np.ndarray, plan: Plan, job: Job) -> list[asyncio.Task]:
        """One task per chunk, in order; without a language the first chunk's detection pins it."""
        first_language: asyncio.Future = asyncio.get_running_loop().create_future()

        async def one(chunk: Chunk) -> Transcript:
            language = job.language
            if language is None and job.task == "transcribe" and chunk.index > 0:
                language = await asyncio.shield(first_language)
            try:
                async with self._whisper_slots:
                    wav = to_wav_bytes(samples[chunk.start: chunk.end])
                    t = await self.whisper.transcribe(wav, model=job.model, task=job.task, language=language,
                                                      prompt=job.prompt, temperature=job.temperature,
                                                      words=job.words or job.diarize)
            except Exception as exc:
                if chunk.index == 0 and not first_language.done():
                    first_language.set_exception(exc)
                raise
            except BaseException:
                if chunk.index == 0:
                    first_language.cancel()
                raise
            if chunk.index == 0 and not first_language.done():
                first_language.set_result(t.language)
            return shift_transcript(t, chunk)

        tasks = [asyncio.create_task(one(c)) for c in plan.chunks]
        # a failed first chunk fails its waiters; keep the future's exception from being "never retrieved"
        first_language.add_done_callback(lambda f: f.cancelled() or f.exception())
        return tasks

    def _launch_sidecar(self, samples: np.ndarray, plan: Plan) -> list[asyncio.Task]:
        async def one(w: Window) -> Diarization:
            async with self._sidecar_slots:
                d = await self.sidecar.diarize(to_wav_bytes(samples[w.start: w.end]))
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
        known = self.known_threshold if self.known_threshold is not None else default_threshold(embedder, KNOWN_THRESHOLDS)
        return link, known

    # -- the whole request ------------------------------------------------------------------
    async def transcribe(self, samples: np.ndarray, plan: Plan, job: Job) -> Transcript:
        """All chunks and windows → one speaker-attributed ``Transcript``.

        Raises:
            BackendError: from the whisper server (the sidecar's failures become warnings).
        """
        whisper_tasks = self._launch_whisper(samples, plan, job)
        sidecar_tasks = self._launch_sidecar(samples, plan) if job.diarize and plan.windows else []
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
        language = job.language or (parts[0].language if parts else "en")
        warnings: list[str] = []
        if sidecar_tasks:
            results = await asyncio.gather(*sidecar_tasks, return_exceptions=True)
            known, known_warnings = await known_task
            warnings += known_warnings
            segments, w = self._attribute(segments, results, known)
            warnings += w
        return assemble(segments, language, plan.duration, job.task, warnings)

    def _attribute(self, segments: list[Segment], results: list, known: list[KnownSpeaker]
                   ) -> tuple[list[Segment], list[str]]:
        """Offline link + name + merge; failures of the sidecar become warnings."""
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
            links = link_speakers(locals_, link_thr)
        centroids = cluster_centroids(locals_, links)
        turns = global_turns(ok, links)
        order = list(dict.fromkeys(t.speaker for t in sorted(turns, key=lambda t: t.start)))
        names = name_speakers([int(c) for c in order], centroids, known, known_thr)
        turns = [replace(t, speaker=names[int(t.speaker)]) for t in turns]
        return assign_speakers(segments, turns), warnings

    async def stream(self, samples: np.ndarray, plan: Plan, job: Job, *, segments_events: bool) -> AsyncIterator[dict]:
        """Events as chunks complete, in order: ``transcript.text.delta`` per segment (with its
        ``segment_id``), ``transcript.text.segment`` when ``segments_events`` (diarized), then
        ``transcript.text.done``. Speakers are linked online (``StreamSpeakers``).

        Raises:
            BackendError: from the whisper server, before or between events.
        """
        whisper_tasks = self._launch_whisper(samples, plan, job)
        sidecar_tasks = self._launch_sidecar(samples, plan) if job.diarize and plan.windows else []
        known_task = asyncio.create_task(self._known(job)) if job.diarize else None
        tasks = [*whisper_tasks, *sidecar_tasks, *([known_task] if known_task else [])]
        window_of = {c: w.index for w in plan.windows for c in w.chunks}
        speakers: StreamSpeakers | None = None
        window_turns: dict[int, list[SpeakerTurn] | None] = {}
        texts: list[str] = []
        warnings: list[str] = []
        n_seg = 0
        try:
            for ci, task in enumerate(whisper_tasks):
                segs = list((await task).segments)
                if sidecar_tasks:
                    w = window_of[ci]
                    if w not in window_turns:
                        try:
                            d = await sidecar_tasks[w]
                        except Exception as exc:  # the sidecar's failure costs speakers, not text
                            reason = exc.message if isinstance(exc, BackendError) else f"{type(exc).__name__}: {exc}"
                            warnings.append(f"diarization failed for part {w} (sidecar: {reason}); "
                                            "speakers are missing there")
                            window_turns[w] = None
                        else:
                            if speakers is None:
                                known, known_warnings = await known_task
                                warnings += known_warnings
                                speakers = StreamSpeakers(*self._thresholds(d.embedder), known)
                            warnings += [f"sidecar: {x}" for x in d.warnings]
                            window_turns[w] = speakers.add(w, d)
                    if window_turns[w] is not None:
                        segs = assign_speakers(segs, window_turns[w])
                for s in segs:
                    text = s.text.strip()
                    if not text:
                        continue
                    seg_id = f"seg_{n_seg}"
                    yield delta_event((" " if texts else "") + text, seg_id if segments_events else None)
                    texts.append(text)
                    if segments_events:
                        yield segment_event(replace(s, id=n_seg))
                    n_seg += 1
            yield done_event(" ".join(texts), warnings)
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


def assemble(segments: Sequence[Segment], language: str, duration: float, task: str, warnings: Sequence[str]) -> Transcript:
    segs = tuple(replace(s, id=i) for i, s in enumerate(segments))
    text = " ".join(s.text.strip() for s in segs if s.text.strip())
    return Transcript(text=text, segments=segs, language=language, duration=duration, task=task,
                      warnings=tuple(dict.fromkeys(warnings)))


# ---------------------------------------------------------------------------------------------
# SSE events (OpenAI's transcription stream)


def delta_event(delta: str, segment_id: str | None = None) -> dict:
    ev = {"type": "transcript.text.delta", "delta": delta}
    if segment_id is not None:
        ev["segment_id"] = segment_id
    return ev


def segment_event(s: Segment) -> dict:
    ev = {"type": "transcript.text.segment", "id": f"seg_{s.id}", "start": round(s.start, 3),
          "end": round(s.end, 3), "speaker": s.speaker, "text": s.text.strip()}
    if s.confidence is not None:
        ev["confidence"] = s.confidence
    return ev


def done_event(text: str, warnings: Sequence[str] = ()) -> dict:
    ev: dict = {"type": "transcript.text.done", "text": text}
    if warnings:
        ev["warnings"] = list(dict.fromkeys(warnings))
    return ev


def encode_sse(event: dict) -> bytes:
    """One server-sent event: ``data: <json>`` and a blank line."""
    return f"data: {json.dumps(event, ensure_ascii=False)}\n\n".encode()
