"""Synthetic speech from espeak-ng, and conversations with exactly known speaker turns.

``espeak_wav`` / ``speak`` are the one espeak-ng wrapper of the project (the tests' speech, the
bench's audio sets and the conversations below all use them). A conversation, used by the
diarization tests and ``bench.eval_der --espeak``: two (or more) clearly different synthetic voices
alternate lines with pauses between them; the reference turns are the spans where each line's
waveform is above a small energy floor. ``mix_lines`` places such trimmed lines at any start, over
one another too, for the bench's synthetic meetings with overlapped speech.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from server.core.audio import SAMPLE_RATE, decode_audio
from server.core.transcript import SpeakerTurn

# (espeak-ng voice, pitch 0-99, words per minute): a low male US voice and a high female variant.
VOICES: dict[str, tuple[str, int, int]] = {
    "A": ("en-us", 35, 165),
    "B": ("en+f3", 80, 150),
    "C": ("en-gb-scotland", 55, 140),
}

DIALOGUE: tuple[tuple[str, str], ...] = (
    ("A", "Good morning. Did you manage to read the quarterly report I sent yesterday?"),
    ("B", "I did, and I have a few questions about the numbers in the second section."),
    ("A", "Of course. Which figures looked strange to you?"),
    ("B", "The travel costs doubled, but the number of trips stayed almost the same."),
    ("A", "Right, that is because flights got much more expensive in the spring."),
    ("B", "That makes sense. Should we plan fewer meetings in person next quarter?"),
    ("A", "I think we should, and we can move the weekly review to a video call."),
    ("B", "Great, I will update the budget and send you a new draft on Friday."),
)


@dataclass(frozen=True)
class Conversation:
    """float32 ``(n,)`` 16 kHz ``samples`` and the reference ``turns`` (seconds, speakers ``A``, ``B``…)."""

    samples: np.ndarray
    turns: tuple[SpeakerTurn, ...]

    @property
    def duration(self) -> float:
        """Seconds of audio."""
        return self.samples.shape[0] / SAMPLE_RATE


def espeak_available() -> bool:
    """Whether the ``espeak-ng`` binary is on ``PATH``."""
    return shutil.which("espeak-ng") is not None


def espeak_wav(text: str, voice: str = "en", pitch: int = 50, wpm: int = 175) -> bytes:
    """``text`` spoken by ``espeak-ng -w``: the bytes of a 22050 Hz mono 16-bit WAV file.

    Args:
        text: what to say.
        voice: an espeak-ng voice (``en`` is espeak-ng's own default, ``en-us``, ``en+f3``, ``fr``…).
        pitch: 0-99 (espeak-ng's default 50).
        wpm: speed in words per minute (espeak-ng's default 175).

    Raises:
        FileNotFoundError: espeak-ng is not installed.
        subprocess.CalledProcessError: espeak-ng failed (unknown voice, …).
    """
    with tempfile.TemporaryDirectory(prefix="chorus-espeak-") as tmp:
        path = f"{tmp}/speech.wav"  # a file, not --stdout: its RIFF header then carries the real sizes
        subprocess.run(
            ["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(wpm), "-w", path, text],
            check=True,
            capture_output=True,
            timeout=60,
        )
        with open(path, "rb") as f:
            return f.read()


def speak(text: str, voice: str = "en", pitch: int = 50, wpm: int = 175) -> np.ndarray:
    """``text`` spoken by espeak-ng (see :func:`espeak_wav`) → float32 ``(n,)`` at 16 kHz."""
    return decode_audio(espeak_wav(text, voice, pitch, wpm))


def speech_span(samples: np.ndarray, floor_db: float = -45.0, hop: int = 160) -> tuple[int, int]:
    """First and last sample of 10 ms frames louder than ``floor_db`` dBFS (RMS)."""
    n = samples.shape[0] // hop
    rms = np.sqrt(np.mean(samples[: n * hop].reshape(n, hop) ** 2, axis=1) + 1e-12)
    loud = np.flatnonzero(20 * np.log10(rms) > floor_db)
    if loud.size == 0:
        return 0, 0
    return int(loud[0] * hop), int((loud[-1] + 1) * hop)


def spoken_line(text: str, voice: str = "en", pitch: int = 50, wpm: int = 175) -> np.ndarray:
    """``text`` spoken by espeak-ng (:func:`speak`) and trimmed to its speech (:func:`speech_span`):
    float32 ``(n,)`` at 16 kHz, from the first to the last 10 ms frame above the energy floor."""
    audio = speak(text, voice, pitch, wpm)
    a, b = speech_span(audio)
    return audio[a:b]


def mix_lines(
    lines: Sequence[tuple[int, np.ndarray, str]], *, length: int | None = None, peak: float = 0.5
) -> Conversation:
    """Place lines of speech on one track: the mixer of the synthetic meetings with overlapped speech.

    Each line's samples are added at its start sample (lines that overlap in time are summed: two
    voices over the same seconds), then the whole track is peak-normalised to ``peak``. The
    reference turn of a line is its whole extent, ``[start, start + n)`` samples in seconds.

    Args:
        lines: ``(start sample, float32 (n,) 16 kHz samples, speaker)``; starts ≥ 0, in any order
            (the turns keep this order).
        length: the track's length in samples (lines running past it are cut there; their turns
            are not); None: 0.5 s after the last line ends.
        peak: the largest absolute sample value after normalising.

    Returns:
        a :class:`Conversation` of the mix (float32) and one turn per line, in the order of ``lines``.

    Raises:
        ValueError: no lines, or a negative start.
    """
    if not lines:
        raise ValueError("mix_lines needs at least one line")
    if min(start for start, _, _ in lines) < 0:
        raise ValueError("a line starts before the track")
    if length is None:
        length = max(start + audio.shape[0] for start, audio, _ in lines) + SAMPLE_RATE // 2
    mix = np.zeros(length, np.float32)
    turns = []
    for start, audio, who in lines:
        mix[start : start + audio.shape[0]] += audio[: max(0, length - start)]
        turns.append(SpeakerTurn(start / SAMPLE_RATE, (start + audio.shape[0]) / SAMPLE_RATE, who))
    mix *= peak / max(1e-6, float(np.abs(mix).max()))
    return Conversation(mix, tuple(turns))


def conversation(
    lines: Sequence[tuple[str, str]] = DIALOGUE,
    *,
    pauses_s: Sequence[float] = (0.5, 0.35, 0.7, 0.45),
    lead_s: float = 0.5,
    voices: dict[str, tuple[str, int, int]] | None = None,
) -> Conversation:
    """Speak ``lines`` (speaker key, text) one after another with the given pauses (cycled).

    Returns the mixed audio and the reference turns, measured on each line's waveform.
    """
    voices = voices or VOICES
    pieces = [np.zeros(int(lead_s * SAMPLE_RATE), np.float32)]
    turns: list[SpeakerTurn] = []
    offset = pieces[0].shape[0]
    for i, (who, text) in enumerate(lines):
        audio = spoken_line(text, *voices[who])
        turns.append(SpeakerTurn(offset / SAMPLE_RATE, (offset + audio.shape[0]) / SAMPLE_RATE, who))
        pause = np.zeros(int(pauses_s[i % len(pauses_s)] * SAMPLE_RATE), np.float32)
        pieces += [audio, pause]
        offset += audio.shape[0] + pause.shape[0]
    samples = np.concatenate(pieces).astype(np.float32)
    return Conversation(samples * (0.5 / max(1e-6, float(np.abs(samples).max()))), tuple(turns))
