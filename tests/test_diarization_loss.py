"""bench.diarization_loss's frame bookkeeping, and the invariant its AMI run found (issue 14): once
the speaker count is set, reconstruction and turn building lose no speaker-time as long as there are
at least as many clusters as the count asks for. Tiny arrays, no models."""

from __future__ import annotations

import numpy as np

from bench.diarization_loss import reference_count, scored_mask, window_counts
from server.core.transcript import SpeakerTurn
from torch_models.pyannote_diarizer import (
    aggregate,
    chunk_frame_offsets,
    clustered_scores,
    reconstruct,
    speaker_count,
    to_turns,
)


def test_reference_count_counts_turns_over_frame_middles() -> None:
    turns = [SpeakerTurn(0.0, 0.3, "a"), SpeakerTurn(0.2, 0.5, "b"), SpeakerTurn(0.4, 0.5, "a")]
    # frame middles 0.05, 0.15, ..., 0.55 (step 0.1, duration 0.1)
    assert reference_count(turns, 6, 0.1, 0.1).tolist() == [1, 1, 2, 1, 2, 0]


def test_scored_mask_takes_the_uem_spans() -> None:
    from pyannote.core import Segment, Timeline

    assert scored_mask((0.1, 0.3), 4, 0.1, 0.1).tolist() == [False, True, True, False]
    uem = Timeline([Segment(0.0, 0.1), Segment(0.3, 0.4)])
    assert scored_mask(uem, 4, 0.1, 0.1).tolist() == [True, False, False, True]
    assert scored_mask(None, 3, 0.1, 0.1).all()


def test_window_counts_average_and_max_over_covering_windows() -> None:
    hard = np.zeros((2, 3, 2), np.float32)
    hard[0, :, 0] = 1  # window 0: one speaker on frames 0-2
    hard[1, 0, :] = 1  # window 1 (offset 1): two speakers on its first frame (file frame 1)
    mean, best = window_counts(hard, np.array([0, 1]), 4)
    assert mean.tolist() == [1.0, 1.5, 0.5, 0.0]
    assert best.tolist() == [1.0, 2.0, 1.0, 0.0]


def test_reconstruct_and_turns_keep_the_whole_count_when_clusters_suffice() -> None:
    rng = np.random.default_rng(0)
    num_chunks, num_frames, num_local, num_clusters = 12, 40, 3, 3
    hard = (rng.random((num_chunks, num_frames, num_local)) < 0.35).astype(np.float32)
    hard[..., 2] *= hard[..., 0] * hard[..., 1] == 0  # at most 2 at once, as segmentation-3.0
    offsets = chunk_frame_offsets(num_chunks, 0.5, 0.1)  # windows every 5 frames
    count = speaker_count(hard, offsets)
    clusters = np.tile(np.arange(num_local), (num_chunks, 1))
    clusters[hard.sum(axis=1) == 0] = -2
    activity = aggregate(clustered_scores(hard, clusters, num_clusters), offsets, skip_average=True)
    binary = reconstruct(activity, count)
    assert count.max() == 2 and (count > 0).mean() > 0.5
    assert np.array_equal(binary.sum(axis=1), count)  # nothing dropped by reconstruct
    turns = to_turns(binary, np.ones_like(binary), 0.1, 0.1, duration=binary.shape[0] * 0.1 + 0.05)
    kept = np.zeros(binary.shape[0])
    for k in range(num_clusters):
        kept += reference_count([t for t in turns if t.speaker == f"speaker_{k}"], binary.shape[0], 0.1, 0.1) > 0
    assert np.array_equal(kept, count)  # nothing dropped by to_turns
