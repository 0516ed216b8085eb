"""Sortformer end-to-end diarization (NeMo ``SortformerEncLabelModel``) with per-segment confidence.

Weights: ``nvidia/diar_sortformer_4spk-v1`` (offline, 123 M parameters, up to 4 speakers, 90 s
sessions; https://huggingface.co/nvidia/diar_sortformer_4spk-v1) or
``nvidia/diar_streaming_sortformer_4spk-v2`` (streaming with a speaker cache, for long audio;
https://huggingface.co/nvidia/diar_streaming_sortformer_4spk-v2), by hub id or local ``.nemo``.

The model emits one sigmoid per speaker per 80 ms frame (8× subsampling of 10 ms mel frames).
NeMo turns them into ``"start end speaker_k"`` strings; each segment's ``confidence`` here is the
mean probability of its speaker over the frames it covers, with the frame rate measured as
``n_frames / duration`` rather than assumed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from server.core.audio import SAMPLE_RATE
from server.core.transcript import SpeakerTurn
from torch_models.diarization import (
    DiarizationOptions,
    DiarizationResult,
    FrameProbabilities,
    SpeakerEmbedder,
    merge_intervals,
    relabel_by_first_appearance,
    sort_turns,
    speaker_fingerprints,
    speakers_of,
)
from torch_models.nemo_io import import_nemo_asr, load_nemo_model

log = logging.getLogger("chorus.sidecar.sortformer")

STREAMING_FIELDS = ("chunk_len", "chunk_right_context", "fifo_len", "spkcache_update_period", "spkcache_len")


def parse_segment_lines(lines: Sequence[str], duration: float | None = None) -> list[SpeakerTurn]:
    """NeMo's ``"start end speaker_k"`` strings → turns (confidence None), clipped to ``duration``.

    Raises:
        ValueError: a line that does not have three fields with two numbers.
    """
    turns = []
    for line in lines:
        parts = line.split()
        if len(parts) != 3:
            raise ValueError(f"unexpected Sortformer segment line: {line!r}")
        start, end = float(parts[0]), float(parts[1])
        if duration is not None:
            start, end = max(0.0, min(start, duration)), max(0.0, min(end, duration))
        if end > start:
            turns.append(SpeakerTurn(start, end, parts[2]))
    return sort_turns(turns)


def frame_span(start: float, end: float, frame_rate: float, n_frames: int) -> slice:
    """Frames ``[floor(start·rate), ceil(end·rate))`` clipped to ``[0, n_frames)``, at least one frame."""
    i0 = min(max(int(np.floor(start * frame_rate)), 0), max(n_frames - 1, 0))
    i1 = min(max(int(np.ceil(end * frame_rate)), i0 + 1), n_frames)
    return slice(i0, i1)


def speaker_index(label: str) -> int:
    """``"speaker_3"`` → 3."""
    return int(label.rsplit("_", 1)[1])


def with_confidence(turns: Sequence[SpeakerTurn], probs: np.ndarray | None, duration: float) -> list[SpeakerTurn]:
    """Set each turn's confidence to its speaker's mean probability over the turn's frames.

    Args:
        turns: turns labelled ``speaker_<k>`` (k indexes ``probs``' columns).
        probs: float32 ``(n_frames, n_speakers)`` sigmoid outputs, or None.
        duration: audio seconds that the ``n_frames`` cover (frame rate = n_frames / duration).

    Returns:
        The turns, confidence in [0, 1], or None where it cannot be computed (no probabilities,
        zero duration, or a speaker index outside the columns).
    """
    if probs is None or probs.ndim != 2 or probs.shape[0] == 0 or duration <= 0:
        return [SpeakerTurn(t.start, t.end, t.speaker, None) for t in turns]
    rate = probs.shape[0] / duration
    out = []
    for t in turns:
        k = speaker_index(t.speaker)
        conf = None
        if 0 <= k < probs.shape[1]:
            conf = float(np.clip(probs[frame_span(t.start, t.end, rate, probs.shape[0]), k].mean(), 0.0, 1.0))
        out.append(SpeakerTurn(t.start, t.end, t.speaker, conf))
    return out


def restrict_speakers(
    turns: Sequence[SpeakerTurn], probs: np.ndarray | None, duration: float, keep: int
) -> list[SpeakerTurn]:
    """Keep the ``keep`` most active speakers; give every turn of the others to the kept speaker
    with the highest mean probability over that turn (or the most active one without probabilities).
    Overlapping or touching turns of one speaker are merged afterwards; confidences are recomputed.
    """
    activity: dict[str, float] = {}
    for t in turns:
        activity[t.speaker] = activity.get(t.speaker, 0.0) + t.end - t.start
    if len(activity) <= keep:
        return list(turns)
    kept = sorted(activity, key=lambda s: -activity[s])[:keep]
    kept_idx = [speaker_index(s) for s in kept]
    rate = probs.shape[0] / duration if probs is not None and duration > 0 else None
    moved: dict[str, list[tuple[float, float]]] = {s: [] for s in kept}
    for t in turns:
        target = t.speaker
        if target not in moved:
            if rate is not None:
                span = frame_span(t.start, t.end, rate, probs.shape[0])
                target = kept[int(np.argmax(probs[span][:, kept_idx].mean(0)))]
            else:
                target = kept[0]
        moved[target].append((t.start, t.end))
    merged = [SpeakerTurn(a, b, s) for s, spans in moved.items() for a, b in merge_intervals(spans)]
    return with_confidence(merged, probs, duration)


class SortformerDiarizer:
    """Sortformer diarization + a speaker embedder for fingerprints (TitaNet by default).

    Args:
        source: hub id or ``.nemo`` path (``--sortformer-model``).
        embedder: fingerprints for each speaker (``TitaNetEmbedder``).
        device: torch device.
        postprocessing_yaml: NeMo post-processing parameters (onset, offset, pads, min durations).
        streaming: for a streaming model, overrides of ``sortformer_modules`` (``chunk_len``,
            ``chunk_right_context``, ``fifo_len``, ``spkcache_update_period``, ``spkcache_len``, in
            80 ms frames); ignored for offline models.
        model: an already loaded model (tests); skips loading ``source``.
        min_fingerprint_s: least own speech for a fingerprint.

    Raises:
        ModelLoadError: the model could not be loaded.
    """

    backend = "sortformer"

    def __init__(
        self,
        source: str,
        embedder: SpeakerEmbedder,
        *,
        device: str = "cpu",
        postprocessing_yaml: str | None = None,
        streaming: dict[str, int] | None = None,
        batch_size: int = 1,
        model: Any = None,
        min_fingerprint_s: float = 0.5,
    ) -> None:
        if model is None:
            import_nemo_asr()
            from nemo.collections.asr.models import SortformerEncLabelModel

            model = load_nemo_model(SortformerEncLabelModel, source, device=device, setting="--sortformer-model")
        self.model = model.eval()
        self.source = source
        self.embedder = embedder
        self.postprocessing_yaml = postprocessing_yaml
        self.batch_size = batch_size
        self.min_fingerprint_s = min_fingerprint_s
        self.max_speakers = int(self.model.cfg.max_num_of_spks)
        self.streaming = bool(getattr(self.model, "streaming_mode", False))
        if self.streaming and streaming:
            modules = self.model.sortformer_modules
            for name, value in streaming.items():
                if name not in STREAMING_FIELDS:
                    raise ValueError(f"unknown streaming setting {name!r}")
                setattr(modules, name, int(value))
            modules._check_streaming_parameters()
        self._lock = threading.Lock()

    def describe(self) -> dict[str, str]:
        """Which backend and weights are loaded."""
        kind = "streaming" if self.streaming else "offline"
        info = {
            "backend": "sortformer",
            "diarizer": f"{self.source} (Sortformer, {kind}, up to {self.max_speakers} speakers)",
            "embedder": self.embedder.name,
            "embedding_dim": str(self.embedder.dim),
        }
        if self.streaming:
            m = self.model.sortformer_modules
            info["streaming"] = ", ".join(f"{f}={getattr(m, f)}" for f in STREAMING_FIELDS)
        return info

    def run_model(self, samples: np.ndarray) -> tuple[list[str], np.ndarray]:
        """NeMo ``diarize(..., include_tensor_outputs=True)`` on one clip.

        Returns:
            ``(lines, probs)``: ``"start end speaker_k"`` strings and float32 ``(n_frames, n_speakers)``.
        """
        with self._lock:
            lines, preds = self.model.diarize(
                audio=[np.asarray(samples, dtype=np.float32)],
                sample_rate=SAMPLE_RATE,
                batch_size=self.batch_size,
                num_workers=0,
                include_tensor_outputs=True,
                postprocessing_yaml=self.postprocessing_yaml,
                verbose=False,
            )
        probs = preds[0].detach().cpu().float().numpy()
        return list(lines[0]), probs.reshape(probs.shape[-2], probs.shape[-1])

    def diarize(
        self,
        samples: np.ndarray,
        options: DiarizationOptions = DiarizationOptions(),
        *,
        include_probabilities: bool = False,
    ) -> DiarizationResult:
        """float32 ``(n,)`` 16 kHz samples → ``DiarizationResult``.

        ``num_speakers``/``max_speakers`` keep the most active speakers and reassign the rest;
        ``min_speakers`` above what the model found only adds a warning (Sortformer cannot be
        asked for more speakers).

        Raises:
            OptionError: a required speaker count above the model's 4.
        """
        options.validate(limit=self.max_speakers)
        samples = np.asarray(samples, dtype=np.float32)
        duration = samples.shape[0] / SAMPLE_RATE
        lines, probs = self.run_model(samples)
        turns = with_confidence(parse_segment_lines(lines, duration), probs, duration)
        warnings: list[str] = []
        cap = options.num_speakers or options.max_speakers
        if cap is not None and len(speakers_of(turns)) > cap:
            turns = restrict_speakers(turns, probs, duration, cap)
        turns, mapping = relabel_by_first_appearance(turns)
        speakers = speakers_of(turns)
        lo = options.num_speakers or options.min_speakers
        if lo and len(speakers) < lo:
            warnings.append(f"Sortformer found {len(speakers)} speakers, fewer than the {lo} requested")
        prints, notes = speaker_fingerprints(samples, turns, self.embedder, min_speech_s=self.min_fingerprint_s)
        probabilities = None
        if include_probabilities:
            cols = [speaker_index(old) for old in mapping]  # in new-label order
            rest = [k for k in range(probs.shape[1]) if k not in cols]
            labels = list(mapping.values()) + [f"inactive_{k}" for k in rest]
            probabilities = FrameProbabilities(
                probs.shape[0] / duration if duration > 0 else 0.0,
                tuple(labels),
                probs[:, cols + rest].astype(np.float32),
            )
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
