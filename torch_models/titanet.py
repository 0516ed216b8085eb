"""TitaNet speaker fingerprints (NeMo ``EncDecSpeakerLabelModel``).

Default weights: ``nvidia/speakerverification_en_titanet_large`` (23 M parameters, 192-d
embeddings, 16 kHz; model card: https://huggingface.co/nvidia/speakerverification_en_titanet_large).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from server.core.audio import SAMPLE_RATE
from torch_models.diarization import l2_normalize
from torch_models.nemo_io import import_nemo_asr, load_nemo_model

MIN_SAMPLES = SAMPLE_RATE // 10  # 0.1 s: shorter clips are padded (the encoder needs a few frames)


class TitaNetEmbedder:
    """Speech → unit-norm float32 ``(192,)`` fingerprint with a NeMo speaker model.

    Args:
        source: hub id or local ``.nemo`` path (``--titanet-model``).
        device: torch device string.
        model: an already loaded ``EncDecSpeakerLabelModel`` (tests); skips loading ``source``.

    Raises:
        ModelLoadError: the model could not be loaded.
    """

    def __init__(self, source: str, *, device: str = "cpu", model: Any = None) -> None:
        if model is None:
            import_nemo_asr()
            from nemo.collections.asr.models import EncDecSpeakerLabelModel

            model = load_nemo_model(EncDecSpeakerLabelModel, source, device=device, setting="--titanet-model")
        self.model = model.eval()
        self.name = source
        sizes = self.model.cfg.decoder.get("emb_sizes", 192)
        self.dim = int(sizes if isinstance(sizes, int) else list(sizes)[-1])
        self._lock = threading.Lock()

    def embed(self, samples: np.ndarray) -> np.ndarray:
        """float32 ``(n,)`` 16 kHz speech → unit-norm float32 ``(dim,)`` (``infer_segment``)."""
        samples = np.asarray(samples, dtype=np.float32)
        if samples.shape[0] < MIN_SAMPLES:
            samples = np.pad(samples, (0, MIN_SAMPLES - samples.shape[0]))
        with self._lock:
            emb, _logits = self.model.infer_segment(samples)
        return l2_normalize(emb.detach().cpu().numpy().reshape(-1).astype(np.float32))
