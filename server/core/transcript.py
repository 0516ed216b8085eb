"""The one contract between engines and HTTP: plain frozen dataclasses, times in seconds.

Engines return these; ``server.core.formats`` renders them. No tensors or pydantic here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Word:
    """One word with its time span (seconds from the start of the audio) and probability in [0, 1]."""

    word: str
    start: float
    end: float
    probability: float | None = None
    speaker: str | None = None


@dataclass(frozen=True)
class Segment:
    """One transcript segment, with Whisper's decoding statistics (OpenAI ``verbose_json`` fields).

    ``seek`` is the window's offset in mel frames (100 per second), ``tokens`` the decoded
    text token ids, ``avg_logprob`` the mean log-probability per token, ``compression_ratio``
    the gzip ratio of the text and ``no_speech_prob`` the probability of ``<|nospeech|>``.
    """

    id: int
    start: float
    end: float
    text: str
    seek: int = 0
    tokens: tuple[int, ...] = ()
    temperature: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0
    words: tuple[Word, ...] = ()
    speaker: str | None = None
    confidence: float | None = None

    def shifted(self, offset: float, new_id: int | None = None) -> Segment:
        """The same segment with times (and word times) moved by ``offset`` seconds."""
        return replace(
            self,
            id=self.id if new_id is None else new_id,
            start=self.start + offset,
            end=self.end + offset,
            seek=self.seek + int(round(offset * 100)),
            words=tuple(replace(w, start=w.start + offset, end=w.end + offset) for w in self.words),
        )


@dataclass(frozen=True)
class SpeakerTurn:
    """A span during which one speaker talks; ``confidence`` in [0, 1] or None when unknown."""

    start: float
    end: float
    speaker: str
    confidence: float | None = None


def speaker_count_error(num: int | None, lo: int | None, hi: int | None) -> tuple[str, str] | None:
    """The first inconsistency among speaker-count bounds (pyannote's ``num_speakers``, ``min_speakers``
    ``lo`` and ``max_speakers`` ``hi``) as ``(message, param)``: ``lo > hi``, or ``num`` outside
    ``[lo, hi]``; None when they agree. The sidecar and the router refuse such a request alike."""
    if lo is not None and hi is not None and lo > hi:
        return f"'min_speakers' ({lo}) is larger than 'max_speakers' ({hi}).", "min_speakers"
    if num is not None and ((lo is not None and num < lo) or (hi is not None and num > hi)):
        return f"'num_speakers' ({num}) is outside [min_speakers, max_speakers].", "num_speakers"
    return None


@dataclass(frozen=True)
class Transcript:
    """A whole transcription result.

    ``task`` is ``"transcribe"`` or ``"translate"``; ``language`` the ISO-639-1 code used or
    detected; ``duration`` the audio length in seconds; ``warnings`` human-readable notes
    (for example, a backend that failed and was skipped).
    """

    text: str
    segments: tuple[Segment, ...]
    language: str
    duration: float
    task: str = "transcribe"
    warnings: tuple[str, ...] = field(default_factory=tuple)

    @property
    def words(self) -> tuple[Word, ...]:
        """All words of all segments, in time order."""
        return tuple(w for s in self.segments for w in s.words)
