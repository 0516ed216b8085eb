"""Shared fixtures: tiny and real Whisper models, apps, and OpenAI clients over ASGI."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.speech import espeak, have_espeak

SENTENCE = "The quick brown fox jumps over the lazy dog. I would like a cup of hot coffee, please."


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One Chorus cache for the session (imported models, XLA cache)."""
    return tmp_path_factory.mktemp("chorus-cache")


@pytest.fixture(scope="session")
def base_model_dir(cache_dir) -> Path:
    """The embedded Whisper base, imported from its CTranslate2 files into HF format."""
    from jax_models.ct2_import import resolve_model

    return Path(resolve_model("base", cache_dir, progress=False))


@pytest.fixture(scope="session")
def tiny_whisper_dir(tmp_path_factory) -> Path:
    """A randomly initialised 1-layer Whisper (d_model 64) with base's tokenizer and configs.

    Only the embedded base's vocabulary and configs are read (``write_configs``), not its weights:
    the tiny-model tests do not pay for importing the real model.
    """
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from jax_models.ct2_import import WhisperDims, embedded_ct2_dirs, write_configs

    out = tmp_path_factory.mktemp("tiny-whisper")
    dims = WhisperDims(n_mels=80, d_model=64, encoder_layers=1, decoder_layers=1, encoder_heads=2, decoder_heads=2,
                       encoder_ffn_dim=128, decoder_ffn_dim=128, vocab_size=51865, max_source_positions=1500,
                       max_target_positions=448)
    write_configs(embedded_ct2_dirs("base"), out, dims)
    torch.manual_seed(0)
    WhisperForConditionalGeneration(WhisperConfig.from_pretrained(out)).save_pretrained(out)
    write_configs(embedded_ct2_dirs("base"), out, dims)  # save_pretrained wrote a bare generation config
    return out


@pytest.fixture(scope="session")
def tiny_engine(tiny_whisper_dir):
    """A warmed-up engine on the tiny model, batch buckets 1 and 2."""
    from jax_models.engine import WhisperEngine

    engine = WhisperEngine(str(tiny_whisper_dir), batch_size=2, max_new_tokens=32)
    engine.warmup()
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def base_engine(base_model_dir):
    """The real embedded base model (fp32, batch 1), warmed up."""
    from jax_models.engine import WhisperEngine

    engine = WhisperEngine(str(base_model_dir), batch_size=2)
    engine.warmup()
    yield engine
    engine.close()


def make_client(app):
    """An unmodified ``openai.AsyncOpenAI`` talking to ``app`` in-process over ASGI."""
    from openai import AsyncOpenAI

    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://chorus.test")
    return AsyncOpenAI(base_url="http://chorus.test/v1", api_key="sk-test", http_client=http, max_retries=0)


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory) -> Path:
    """``SENTENCE`` spoken by espeak-ng (22050 Hz WAV)."""
    if not have_espeak():
        pytest.skip("espeak-ng is not installed (make test installs it)")
    return espeak(SENTENCE, tmp_path_factory.mktemp("speech") / "sentence.wav")


@pytest.fixture(scope="session")
def speech_samples(speech_wav) -> np.ndarray:
    from server.audio import decode_audio

    return decode_audio(speech_wav.read_bytes())


@pytest.fixture(scope="session")
def imported_base(base_model_dir) -> Path:
    """The embedded Whisper base as a Hugging Face checkpoint dir (same import as ``base_model_dir``).

    Float32 safetensors, configs, tokenizer and feature extractor; ``path.parent.parent`` is the
    session's cache dir. Costs ~5 s the first time the session uses it.
    """
    return base_model_dir
