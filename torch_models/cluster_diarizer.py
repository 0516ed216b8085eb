"""The offline default diarizer: silero-vad regions → resemblyzer embeddings on sliding windows →
k-means over-clustering and centroid merging (automatic speaker count).

Every weight it needs ships inside a PyPI wheel, so it works on a machine that has never reached a
model hub:

- silero-vad 6.2.3 (``silero_vad/data/silero_vad.jit``, MIT; https://github.com/snakers4/silero-vad):
  speech probability every 32 ms.
- resemblyzer 0.1.4 (``resemblyzer/pretrained.pt``, 17 MB, Apache-2.0;
  https://github.com/resemble-ai/Resemblyzer): a GE2E speaker encoder (3-layer LSTM over 40 mel
  bands, 10 ms hop) giving unit-norm 256-d embeddings of 1.6 s partial utterances.
- scikit-learn ``KMeans`` on the unit-norm embeddings with too many clusters, then clusters merged
  while they are small or their centroids too similar (``ClusterDiarizer.cluster``).

Confidence of a segment: the mean over its frames of ``p × s``, where ``s`` is the cosine similarity
of the covering windows to their speaker's centroid (clipped to [0, 1]) and ``p`` the softmax
posterior of that speaker over all centroids (``exp(scale · cos)``). It is low where the
window embeddings sit between two speakers or far from any. This backend assigns one speaker per
frame: overlapped speech goes to the dominant voice.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np

from server.audio import SAMPLE_RATE
from server.transcript import SpeakerTurn
from torch_models.diarization import (
    DiarizationOptions,
    DiarizationResult,
    FrameProbabilities,
    SpeakerEmbedder,
    l2_normalize,
    relabel_by_first_appearance,
    speaker_fingerprints,
)

log = logging.getLogger("chorus.sidecar.cluster")

MEL_HOP_S = 0.01  # resemblyzer's mel hop (hparams.mel_window_step = 10 ms)


@dataclass(frozen=True)
class ClusterConfig:
    """Tuning of the clustering backend (seconds unless stated).

    The defaults were chosen on a two-voice espeak-ng conversation and the two AMI excerpts in
    ``../shared/data`` (see ``torch_models/eval_der.py``).
    """

    vad_threshold: float = 0.3  # silero speech probability for speech onset
    min_speech_s: float = 0.25  # shorter speech regions are dropped
    min_silence_s: float = 0.3  # shorter pauses do not split a region
    speech_pad_s: float = 0.1  # padding added around each region
    window_s: float = 1.5  # embedding window
    step_s: float = 0.25  # hop between windows
    min_window_s: float = 0.4  # shorter regions are not embedded on their own
    max_clusters: int = 8  # speakers considered when the count is not given
    merge_similarity: float = 0.84  # clusters whose centroids are more cosine-similar are one speaker
    min_cluster_fraction: float = 0.15  # automatic clusters with a smaller share of the windows …
    min_cluster_windows_cap: int = 40  # … or fewer than this many windows (10 s of speech) are folded
    posterior_scale: float = 10.0  # softmax sharpness for segment confidence
    frame_s: float = 0.05  # resolution of the output turns and probabilities
    min_turn_s: float = 0.25  # shorter turns inside a region are absorbed by their neighbour


class ResemblyzerEmbedder:
    """resemblyzer's ``VoiceEncoder``: speech → unit-norm float32 ``(256,)`` (GE2E, 1.6 s partials)."""

    name = "resemblyzer-0.1.4/pretrained.pt (GE2E, 256-d)"
    dim = 256

    def __init__(self, device: str = "cpu") -> None:
        from resemblyzer import VoiceEncoder

        self.encoder = VoiceEncoder(device=_torch_device(device), verbose=False)
        self._lock = threading.Lock()

    def mels(self, samples: np.ndarray) -> np.ndarray:
        """float32 ``(n,)`` 16 kHz → log-free mel frames ``(n_frames, 40)`` at 100 frames/s."""
        from resemblyzer.audio import wav_to_mel_spectrogram

        return wav_to_mel_spectrogram(np.asarray(samples, dtype=np.float32))

    def embed_mels(self, batch: np.ndarray) -> np.ndarray:
        """float32 ``(B, n_frames, 40)`` → unit-norm float32 ``(B, 256)``."""
        import torch

        with self._lock, torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.encoder.device)
            return self.encoder(x).cpu().numpy()

    def embed(self, samples: np.ndarray) -> np.ndarray:
        """float32 ``(n,)`` 16 kHz speech → unit-norm float32 ``(256,)``.

        Averages resemblyzer's 1.6 s partial embeddings (``embed_utterance``); clips shorter than
        one partial are embedded whole.
        """
        from resemblyzer.audio import normalize_volume

        wav = normalize_volume(np.asarray(samples, dtype=np.float32), -30, increase_only=True)
        with self._lock:
            emb = self.encoder.embed_utterance(wav)
        return l2_normalize(np.asarray(emb, dtype=np.float32))


