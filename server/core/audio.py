"""Audio constants and decoding: any ffmpeg-readable bytes → float32 mono 16 kHz samples.

Constants follow openai/whisper's ``audio.py``: each is derived from the ones above it.
Decoding uses PyAV (bundled libav), as faster-whisper does, so no ffmpeg binary is needed.
"""

from __future__ import annotations

import io
import time

import numpy as np

SAMPLE_RATE = 16_000  # Hz
HOP_LENGTH = 160  # samples between log-mel frames (10 ms)
CHUNK_LENGTH = 30  # seconds in one Whisper window
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE  # 480000 samples in a 30 s window
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames in a window
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100 mel frames/s
TOKENS_PER_SECOND = FRAMES_PER_SECOND // 2  # 50: the encoder halves the frame rate (20 ms per position)
TIME_PRECISION = 1 / TOKENS_PER_SECOND  # 0.02 s, the resolution of timestamp tokens
MIN_DURATION_S = 0.1  # seconds: OpenAI answers 400 ``audio_too_short`` below this


class AudioDecodeError(ValueError):
    """The bytes could not be decoded as audio (unknown container, no audio stream, corrupt data).

    ``code`` is the OpenAI error code the HTTP edge answers with (400).
    """

    code = "invalid_file_format"


class AudioTooShortError(AudioDecodeError):
    """The decoded audio is shorter than ``MIN_DURATION_S`` (OpenAI's 0.1 s minimum)."""

    code = "audio_too_short"


class AudioTooLongError(ValueError):
    """The decoded audio is longer than the configured limit (seconds)."""


class AudioDecodeTimeoutError(AudioDecodeError):
    """Decoding took longer than its deadline (a pathological or oversized file)."""

    code = "audio_decode_timeout"


def decode_audio(
    data: bytes,
    *,
    max_duration_s: float | None = None,
    timeout_s: float | None = None,
    min_duration_s: float = MIN_DURATION_S,
) -> np.ndarray:
    """Decode an audio file's bytes to mono float32 samples at 16 kHz.

    Args:
        data: the whole file (wav, flac, mp3, m4a, ogg, webm, mp4, … anything libav reads).
        max_duration_s: stop and raise once more than this many seconds were decoded.
        timeout_s: wall-clock deadline for the whole decode (seconds); checked after every decoded
            frame, and handed to libav as its open/read timeout so a stalled demuxer is interrupted.
        min_duration_s: raise ``AudioTooShortError`` for audio shorter than this (seconds; 0 disables).

    Returns:
        ``np.ndarray`` of shape ``(n_samples,)``, dtype float32, values in [-1, 1], 16000 Hz.
        Any sample rate and channel count is resampled and down-mixed.

    Raises:
        AudioDecodeError: empty input, no audio stream, or libav failed to decode.
        AudioTooShortError: the audio is shorter than ``min_duration_s`` (a subclass of the above).
        AudioTooLongError: the audio is longer than ``max_duration_s``.
        AudioDecodeTimeoutError: decoding took longer than ``timeout_s``.
    """
    import av  # imported lazily: the router and tests that never decode skip its start-up

    if not data:
        raise AudioDecodeError("The audio file is empty.")
    max_samples = None if max_duration_s is None else int(max_duration_s * SAMPLE_RATE)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s

    def check_deadline() -> None:
        if deadline is not None and time.monotonic() > deadline:
            raise AudioDecodeTimeoutError(
                f"Decoding the audio took longer than {timeout_s:g} seconds; the file is malformed or too long."
            )

    pieces: list[np.ndarray] = []
    n = 0
    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore", timeout=timeout_s) as container:
            if not container.streams.audio:
                raise AudioDecodeError("The file contains no audio stream.")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    arr = out.to_ndarray().reshape(-1)
                    pieces.append(arr)
                    n += arr.size
                if max_samples is not None and n > max_samples:
                    raise AudioTooLongError(f"The audio is longer than the limit of {max_duration_s:g} seconds.")
                check_deadline()
            for out in resampler.resample(None):  # flush
                pieces.append(out.to_ndarray().reshape(-1))
    except (AudioDecodeError, AudioTooLongError):
        raise
    except Exception as exc:  # av.error.FFmpegError and friends; messages vary by libav version
        check_deadline()  # libav's interrupt (av.ExitError) after its own timeout
        # libav's messages carry errno numbers and paths ("[Errno 1094995529] Invalid data found when
        # processing input: '<none>'"); strerror is the plain part
        reason = getattr(exc, "strerror", None) or "invalid or truncated data"
        raise AudioDecodeError(f"The audio file could not be decoded ({str(reason).rstrip('.').lower()}).") from exc
    if not pieces:
        raise AudioDecodeError("The audio file contains no samples.")
    samples: np.ndarray = np.concatenate(pieces).astype(np.float32) / 32768.0
    if samples.size == 0:
        raise AudioDecodeError("The audio file contains no samples.")
    if samples.size < min_duration_s * SAMPLE_RATE:
        raise AudioTooShortError(
            f"Audio file is too short ({samples.size / SAMPLE_RATE:.3f} s). "
            f"Minimum audio length is {min_duration_s:g} seconds."
        )
    return samples


def duration_s(samples: np.ndarray) -> float:
    """Length of 16 kHz ``samples`` (shape ``(n,)``) in seconds."""
    return float(samples.shape[-1]) / SAMPLE_RATE


def to_wav_bytes(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """Encode float32 mono samples (shape ``(n,)``, [-1, 1]) as a 16-bit PCM WAV file.

    The inverse of ``decode_audio`` (which gives ``k / 32768``): its samples come back exactly, so
    the router's chunks are the very samples the whisper server would decode from the upload.
    """
    import wave

    pcm = np.clip(np.round(np.asarray(samples, dtype=np.float64) * 32768.0), -32768, 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()
