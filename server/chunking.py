"""Chunking long-form audio for Whisper: speech regions → chunks of at most 30 s.

silero-vad finds speech (OpenAI's ``chunking_strategy``: ``"auto"`` or ``server_vad`` parameters),
regions longer than a chunk are cut at their quietest moment, and neighbours are merged into
chunks of at most 30 s (WhisperX's cut & merge). Without a VAD the whole audio is cut into windows
at its quietest frames. Consecutive chunks are grouped into diarization windows.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from server.audio import SAMPLE_RATE


@dataclass(frozen=True)
class VadOptions:
    """silero-vad parameters, from OpenAI's ``chunking_strategy`` (``server_vad``) or the defaults."""

    threshold: float = 0.5
    silence_ms: int = 500
    padding_ms: int = 300

    @classmethod
    def from_strategy(cls, strategy: str | dict | None, default: VadOptions) -> VadOptions:
        """``None``/``"auto"`` → ``default``; a ``server_vad`` object (dict or JSON) → its values.

        Raises:
            ValueError: not ``"auto"`` nor a ``server_vad`` object, or a value out of range.
        """
        if strategy is None or strategy == "auto":
            return default
        if isinstance(strategy, str):
            try:
                strategy = json.loads(strategy)
            except ValueError:
                raise ValueError("chunking_strategy must be 'auto' or a server_vad object") from None
        if not isinstance(strategy, dict) or strategy.get("type") != "server_vad":
            raise ValueError("chunking_strategy must be 'auto' or {type: 'server_vad', ...}")
        unknown = set(strategy) - {"type", "threshold", "silence_duration_ms", "prefix_padding_ms"}
        if unknown:
            raise ValueError(f"unknown chunking_strategy fields: {sorted(unknown)}")
        try:
            out = cls(
                threshold=float(strategy.get("threshold", default.threshold)),
                silence_ms=int(strategy.get("silence_duration_ms", default.silence_ms)),
                padding_ms=int(strategy.get("prefix_padding_ms", default.padding_ms)),
            )
        except (TypeError, ValueError):
            raise ValueError("chunking_strategy values must be numbers") from None
        if not 0.0 < out.threshold < 1.0:
            raise ValueError("chunking_strategy.threshold must be in (0, 1)")
        if not 0 <= out.silence_ms <= 10_000 or not 0 <= out.padding_ms <= 5_000:
            raise ValueError("chunking_strategy durations out of range (silence ≤ 10000 ms, padding ≤ 5000 ms)")
        return out


@dataclass(frozen=True)
class Chunk:
    """Samples ``[start, end)`` of the decoded audio (16 kHz)."""

    index: int
    start: int
    end: int

    @property
    def offset(self) -> float:
        """Start in seconds from the beginning of the audio."""
        return self.start / SAMPLE_RATE

    @property
    def duration(self) -> float:
        return (self.end - self.start) / SAMPLE_RATE


@dataclass(frozen=True)
class Window:
    """Consecutive chunks diarized together: ``chunks`` indices, samples ``[start, end)``."""

    index: int
    chunks: tuple[int, ...]
    start: int
    end: int

    @property
    def offset(self) -> float:
        return self.start / SAMPLE_RATE


class SileroVad:
    """silero-vad (weights bundled in its wheel), loaded once per process on first use; thread-safe."""

    def __init__(self) -> None:
        self._model = None
        self._lock = threading.Lock()

    def load(self) -> None:
        with self._lock:
            if self._model is None:
                from silero_vad import load_silero_vad

                self._model = load_silero_vad()

    def speech_timestamps(
        self,
        samples: np.ndarray,
        *,
        threshold: float,
        min_speech_ms: int,
        min_silence_ms: int,
        pad_ms: int,
        max_speech_s: float = float("inf"),
    ) -> list[tuple[int, int]]:
        """silero-vad's ``get_speech_timestamps`` on float32 ``(n,)`` 16 kHz samples.

        Returns speech regions ``[(start, end), …]`` in samples; the model's recurrent state is
        reset after each call, so calls are independent.
        """
        import torch
        from silero_vad import get_speech_timestamps

        self.load()
        with self._lock, torch.inference_mode():
            stamps = get_speech_timestamps(
                torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32)),
                self._model,
                threshold=threshold,
                sampling_rate=SAMPLE_RATE,
                min_speech_duration_ms=min_speech_ms,
                min_silence_duration_ms=min_silence_ms,
                speech_pad_ms=pad_ms,
                max_speech_duration_s=max_speech_s,
            )
            self._model.reset_states()
        return [(int(s["start"]), int(s["end"])) for s in stamps]

    def regions(self, samples: np.ndarray, options: VadOptions, max_s: float) -> list[tuple[int, int]]:
        """Speech regions ``[(start, end), …]`` in samples, padded, none longer than ``max_s`` when
        silero can split it (regions it could not split are cut later)."""
        return self.speech_timestamps(
            samples,
            threshold=options.threshold,
            min_speech_ms=200,
            min_silence_ms=options.silence_ms,
            pad_ms=options.padding_ms,
            max_speech_s=max(1.0, max_s - 2 * options.padding_ms / 1000),
        )


def split_long(samples: np.ndarray, start: int, end: int, max_s: float) -> list[tuple[int, int]]:
    """``[start, end)`` cut into touching pieces of at most ``max_s`` at the quietest 20 ms frames."""
    from jax_models.longform import plan_windows  # numpy only

    return [(start + a, start + b) for a, b in plan_windows(samples[start:end], max_s=max_s)]


def plan_chunks(samples: np.ndarray, regions: Sequence[tuple[int, int]] | None, max_s: float = 30.0) -> list[Chunk]:
    """Speech regions → chunks of at most ``max_s`` seconds (cut & merge).

    Args:
        samples: float32 ``(n,)`` 16 kHz.
        regions: VAD speech regions in samples, sorted; ``None`` means no VAD: the whole audio is
            cut into windows at its quietest frames.
        max_s: the longest chunk (Whisper's 30 s window).

    Returns:
        chunks in time order, non-overlapping; silence outside them is not transcribed.
    """
    n = int(samples.shape[0])
    if regions is None:
        pieces = split_long(samples, 0, n, max_s) if n else []
    else:
        pieces = []
        for a, b in regions:
            a, b = max(0, a), min(n, b)
            if pieces and a < pieces[-1][1]:  # padded neighbours may touch
                a = pieces[-1][1]
            if b <= a:
                continue
            if (b - a) > max_s * SAMPLE_RATE:
                pieces.extend(split_long(samples, a, b, max_s))
            else:
                pieces.append((a, b))
    limit = int(max_s * SAMPLE_RATE)
    merged: list[list[int]] = []
    for a, b in pieces:
        if merged and b - merged[-1][0] <= limit:
            merged[-1][1] = b
        else:
            merged.append([a, b])
    return [Chunk(i, a, b) for i, (a, b) in enumerate(merged)]


def group_windows(chunks: Sequence[Chunk], window_s: float) -> list[Window]:
    """Consecutive chunks grouped while the group spans at most ``window_s`` seconds (at least one each)."""
    limit = int(window_s * SAMPLE_RATE)
    groups: list[list[Chunk]] = []
    for c in chunks:
        if groups and c.end - groups[-1][0].start <= limit:
            groups[-1].append(c)
        else:
            groups.append([c])
    return [Window(i, tuple(c.index for c in g), g[0].start, g[-1].end) for i, g in enumerate(groups)]
