"""Chunking long-form audio for Whisper: speech regions → chunks of at most 30 s.

The VAD (``server.core.vad``) finds speech (OpenAI's ``chunking_strategy``: ``"auto"`` or
``server_vad`` parameters), regions longer than a chunk are cut at their quietest moment, and neighbours are merged into
chunks of at most 30 s (WhisperX's cut & merge). Without a VAD the whole audio is cut into windows
at its quietest frames. Consecutive chunks are grouped into diarization windows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from server.core.audio import SAMPLE_RATE
from server.core.windows import plan_windows


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


def split_long(samples: np.ndarray, start: int, end: int, max_s: float) -> list[tuple[int, int]]:
    """``[start, end)`` cut into touching pieces of at most ``max_s`` at the quietest 20 ms frames."""
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


def group_windows(chunks: Sequence[Chunk], window_s: float, total: int | None = None) -> list[Window]:
    """Consecutive chunks grouped while the group spans at most ``window_s`` seconds (at least one each).

    With ``total`` (the file's length in samples) the first window starts at sample 0 and the last
    ends at ``total`` where that keeps them within ``window_s``: the diarizer hears the leading and
    trailing audio the VAD left out (quiet speech that silero-vad missed is still someone's turn),
    and a file that fits in one window is diarized whole (issue 14).
    """
    limit = int(window_s * SAMPLE_RATE)
    groups: list[list[Chunk]] = []
    for c in chunks:
        if groups and c.end - groups[-1][0].start <= limit:
            groups[-1].append(c)
        else:
            groups.append([c])
    spans = [[g[0].start, g[-1].end] for g in groups]
    if total is not None and spans:
        if spans[0][1] <= limit:
            spans[0][0] = 0
        if total - spans[-1][0] <= limit:
            spans[-1][1] = total
    return [Window(i, tuple(c.index for c in g), a, b) for i, (g, (a, b)) in enumerate(zip(groups, spans))]
