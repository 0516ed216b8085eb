"""What the GPU bench needs that a bare GPU host lacks, packed under 64 MiB: Whisper base and audio.

A device host has jax, flax, transformers and torch but no network, and a call carries at most
64 MiB. Whisper base is 290 MB in float32 (145 MB in float16), so the pack stores each weight
matrix in 8-bit integers with one float32 scale per output row (absmax, values in ±63 so the
deflate-compressed pack stays near 50 MB), the small vectors in float32, the configs and tokenizer,
and the bench's audio (the clips of ../shared/data, decoded to 16 kHz int16). :func:`unpack` writes
an ordinary Hugging Face directory of the *dequantized* float32 weights: the CPU reference
transcripts (``bench/gpu/reference.py``) and the GPU run both read that same directory, so the
comparison is the engine on two devices over identical weights ("base, 7-bit weights").

    python -m bench.gpu.pack pack ~/.cache/chorus/models/whisper-base .gpu-carry/base.npz   # here
    python -m bench.gpu.pack unpack .gpu-carry/base.npz /tmp/chorus-base                   # anywhere
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

LEVELS = 63
"""Largest quantized magnitude (7 bits + sign held in int8)."""
MIN_QUANTIZED = 65536
"""Arrays with fewer elements stay float32."""
FILES = (
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)
CLIPS = (
    "pyannote_ami_dev00",
    "pyannote_ami_dev01",
    "pyannote_ami_trn00",
    "pyannote_ami_trn08",
    "lhotse_ljspeech_LJ002-0020",
    "speechbrain_spk1_snt1",
    "pocketsphinx_cards_002",
)
"""Real speech of ../shared/data (licences in its README): four 30 s meeting excerpts, three short clips."""


def quantize(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row absmax int8 of a float array ``(rows, …)``: ``(q int8 same shape, scale float32 (rows,))``."""
    rows = a.reshape(a.shape[0], -1).astype(np.float32)
    scale = np.abs(rows).max(axis=1) / LEVELS
    q = np.round(rows / np.where(scale > 0, scale, 1.0)[:, None]).astype(np.int8)
    return q.reshape(a.shape), scale.astype(np.float32)


def dequantize(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return (q.reshape(q.shape[0], -1).astype(np.float32) * scale[:, None]).reshape(q.shape)


def pack(model_dir: Path, out: Path, data_dir: Path = Path("/work/shared/data")) -> dict:
    """Write ``out`` (an ``.npz``) from a Hugging Face Whisper directory and the clips of ``data_dir``.

    Returns a summary: bytes, quantized arrays, clips.
    """
    from safetensors.numpy import load_file

    from server.core.audio import decode_audio

    arrays: dict[str, np.ndarray] = {}
    state = {k: v for f in sorted(model_dir.glob("*.safetensors")) for k, v in load_file(f).items()}
    if not state:
        raise FileNotFoundError(f"no *.safetensors in {model_dir}")
    for name, a in state.items():
        if a.size >= MIN_QUANTIZED and a.ndim >= 2:
            arrays["q/" + name], arrays["s/" + name] = quantize(a)
        else:
            arrays["f/" + name] = a.astype(np.float32)
    for fname in FILES:
        if (model_dir / fname).exists():
            arrays["file/" + fname] = np.frombuffer((model_dir / fname).read_bytes(), np.uint8)
    for clip in CLIPS:
        samples = decode_audio((data_dir / f"{clip}.wav").read_bytes())
        arrays["audio/" + clip] = np.round(np.clip(samples, -1, 1) * 32767).astype(np.int16)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    return {"bytes": out.stat().st_size, "quantized": sum(k.startswith("q/") for k in arrays), "clips": list(CLIPS)}


def unpack(pack_path: Path, out_dir: Path) -> dict[str, np.ndarray]:
    """Write the Hugging Face directory (float32 ``model.safetensors`` + configs) to ``out_dir``.

    Returns the audio clips ``{name: float32 samples at 16 kHz}``.
    """
    from safetensors.numpy import save_file

    z = np.load(pack_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    state, audio = {}, {}
    for key in z.files:
        kind, _, name = key.partition("/")
        if kind == "q":
            state[name] = dequantize(z[key], z["s/" + name])
        elif kind == "f":
            state[name] = z[key]
        elif kind == "file":
            (out_dir / name).write_bytes(z[key].tobytes())
        elif kind == "audio":
            audio[name] = z[key]
    save_file(state, str(out_dir / "model.safetensors"))
    np.savez(out_dir / "audio.npz", **audio)
    return read_audio(out_dir)


def read_audio(model_dir: Path) -> dict[str, np.ndarray]:
    """The clips :func:`unpack` wrote beside the model: ``{name: float32 samples at 16 kHz}``."""
    z = np.load(model_dir / "audio.npz")
    return {name: z[name].astype(np.float32) / 32767 for name in z.files}


def weights_digest(model_dir: Path) -> str:
    """sha256 (16 hex digits) of the unpacked ``model.safetensors``: the reference names the weights it used."""
    return hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()[:16]


def audio_digest(samples: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(samples, np.float32).tobytes()).hexdigest()[:16]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("model_dir", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--data-dir", type=Path, default=Path("/work/shared/data"))
    u = sub.add_parser("unpack")
    u.add_argument("pack", type=Path)
    u.add_argument("out_dir", type=Path)
    args = ap.parse_args(argv)
    if args.cmd == "pack":
        print(json.dumps(pack(args.model_dir, args.out, args.data_dir)))
    else:
        audio = unpack(args.pack, args.out_dir)
        print(
            json.dumps(
                {"model_dir": str(args.out_dir), "clips": sorted(audio), "weights": weights_digest(args.out_dir)}
            )
        )


if __name__ == "__main__":
    main()
