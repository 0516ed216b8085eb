"""What every diarization backend shares: options, the result, speaker fingerprints, RTTM.

A backend (``pyannote_diarizer.PyannoteDiarizer``, ``sortformer.SortformerDiarizer``) turns 16 kHz
float32 samples into a ``DiarizationResult``: speaker turns with a confidence in [0, 1], one
L2-normalised fingerprint per speaker, and optionally per-frame speaker probabilities. Times are
seconds from the start of the audio. Nothing here imports torch; interval algebra is pyannote.core's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
from pyannote.core import Segment, Timeline

from server.core.audio import SAMPLE_RATE
from server.core.transcript import SpeakerTurn, speaker_count_error

MIN_FINGERPRINT_S = 0.5  # seconds of a speaker's own (non-overlapped) speech needed for a fingerprint


class OptionError(ValueError):
    """An option is out of range; ``param`` names the request field (mapped to a 400 at the edge)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class DiarizationOptions:
    """Speaker-count hints. ``num_speakers`` fixes the count; ``min/max_speakers`` bound it."""

    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None

    def validate(self, limit: int | None = None) -> DiarizationOptions:
        """Check the hints against each other and a backend's speaker ``limit`` (None: no limit).

        Raises:
            OptionError: a count below 1, ``min > max``, ``num`` outside ``[min, max]``, or a
                required count above ``limit``.
        """
        for name in ("num_speakers", "min_speakers", "max_speakers"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise OptionError(f"'{name}' must be at least 1, got {value}.", name)
        lo, hi, n = self.min_speakers, self.max_speakers, self.num_speakers
        if (bad := speaker_count_error(n, lo, hi)) is not None:
            raise OptionError(*bad)
        if limit is not None:
            for name, value in (("num_speakers", n), ("min_speakers", lo)):
                if value is not None and value > limit:
                    raise OptionError(
                        f"'{name}' is {value}, but this diarization model finds at most {limit} speakers.", name
                    )
        return self

    def bounds(self, n_max: int) -> tuple[int, int]:
        """The allowed speaker-count range ``(lo, hi)`` clipped to ``[1, n_max]``."""
        if self.num_speakers is not None:
            k = max(1, min(self.num_speakers, n_max))
            return k, k
        lo = max(1, min(self.min_speakers or 1, n_max))
        hi = max(lo, min(self.max_speakers or n_max, n_max))
        return lo, hi


@dataclass(frozen=True, eq=False)
class FrameProbabilities:
    """Per-frame speaker activity: ``values`` float32 ``(n_frames, n_speakers)`` in [0, 1].

    Frame ``i`` covers ``[i / frame_rate, (i + 1) / frame_rate)`` seconds; column ``j`` belongs to
    ``speakers[j]``. Sortformer's frames are its sigmoid outputs (about 12.5 per second); the
    pyannote backend's are segmentation-3.0's speaker probabilities averaged over the overlapping
    10 s windows (one frame every 16.875 ms, about 59.3 per second).
    """

    frame_rate: float
    speakers: tuple[str, ...]
    values: np.ndarray


@dataclass(frozen=True)
class DiarizationResult:
    """Who spoke when in one audio file.

    Attributes:
        segments: speaker turns sorted by ``(start, end)``; turns of different speakers may overlap.
        speakers: labels in order of first appearance (``speaker_0``, ``speaker_1``, …).
        duration: audio length in seconds.
        models: what produced the result, e.g. ``{"backend": "pyannote", "diarizer": …, "embedder": …}``.
        fingerprints: speaker → L2-normalised embedding (192 floats for CAM++ and TitaNet).
        fingerprint_notes: speaker → why it has no fingerprint (too little own speech).
        probabilities: per-frame activity when requested, else None.
        warnings: notes about options that could not be honoured.
    """

    segments: tuple[SpeakerTurn, ...]
    speakers: tuple[str, ...]
    duration: float
    models: Mapping[str, str]
    fingerprints: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    fingerprint_notes: Mapping[str, str] = field(default_factory=dict)
    probabilities: FrameProbabilities | None = None
    warnings: tuple[str, ...] = ()


@runtime_checkable
class SpeakerEmbedder(Protocol):
    """Turns speech into one speaker fingerprint."""

    name: str  # the weights, e.g. "nvidia/speakerverification_en_titanet_large"
    dim: int  # embedding size

    def embed(self, samples: np.ndarray) -> np.ndarray:
        """float32 ``(n,)`` 16 kHz speech → float32 ``(dim,)`` with unit L2 norm."""
        ...


@runtime_checkable
class Diarizer(Protocol):
    """A diarization backend; ``sidecar_app`` only talks to this."""

    backend: str  # "pyannote" | "sortformer"
    embedder: SpeakerEmbedder
    max_speakers: int | None  # hard limit of the model, None when unbounded

    def describe(self) -> dict[str, str]:
        """Which backend and weights are loaded (shown by ``GET /v1/models``)."""
        ...

    def diarize(
        self,
        samples: np.ndarray,
        options: DiarizationOptions = DiarizationOptions(),
        *,
        include_probabilities: bool = False,
    ) -> DiarizationResult:
        """float32 ``(n,)`` 16 kHz samples → ``DiarizationResult`` (options already validated)."""
        ...


# ---------------------------------------------------------------------------------------------
# Interval helpers (seconds)


def _timeline(spans: Sequence[tuple[float, float]]) -> Timeline:
    return Timeline([Segment(start, end) for start, end in spans])


def merge_intervals(spans: Sequence[tuple[float, float]], gap: float = 0.0) -> list[tuple[float, float]]:
    """Union of ``(start, end)`` spans in seconds, sorted (pyannote.core ``Timeline.support``): spans that
    overlap, touch or lie less than ``gap`` seconds apart are joined; empty spans are dropped."""
    return [(s.start, s.end) for s in _timeline(spans).support(collar=gap)]


def subtract_intervals(
    spans: Sequence[tuple[float, float]], holes: Sequence[tuple[float, float]]
) -> list[tuple[float, float]]:
    """``spans`` minus the union of ``holes`` (both lists of ``(start, end)`` seconds), as sorted disjoint
    spans (pyannote.core ``Timeline.extrude``)."""
    return [(s.start, s.end) for s in _timeline(spans).support().extrude(_timeline(holes))]


def sort_turns(turns: Sequence[SpeakerTurn]) -> tuple[SpeakerTurn, ...]:
    """Turns in time order (start, then end, then speaker)."""
    return tuple(sorted(turns, key=lambda t: (t.start, t.end, t.speaker)))


def relabel_by_first_appearance(turns: Sequence[SpeakerTurn]) -> tuple[tuple[SpeakerTurn, ...], dict[str, str]]:
    """Rename speakers ``speaker_0, speaker_1, …`` in order of their first turn.

    Returns the renamed, sorted turns and the mapping old → new label.
    """
    mapping: dict[str, str] = {}
    for t in sort_turns(turns):
        mapping.setdefault(t.speaker, f"speaker_{len(mapping)}")
    renamed = [SpeakerTurn(t.start, t.end, mapping[t.speaker], t.confidence) for t in turns]
    return sort_turns(renamed), mapping


def speakers_of(turns: Sequence[SpeakerTurn]) -> tuple[str, ...]:
    """Speaker labels in order of first appearance."""
    seen: dict[str, None] = {}
    for t in sort_turns(turns):
        seen.setdefault(t.speaker, None)
    return tuple(seen)


def own_speech(turns: Sequence[SpeakerTurn], speaker: str) -> list[tuple[float, float]]:
    """The spans where ``speaker`` talks and nobody else does (seconds)."""
    mine = [(t.start, t.end) for t in turns if t.speaker == speaker]
    others = [(t.start, t.end) for t in turns if t.speaker != speaker]
    return subtract_intervals(mine, others)


def speaker_fingerprints(
    samples: np.ndarray,
    turns: Sequence[SpeakerTurn],
    embedder: SpeakerEmbedder,
    *,
    min_speech_s: float = MIN_FINGERPRINT_S,
    max_speech_s: float = 120.0,
) -> tuple[dict[str, tuple[float, ...]], dict[str, str]]:
    """One fingerprint per speaker from that speaker's concatenated own (non-overlapped) speech.

    Args:
        samples: float32 ``(n,)`` at 16 kHz.
        turns: the diarization turns (seconds).
        embedder: turns speech into a unit-norm vector.
        min_speech_s: speakers with less own speech get no fingerprint and a note instead.
        max_speech_s: at most this much speech per speaker is embedded (bounds the cost).

    Returns:
        ``(fingerprints, notes)``: speaker → tuple of ``embedder.dim`` floats; speaker → reason.
    """
    prints: dict[str, tuple[float, ...]] = {}
    notes: dict[str, str] = {}
    for speaker in speakers_of(turns):
        spans = own_speech(turns, speaker)
        total = sum(b - a for a, b in spans)
        if total < min_speech_s:
            notes[speaker] = (
                f"only {total:.2f} s of speech without overlap (< {min_speech_s:g} s needed for a fingerprint)"
            )
            continue
        pieces, taken = [], 0.0
        for a, b in spans:
            b = min(b, a + max_speech_s - taken)
            pieces.append(samples[int(a * SAMPLE_RATE) : int(b * SAMPLE_RATE)])
            taken += b - a
            if taken >= max_speech_s:
                break
        vec = np.asarray(embedder.embed(np.concatenate(pieces)), dtype=np.float32)
        prints[speaker] = tuple(float(x) for x in l2_normalize(vec))
    return prints, notes


def l2_normalize(vec: np.ndarray, axis: int = -1) -> np.ndarray:
    """``vec / ||vec||`` along ``axis`` (zero vectors stay zero)."""
    norm = np.linalg.norm(vec, axis=axis, keepdims=True)
    return vec / np.maximum(norm, 1e-12)


def to_rttm(result: DiarizationResult, file_id: str = "audio") -> str:
    """Render the turns as RTTM lines (``SPEAKER <file> 1 <start> <dur> <NA> <NA> <spk> <NA> <NA>``).

    Whitespace in ``file_id`` is replaced with ``_`` so the line keeps its ten fields.
    """
    file_id = "_".join(file_id.split()) or "audio"
    lines = [
        f"SPEAKER {file_id} 1 {t.start:.3f} {t.end - t.start:.3f} <NA> <NA> {t.speaker} <NA> <NA>"
        for t in result.segments
    ]
    return "\n".join(lines) + ("\n" if lines else "")
