"""What bench/gpu/run.sh relies on, checked on the CPU: the pack (the functional backend against EasyDeL:
tests/test_engine.py::test_functional_word_timestamps_equal_easydel)."""

from __future__ import annotations

import json

import numpy as np


def test_pack_round_trip(tmp_path, tiny_whisper_dir):
    """Weights come back within half a quantization step per row, configs byte for byte, audio within 1/32767."""
    from safetensors.numpy import load_file

    from bench.gpu import pack

    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    from server.core.audio import to_wav_bytes

    clips = {name: (0.3 * rng.standard_normal(16000)).astype(np.float32) for name in pack.CLIPS}
    for name, samples in clips.items():
        (data / f"{name}.wav").write_bytes(to_wav_bytes(samples))
    summary = pack.pack(tiny_whisper_dir, tmp_path / "p.npz", data)
    assert summary["quantized"] > 0
    audio = pack.unpack(tmp_path / "p.npz", tmp_path / "out")
    before = load_file(tiny_whisper_dir / "model.safetensors")
    after = load_file(tmp_path / "out" / "model.safetensors")
    assert set(before) == set(after)
    for name, a in before.items():
        rows = a.reshape(a.shape[0], -1).astype(np.float32)
        step = np.abs(rows).max(axis=1, keepdims=True) / pack.LEVELS
        err = np.abs(after[name].reshape(rows.shape) - rows)
        assert np.all(err <= step / 2 + 1e-7), name
    assert json.loads((tmp_path / "out" / "config.json").read_text()) == json.loads(
        (tiny_whisper_dir / "config.json").read_text()
    )
    assert set(audio) == set(clips)
    from server.core.audio import decode_audio

    for name, samples in clips.items():
        want = decode_audio(to_wav_bytes(samples))
        assert np.max(np.abs(audio[name] - want)) <= 1.01 / 32767
