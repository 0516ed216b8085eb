"""Long-form audio → windows of at most 30 s, cut at the quietest moment near each boundary.

Whisper sees 30 s at a time. Rather than overlapping windows whose transcripts must be merged
(and can drop or repeat words at the seams), each cut is placed at the frame with the least
energy in the last ``search_s`` seconds before the 30 s limit — a pause between words in
natural speech — so windows never overlap and nothing needs merging (WhisperX's cut idea).
"""

from __future__ import annotations

import numpy as np

from server.core.audio import N_SAMPLES, SAMPLE_RATE

FRAME = SAMPLE_RATE // 50  # 20 ms energy frames
SMOOTH = 15  # frames in the moving average (300 ms)


def plan_windows(samples: np.ndarray, *, max_s: float = 30.0, search_s: float = 6.0) -> list[tuple[int, int]]:
    """Split 16 kHz ``samples`` (shape ``(n,)``) into ``[(start, end), …]`` sample ranges.

    Every range is at most ``max_s`` seconds; consecutive ranges touch (no gap, no overlap);
    each cut is at the centre of the quietest 300 ms (moving-average RMS of 20 ms frames) within ``search_s`` seconds before
    the limit. Empty audio gives one empty window ``[(0, 0)]``.
    """
    n = int(samples.shape[0])
    max_len = min(int(max_s * SAMPLE_RATE), N_SAMPLES)
    if n <= max_len:
        return [(0, n)]
    out: list[tuple[int, int]] = []
    start = 0
    search = int(search_s * SAMPLE_RATE)
    while n - start > max_len:
        hi = start + max_len
        lo = max(start + max_len - search, start + FRAME)
        region = samples[lo:hi]
        frames = region[: (len(region) // FRAME) * FRAME].reshape(-1, FRAME)
        energy = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))
        # smooth over ~300 ms so a pause between sentences beats a gap inside a word
        width = min(SMOOTH, len(energy))
        energy = np.convolve(energy, np.ones(width) / width, mode="valid")
        # prefer later frames on ties so windows stay long; centre of the quietest span
        k = len(energy) - 1 - int(np.argmin(energy[::-1])) + width // 2
        cut = lo + k * FRAME + FRAME // 2
        out.append((start, cut))
        start = cut
    out.append((start, n))
    return out
