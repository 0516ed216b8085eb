"""The pure steps of the pyannote-style pipeline (torch_models/pyannote_diarizer.py) on hand-made
arrays: no weights, milliseconds each."""

from __future__ import annotations

import numpy as np

from torch_models.pyannote_diarizer import (
    agglomerative,
    aggregate,
    assign,
    chunk_starts,
    clustered_scores,
    reconstruct,
    speaker_count,
    split_local_speakers,
    to_multilabel,
    to_turns,
)
from torch_models.segmentation import powerset_mapping


def test_chunk_starts_cover_the_tail_with_one_padded_chunk():
    assert chunk_starts(5, chunk=10, step=2).tolist() == [0]
    assert chunk_starts(10, chunk=10, step=2).tolist() == [0]
    assert chunk_starts(14, chunk=10, step=2).tolist() == [0, 2, 4]
    assert chunk_starts(15, chunk=10, step=2).tolist() == [0, 2, 4, 6]  # 6..16 padded


def test_powerset_to_multilabel():
    mapping = powerset_mapping(3, 2)
    assert mapping.tolist() == [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1]]
    logp = np.log(np.array([[[0.1, 0.0, 0.0, 0.0, 0.7, 0.1, 0.1]]], np.float32) + 1e-9)
    hard, soft = to_multilabel(logp, mapping)
    assert hard[0, 0].tolist() == [1, 1, 0]
    np.testing.assert_allclose(soft[0, 0], [0.8, 0.8, 0.2], atol=1e-5)


def test_aggregate_averages_or_sums_overlapping_chunks_and_skips_nan():
    scores = np.ones((2, 4, 1), np.float32)
    scores[1] *= 3
    scores[1, 0, 0] = np.nan
    offsets = np.array([0, 2])
    assert aggregate(scores, offsets)[:, 0].tolist() == [1, 1, 1, 2, 3, 3]  # frame 2: chunk 1 is NaN there
    assert aggregate(scores, offsets, skip_average=True)[:, 0].tolist() == [1, 1, 1, 4, 3, 3]


def test_speaker_count_is_the_rounded_mean_over_chunks():
    hard = np.zeros((2, 4, 3), np.float32)
    hard[0, :, 0] = 1
    hard[0, 2:, 1] = 1  # chunk 0 hears two speakers in its last two frames …
    hard[1, :2, 0] = 1  # … which chunk 1 (shifted by 2) also hears as two
    hard[1, :2, 2] = 1
    assert speaker_count(hard, np.array([0, 2])).tolist() == [1, 1, 2, 2, 0, 0]


def test_reconstruct_turns_on_the_count_most_active_clusters():
    activity = np.array([[3, 1, 0], [3, 2, 1], [0, 1, 2]], np.float32)
    binary = reconstruct(activity, np.array([1, 2, 0]))
    assert binary.tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 0]]


def test_clustered_scores_take_the_max_of_local_speakers_per_cluster():
    scores = np.array([[[0.2, 0.9, 0.0]], [[0.5, 0.0, 0.4]]], np.float32)  # (C=2, F=1, S=3)
    clusters = np.array([[0, 0, -2], [1, -2, 0]])
    out = clustered_scores(scores, clusters, 2)
    assert out[0, 0, 0] == np.float32(0.9) and np.isnan(out[0, 0, 1])
    assert out[1, 0].tolist() == [np.float32(0.4), np.float32(0.5)]


def test_to_turns_closes_short_gaps_and_averages_confidence():
    binary = np.zeros((10, 2), np.float32)
    binary[1:4, 0] = 1
    binary[5:8, 0] = 1
    binary[2:6, 1] = 1
    soft = np.full((10, 2), 0.8, np.float32)
    soft[:, 1] = 0.6
    turns = to_turns(binary, soft, frame_step=0.1, frame_duration=0.0, duration=0.75)
    assert [(t.speaker, t.start, t.end) for t in turns] == [
        ("speaker_0", 0.1, 0.4),
        ("speaker_0", 0.5, 0.75),
        ("speaker_1", 0.2, 0.6),
    ]
    assert all(abs(t.confidence - (0.8 if t.speaker == "speaker_0" else 0.6)) < 1e-6 for t in turns)
    merged = to_turns(binary, soft, 0.1, 0.0, 1.0, min_duration_off=0.15)
    assert [(t.start, t.end) for t in merged if t.speaker == "speaker_0"] == [(0.1, 0.8)]


