"""Generated speech for tests: espeak-ng voices, with the script kept as the reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from server.core.audio import SAMPLE_RATE
from torch_models.synth import espeak_wav, speak


def espeak(text: str, path: Path, *, voice: str = "en-us", speed: int = 150, pitch: int = 50) -> Path:
    """Speak ``text`` into the WAV file ``path`` (espeak-ng's 22050 Hz mono) and return it."""
    path.write_bytes(espeak_wav(text, voice, pitch, speed))
    return path


def espeak_samples(text: str, *, voice: str = "en-us", speed: int = 150, pitch: int = 50) -> np.ndarray:
    """``text`` spoken by espeak-ng as float32 16 kHz samples, shape ``(n,)``."""
    return speak(text, voice, pitch, speed)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), np.float32)
