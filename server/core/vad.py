"""Voice activity detection: silero-vad (weights bundled in its wheel) and its options.

``VadOptions`` carries OpenAI's ``chunking_strategy`` (``"auto"`` or a ``server_vad`` object);
``SileroVad`` turns float32 16 kHz samples into speech regions in samples.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from server.core.audio import SAMPLE_RATE

__all__ = ["SileroVad", "VadOptions"]


@dataclass(frozen=True)
class VadOptions:
    """silero-vad parameters, from OpenAI's ``chunking_strategy`` (``server_vad``) or the defaults."""

    threshold: float = 0.5
    silence_ms: int = 500
    padding_ms: int = 300

    @classmethod
    def from_strategy(cls, strategy: str | dict[str, Any] | None, default: VadOptions) -> VadOptions:
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


class SileroVad:
    """silero-vad (weights bundled in its wheel), loaded once per process on first use; thread-safe."""

    def __init__(self) -> None:
        self._model: Any = None  # silero_vad's OnnxWrapper / torch.jit model
        self._lock = threading.Lock()

    def load(self) -> None:
        with self._lock:
            if self._model is None:
                from silero_vad import load_silero_vad  # type: ignore[import-untyped]  # silero-vad 6 has no py.typed

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