def _blobs(n_per, centers, spread, seed=0):
    rng = np.random.default_rng(seed)
    x = np.concatenate([c + spread * rng.standard_normal((n_per, len(c))) for c in centers])
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_agglomerative_finds_the_count_and_honours_bounds():
    centers = np.eye(4)[:3] * 3
    x = _blobs(20, centers, 0.3)
    labels = agglomerative(x, threshold=0.7, min_cluster_size=12, lo=1, hi=10)
    assert len(set(labels)) == 3
    for j in range(3):  # each blob is one cluster
        assert len(set(labels[20 * j : 20 * (j + 1)])) == 1
    assert len(set(agglomerative(x, 0.7, 12, lo=1, hi=2))) == 2
    assert len(set(agglomerative(x, 0.7, 12, lo=4, hi=4))) == 4
    assert len(set(agglomerative(x, 1.9, 12, lo=1, hi=10))) == 1  # a huge threshold merges all


def test_a_small_cluster_is_kept_only_above_the_minimum_size():
    # 3 speakers, the third with 6 of 86 embeddings (a voice that says little in a short clip)
    x = np.concatenate([_blobs(40, np.eye(4)[:2] * 3, 0.3), _blobs(6, [np.eye(4)[2] * 3], 0.3, seed=1)])
    assert len(set(agglomerative(x, 0.7, 12, lo=1, hi=10, min_cluster_fraction=0.1))) == 2  # 6 < min(12, 8.6)
    assert len(set(agglomerative(x, 0.7, 12, lo=1, hi=10, min_cluster_fraction=0.05))) == 3  # 6 >= min(12, 4.3)
    assert len(set(agglomerative(x, 0.7, 6, lo=1, hi=10))) == 3


def test_min_cluster_share_folds_small_clusters_of_long_files():
    # a long file: 3 voices, the third with 20 of 420 embeddings (4.8 %), above min_cluster_size 12
    x = np.concatenate([_blobs(200, np.eye(4)[:2] * 3, 0.3), _blobs(20, [np.eye(4)[2] * 3], 0.3, seed=1)])
    assert len(set(agglomerative(x, 0.7, 12, lo=1, hi=10))) == 3  # 3.1's rule: 20 >= 12
    assert len(set(agglomerative(x, 0.7, 12, lo=1, hi=10, min_cluster_share=0.03))) == 3  # 20 >= 12.6
    assert len(set(agglomerative(x, 0.7, 12, lo=1, hi=10, min_cluster_share=0.05))) == 2  # 20 < 21


def test_assign_is_one_to_one_within_a_chunk_when_constrained():
    cents = np.eye(2)
    emb = np.array([[[1.0, 0.1], [0.9, 0.2]], [[0.0, 1.0], [np.nan, np.nan]]])
    emb = emb / np.linalg.norm(emb, axis=-1, keepdims=True)
    assert assign(emb, cents, constrained=False)[0].tolist() == [0, 0]
    out = assign(emb, cents, constrained=True)
    assert out[0].tolist() == [0, 1] and out[1].tolist() == [1, -2]


def test_pieces_of_one_local_speaker_may_share_a_cluster_but_not_with_another_local_speaker():
    # chunk 0: local speaker 0 cut into 3 pieces, all nearest cluster 0; local speaker 1 (one piece)
    # also nearest cluster 0 but less so. The pieces of speaker 0 stay together (a one-to-one
    # matching over pieces would push two of them into other clusters); speaker 1 must move.
    cents = np.eye(3)
    emb = np.array([[[1.0, 0.2, 0.1], [1.0, 0.1, 0.2], [1.0, 0.3, 0.0], [0.8, 0.6, 0.0]]])
    emb = emb / np.linalg.norm(emb, axis=-1, keepdims=True)
    parents = np.array([[0, 0, 0, 1]])
    assert assign(emb, cents, constrained=True, parents=parents)[0].tolist() == [0, 0, 0, 1]
    assert sorted(assign(emb, cents, constrained=True)[0].tolist()) == [0, 0, 1, 2]  # what pieces got before
    assert assign(emb, cents, constrained=False)[0].tolist() == [0, 0, 0, 0]
    # one local speaker in a chunk: no constraint at all
    assert assign(emb[:, :3], cents, constrained=True, parents=parents[:, :3])[0].tolist() == [0, 0, 0]


def test_split_local_speakers_partitions_frames_without_changing_the_count():
    hard = np.zeros((1, 12, 3), np.float32)
    hard[0, 0:10, 0] = 1
    hard[0, 4:6, 1] = 1
    soft = np.full((1, 12, 3), 0.5, np.float32)
    vh, vs, parents = split_local_speakers(hard, soft, piece_frames=5)
    assert vh.shape == (1, 12, 3)  # speaker 0 in two pieces of 5 frames, speaker 1 in one
    assert parents.tolist() == [[0, 0, 1]]
    np.testing.assert_array_equal(vh.sum(-1), hard.sum(-1))
    assert vh[0, :, 0].tolist() == [1] * 5 + [0] * 7 and vh[0, :, 1].tolist() == [0] * 5 + [1] * 5 + [0] * 2
    assert (vs[0, :, :2].sum(-1) == 0.5).all()  # the soft span of speaker 0 is split, not copied