class ClusterDiarizer:
    """silero-vad + resemblyzer + agglomerative clustering (see the module docstring)."""

    backend = "cluster"
    max_speakers = None

    def __init__(
        self,
        config: ClusterConfig = ClusterConfig(),
        *,
        embedder: SpeakerEmbedder | None = None,
        device: str = "cpu",
        min_fingerprint_s: float = 0.5,
    ) -> None:
        from server.chunking import SileroVad

        self.config = config
        self.window_embedder = ResemblyzerEmbedder(device)
        self.embedder = embedder or self.window_embedder
        self.min_fingerprint_s = min_fingerprint_s
        self.vad = SileroVad()
        self.vad.load()

    def describe(self) -> dict[str, str]:
        """Which backend and weights are loaded."""
        return {
            "backend": "cluster",
            "diarizer": "silero-vad 6.2.3 (bundled weights) + resemblyzer 0.1.4 windows + "
            "scikit-learn k-means over-clustering + centroid merging (automatic speaker count)",
            "embedder": self.embedder.name,
            "embedding_dim": str(self.embedder.dim),
        }

    # -- steps ---------------------------------------------------------------------------------

    def speech_regions(self, samples: np.ndarray) -> list[tuple[float, float]]:
        """silero-vad speech regions ``[(start_s, end_s), …]`` of float32 ``(n,)`` 16 kHz samples."""
        c = self.config
        stamps = self.vad.speech_timestamps(
            samples,
            threshold=c.vad_threshold,
            min_speech_ms=int(c.min_speech_s * 1000),
            min_silence_ms=int(c.min_silence_s * 1000),
            pad_ms=int(c.speech_pad_s * 1000),
        )
        return [(a / SAMPLE_RATE, b / SAMPLE_RATE) for a, b in stamps]

    def windows(self, regions: list[tuple[float, float]]) -> list[tuple[float, float]]:
        """Sliding windows ``(start_s, end_s)`` inside each region; a short region is one window."""
        c = self.config
        out: list[tuple[float, float]] = []
        for start, end in regions:
            length = end - start
            if length < c.min_window_s:
                continue
            if length <= c.window_s:
                out.append((start, end))
                continue
            n = int(np.ceil((length - c.window_s) / c.step_s)) + 1
            starts = np.linspace(start, end - c.window_s, n)
            out.extend((float(s), float(s) + c.window_s) for s in starts)
        return out

    def embed_windows(self, samples: np.ndarray, windows: list[tuple[float, float]]) -> np.ndarray:
        """Unit-norm float32 ``(len(windows), 256)``: one resemblyzer embedding per window."""
        from resemblyzer.audio import normalize_volume

        if not windows:
            return np.zeros((0, self.window_embedder.dim), np.float32)
        wav = normalize_volume(np.asarray(samples, dtype=np.float32), -30, increase_only=True)
        mels = self.window_embedder.mels(wav)  # (frames, 40), frame i starts at i * 10 ms
        spans = []
        for a, b in windows:
            i0 = min(int(round(a / MEL_HOP_S)), len(mels) - 1)
            spans.append((i0, min(max(int(round(b / MEL_HOP_S)), i0 + 1), len(mels))))
        out = np.zeros((len(windows), self.window_embedder.dim), np.float32)
        by_len: dict[int, list[int]] = {}  # windows of equal length are embedded as one batch
        for i, (a, b) in enumerate(spans):
            by_len.setdefault(b - a, []).append(i)
        for length, idx in by_len.items():
            batch = np.stack([mels[spans[i][0]: spans[i][0] + length] for i in idx])
            for j in range(0, len(idx), 64):
                out[idx[j: j + 64]] = self.window_embedder.embed_mels(batch[j: j + 64])
        return out

    def cluster(self, emb: np.ndarray, options: DiarizationOptions) -> tuple[np.ndarray, list[str]]:
        """Window embeddings ``(n, d)`` → integer labels ``(n,)`` and warnings.

        Over-cluster, then merge: k-means on the unit sphere with the largest allowed count
        (``max_clusters`` or the options' bound), then repeatedly fold the smallest cluster when it
        holds under ``min_cluster_fraction`` of the windows (at most ``min_cluster_windows_cap``),
        or else the most similar pair of centroids while their cosine similarity exceeds
        ``merge_similarity``, never going below the options' lower bound. A fixed ``num_speakers``
        skips the merging. The remaining centroids seed a final k-means pass.
        """
        from sklearn.cluster import KMeans

        c = self.config
        n = len(emb)
        warnings: list[str] = []
        lo, hi = options.bounds(max(n, 1))
        if options.num_speakers and options.num_speakers > n:
            warnings.append(f"only {n} speech windows: cannot find {options.num_speakers} speakers")
        if n < 2 or hi == 1:
            return np.zeros(n, dtype=int), warnings
        k = hi if lo == hi else min(hi, max(lo, min(c.max_clusters, n // 2)))
        k = min(k, n)
        labels = KMeans(n_clusters=k, n_init=10, random_state=0).fit(emb).labels_
        groups = [np.flatnonzero(labels == j) for j in range(k)]
        groups = [g for g in groups if g.size]
        while lo != hi and len(groups) > lo:
            cents = l2_normalize(np.stack([emb[g].mean(0) for g in groups]))
            sims = cents @ cents.T
            np.fill_diagonal(sims, -np.inf)
            sizes = np.array([g.size for g in groups])
            small = int(np.argmin(sizes))
            if sizes[small] < min(c.min_cluster_fraction * n, c.min_cluster_windows_cap):
                a, b = small, int(np.argmax(sims[small]))
            else:
                a, b = np.unravel_index(int(np.argmax(sims)), sims.shape)
                if sims[a, b] <= c.merge_similarity:
                    break
            groups[b] = np.concatenate([groups[b], groups[a]])
            del groups[a]
        k = len(groups)
        if k == 1:
            return np.zeros(n, dtype=int), warnings
        init = l2_normalize(np.stack([emb[g].mean(0) for g in groups]))
        labels = KMeans(n_clusters=k, init=init, n_init=1).fit(emb).labels_
        return labels.astype(int), warnings

    # -- the whole pipeline ----------------------------------------------------------------------

    def diarize(
        self,
        samples: np.ndarray,
        options: DiarizationOptions = DiarizationOptions(),
        *,
        include_probabilities: bool = False,
    ) -> DiarizationResult:
        """float32 ``(n,)`` 16 kHz samples → ``DiarizationResult`` (speakers ``speaker_0…``).

        Raises:
            OptionError: inconsistent speaker-count options.
        """
        options.validate()
        c = self.config
        samples = np.asarray(samples, dtype=np.float32)
        duration = samples.shape[0] / SAMPLE_RATE
        regions = self.speech_regions(samples)
        windows = self.windows(regions)
        emb = self.embed_windows(samples, windows)
        labels, warnings = self.cluster(emb, options)
        k = int(labels.max()) + 1 if len(labels) else 0

        n_frames = int(np.ceil(duration / c.frame_s))
        speech = np.zeros(n_frames, bool)
        for a, b in regions:
            speech[int(a / c.frame_s): int(np.ceil(b / c.frame_s))] = True
        post = np.zeros((n_frames, max(k, 1)), np.float32)  # posterior × similarity, per frame
        cover = np.zeros(n_frames, np.float32)
        if k:
            centroids = l2_normalize(np.stack([emb[labels == j].mean(0) for j in range(k)]))
            sims = emb @ centroids.T  # (n_windows, k)
            logits = c.posterior_scale * sims
            p = np.exp(logits - logits.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            score = p * np.clip(sims, 0.0, 1.0)
            for (a, b), row in zip(windows, score):
                i0, i1 = int(a / c.frame_s), int(np.ceil(b / c.frame_s))
                post[i0:i1] += row
                cover[i0:i1] += 1.0
            # speech frames that no window covers (very short regions, region edges) take the nearest window
            centers = np.array([(a + b) / 2 for a, b in windows])
            for i in np.flatnonzero(speech & (cover == 0)):
                j = int(np.argmin(np.abs(centers - (i + 0.5) * c.frame_s)))
                post[i] += score[j]
                cover[i] += 1.0
            post[cover > 0] /= cover[cover > 0, None]
        post[~speech] = 0.0

        turns = self._turns(post, speech, k)
        turns, mapping = relabel_by_first_appearance(turns)
        speakers = tuple(dict.fromkeys(t.speaker for t in turns))
        prints, notes = speaker_fingerprints(samples, turns, self.embedder, min_speech_s=self.min_fingerprint_s)
        if options.min_speakers and len(speakers) < options.min_speakers:
            warnings.append(f"found {len(speakers)} speakers, fewer than min_speakers={options.min_speakers}")
        probabilities = None
        if include_probabilities:
            order = {old: new for old, new in mapping.items()}
            cols = [int(old.split("_")[1]) for old in order]  # internal cluster index per output speaker
            values = post[:, cols] if cols else np.zeros((n_frames, 0), np.float32)
            probabilities = FrameProbabilities(1.0 / c.frame_s, tuple(order.values()), values.astype(np.float32))
        return DiarizationResult(
            segments=turns,
            speakers=speakers,
            duration=duration,
            models=self.describe(),
            fingerprints=prints,
            fingerprint_notes=notes,
            probabilities=probabilities,
            warnings=tuple(warnings),
        )

    def _turns(self, post: np.ndarray, speech: np.ndarray, k: int) -> list[SpeakerTurn]:
        """Frame scores ``(T, k)`` and the speech mask ``(T,)`` → turns labelled ``speaker_<cluster>``."""
        c = self.config
        if k == 0:
            return []
        label = np.where(speech, post.argmax(1), -1)
        min_frames = max(1, int(round(c.min_turn_s / c.frame_s)))
        label = _absorb_short_runs(label, min_frames)
        turns: list[SpeakerTurn] = []
        for start, end, lab in _runs(label):
            if lab < 0:
                continue
            conf = float(np.clip(post[start:end, lab].mean(), 0.0, 1.0))
            turns.append(SpeakerTurn(round(start * c.frame_s, 3), round(end * c.frame_s, 3), f"speaker_{lab}", conf))
        return turns


def _runs(label: np.ndarray) -> list[tuple[int, int, int]]:
    """Maximal runs ``(start, end, value)`` of equal values in a 1-d integer array."""
    if label.size == 0:
        return []
    cuts = np.flatnonzero(np.diff(label)) + 1
    starts = np.concatenate([[0], cuts])
    ends = np.concatenate([cuts, [label.size]])
    return [(int(s), int(e), int(label[s])) for s, e in zip(starts, ends)]


def _absorb_short_runs(label: np.ndarray, min_frames: int) -> np.ndarray:
    """Relabel speech runs shorter than ``min_frames`` that sit between speech of another speaker."""
    label = label.copy()
    runs = _runs(label)
    for i, (s, e, lab) in enumerate(runs):
        if lab < 0 or e - s >= min_frames:
            continue
        prev_lab = runs[i - 1][2] if i > 0 else -1
        next_lab = runs[i + 1][2] if i + 1 < len(runs) else -1
        neighbours = [(runs[i - 1][1] - runs[i - 1][0], prev_lab)] if prev_lab >= 0 else []
        if next_lab >= 0:
            neighbours.append((runs[i + 1][1] - runs[i + 1][0], next_lab))
        if neighbours:
            label[s:e] = max(neighbours)[1]
    return label


def _torch_device(device: str) -> str:
    """``"auto"`` → ``"cuda"`` when available else ``"cpu"``; anything else unchanged."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
