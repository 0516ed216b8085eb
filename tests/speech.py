"""Generated speech for tests: espeak-ng voices, with the script kept as the reference."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np

from server.core.audio import SAMPLE_RATE, decode_audio


def have_espeak() -> bool:
    return shutil.which("espeak-ng") is not None


def espeak(text: str, path: Path, *, voice: str = "en-us", speed: int = 150, pitch: int = 50) -> Path:
    """Speak ``text`` into the WAV file ``path`` (espeak-ng's 22050 Hz mono) and return it."""
    subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(path), text],
        check=True, capture_output=True,
    )
    return path


def espeak_samples(text: str, tmp: Path, **kw) -> np.ndarray:
    """``text`` spoken by espeak-ng as float32 16 kHz samples, shape ``(n,)``."""
    path = tmp / f"espeak_{abs(hash((text, tuple(sorted(kw.items()))))) % 10**8}.wav"
    return decode_audio(espeak(text, path, **kw).read_bytes())


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), np.float32)
