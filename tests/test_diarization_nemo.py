"""Sortformer and TitaNet through NeMo's real code paths, on tiny randomly initialised models built
from the repo's reduced configs, saved as .nemo and loaded back (``restore_from``).

Random weights give arbitrary speakers, so the assertions are about shapes, schema, ranges, time
order and error paths, not about who spoke."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from server.core.audio import SAMPLE_RATE, to_wav_bytes
from tests.sidecar_fixtures import tiny_nemo, tone
from torch_models.diarization import DiarizationOptions, OptionError

# not ``pytest.importorskip("nemo.collections.asr")``: that imports NeMo's ASR collection at
# collection time, ~10 s of CPU in every pytest-xdist worker; the tests import it where they use it
pytestmark = pytest.mark.skipif(importlib.util.find_spec("nemo") is None, reason="nemo_toolkit is not installed")


@pytest.fixture(scope="module")
def nemo_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("nemo")
    return {kind: tiny_nemo(kind, root / f"{kind}.nemo") for kind in ("sortformer", "sortformer_streaming", "titanet")}


@pytest.fixture(scope="module")
def titanet(nemo_files):
    from torch_models.titanet import TitaNetEmbedder

    return TitaNetEmbedder(str(nemo_files["titanet"]))


@pytest.fixture(scope="module")
def sortformer(nemo_files, titanet):
    from torch_models.sortformer import SortformerDiarizer

    return SortformerDiarizer(str(nemo_files["sortformer"]), titanet)


def speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    """Two alternating "voices" (tones of different pitch) with noise: 16 kHz float32."""
    rng = np.random.default_rng(seed)
    half = seconds / 4
    parts = [tone(half, 180), tone(half, 320), tone(half, 180), tone(half, 320)]
    x = np.concatenate(parts)
    return (x + 0.02 * rng.standard_normal(x.shape)).astype(np.float32)


def test_real_diarize_returns_lines_and_probabilities(nemo_files):
    from nemo.collections.asr.models import SortformerEncLabelModel

    from torch_models.nemo_io import load_nemo_model

    model = load_nemo_model(SortformerEncLabelModel, str(nemo_files["sortformer"]))
    samples = speechlike(6.0)
    lines, probs = model.diarize(
        audio=[samples],
        sample_rate=SAMPLE_RATE,
        batch_size=1,
        num_workers=0,
        include_tensor_outputs=True,
        verbose=False,
    )
    assert isinstance(lines[0], list) and all(len(s.split()) == 3 for s in lines[0])
    p = probs[0]
    assert p.dtype.is_floating_point and p.shape[0] == 1 and p.shape[2] == 4
    # frame rate measured from the tensor, not assumed: 8x subsampling of 10 ms frames = 12.5 / s
    assert abs(p.shape[1] / 6.0 - 12.5) < 0.5
    assert float(p.min()) >= 0.0 and float(p.max()) <= 1.0


def test_save_restore_round_trip_is_identical(nemo_files, tmp_path):
    from nemo.collections.asr.models import SortformerEncLabelModel

    a = SortformerEncLabelModel.restore_from(str(nemo_files["sortformer"]), map_location="cpu")
    a.save_to(str(tmp_path / "again.nemo"))
    b = SortformerEncLabelModel.restore_from(str(tmp_path / "again.nemo"), map_location="cpu")
    x = speechlike(3.0)
    pa = a.diarize(audio=[x], sample_rate=SAMPLE_RATE, num_workers=0, include_tensor_outputs=True)[1][0]
    pb = b.diarize(audio=[x], sample_rate=SAMPLE_RATE, num_workers=0, include_tensor_outputs=True)[1][0]
    assert np.allclose(pa.numpy(), pb.numpy(), atol=1e-6)


def test_sortformer_diarizer_schema(sortformer):
    samples = speechlike(8.0)
    result = sortformer.diarize(samples, include_probabilities=True)
    assert result.duration == pytest.approx(8.0)
    assert result.models["backend"] == "sortformer" and "offline" in result.models["diarizer"]
    assert len(result.speakers) <= 4
    assert list(result.speakers) == [f"speaker_{i}" for i in range(len(result.speakers))]
    keys = [(t.start, t.end) for t in result.segments]
    assert keys == sorted(keys)
    for t in result.segments:
        assert 0.0 <= t.start < t.end <= 8.0
        assert t.confidence is not None and 0.0 <= t.confidence <= 1.0
    p = result.probabilities
    assert p.values.shape[1] == 4 and p.values.dtype == np.float32
    assert abs(p.frame_rate - 12.5) < 0.5
    assert p.speakers[: len(result.speakers)] == result.speakers
    # each fingerprint: 192-d, unit norm (TitaNet); speakers with too little own speech explained
    assert set(result.fingerprints) | set(result.fingerprint_notes) == set(result.speakers)
    for vec in result.fingerprints.values():
        assert len(vec) == 192 and abs(np.linalg.norm(vec) - 1) < 1e-4
    for note in result.fingerprint_notes.values():
        assert "0.5 s" in note


def test_sortformer_speaker_options(sortformer):
    samples = speechlike(8.0, seed=1)
    one = sortformer.diarize(samples, DiarizationOptions(num_speakers=1))
    assert len(one.speakers) <= 1
    assert all(t.confidence is not None for t in one.segments)
    with pytest.raises(OptionError) as info:
        sortformer.diarize(samples, DiarizationOptions(num_speakers=5))
    assert info.value.param == "num_speakers"
    many = sortformer.diarize(samples, DiarizationOptions(min_speakers=4))
    if len(many.speakers) < 4:
        assert any("fewer than" in w for w in many.warnings)


def test_streaming_sortformer_applies_chunk_settings(nemo_files, titanet):
    from torch_models.sortformer import SortformerDiarizer

    diarizer = SortformerDiarizer(
        str(nemo_files["sortformer_streaming"]),
        titanet,
        streaming={
            "chunk_len": 12,
            "chunk_right_context": 2,
            "fifo_len": 8,
            "spkcache_update_period": 10,
            "spkcache_len": 40,
        },
    )
    assert diarizer.streaming and diarizer.model.sortformer_modules.chunk_len == 12
    assert "chunk_len=12" in diarizer.describe()["streaming"]
    result = diarizer.diarize(speechlike(10.0), include_probabilities=True)
    assert abs(result.probabilities.frame_rate - 12.5) < 0.5
    assert all(0.0 <= t.confidence <= 1.0 for t in result.segments)


def test_titanet_get_embedding_and_segment_agree(nemo_files, titanet, tmp_path):
    x = speechlike(3.0)
    path = tmp_path / "clip.wav"
    path.write_bytes(to_wav_bytes(x))
    emb = titanet.model.get_embedding(str(path))
    assert tuple(emb.shape) == (1, 192)
    mine = titanet.embed(x)
    assert mine.shape == (192,) and mine.dtype == np.float32 and abs(np.linalg.norm(mine) - 1) < 1e-5
    ref = emb.detach().numpy().reshape(-1)
    assert float(mine @ (ref / np.linalg.norm(ref))) > 0.99  # 16-bit WAV rounding only
    assert titanet.embed(np.zeros(100, np.float32)).shape == (192,)  # very short clips are padded


def test_load_errors_name_the_setting(tmp_path):
    from nemo.collections.asr.models import SortformerEncLabelModel

    from torch_models.nemo_io import ModelLoadError, load_nemo_model

    with pytest.raises(ModelLoadError, match="--sortformer-model"):
        load_nemo_model(SortformerEncLabelModel, str(tmp_path / "missing.nemo"), setting="--sortformer-model")
