"""GPU bench (issue 15, item 5): transcripts equal to the CPU's on base, and RTFx by batch.

Runs the engine's functional backend (``WhisperEngine(backend="functional")``: jax, flax-free
weights, transformers' tokenizer; no EasyDeL, nothing fetched) on whatever ``jax.devices()[0]`` is:

1. **Equality.** Whisper base (the 7-bit pack of ``bench/gpu/pack.py``, unpacked) transcribes the
   packed clips in float32 with matmuls at full precision (``jax_default_matmul_precision=highest``,
   no TF32); each transcript (text, segment times, tokens) is compared with
   ``bench/gpu/reference-base.json``, which ``reference`` produced on a CPU from the same weights.
2. **RTFx by batch.** For base (real speech windows) and a random-weight model shaped like
   large-v3-turbo (d_model 1280, 32 encoder and 4 decoder layers, 20 heads, 128 mel bins, vocab
   51866; decoding capped at ``--turbo-tokens`` tokens per window since random weights seldom stop),
   in float32, bfloat16 and int8: ``B`` windows are submitted at once to an engine whose largest compiled
   batch is ``B``, so they run as one batch (each window encoded alone, decoded together, as the
   engine does); RTFx = audio seconds / wall seconds of that batch, log-mel included, best of
   ``--repeats``; then ``int8`` (``quantization="int8"``: int8 weights and per-row int8
   activations, ``functional.Int8Linear``) for both. The compile seconds of each executable are
   recorded beside.

Writes ``gpu-bench.json`` and ``gpu-bench.md`` under ``--out``; stops starting new measurements
once ``--budget-s`` is spent (what was skipped is listed). ``--cpu-smoke`` runs the same steps on
tiny sizes (batches 1 and 2, a small turbo-like model, short clips) to prove the script on a CPU.

    python -m bench.gpu.gpu_bench reference --model-dir /tmp/chorus-base     # on a CPU, once
    python -m bench.gpu.gpu_bench run --model-dir /tmp/chorus-base --out $OUT   # bench/gpu/run.sh
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from concurrent.futures import Future
from pathlib import Path

import numpy as np

REFERENCE = Path(__file__).with_name("reference-base.json")
TURBO_CONFIG = {
    "d_model": 1280,
    "encoder_layers": 32,
    "decoder_layers": 4,
    "encoder_attention_heads": 20,
    "decoder_attention_heads": 20,
    "encoder_ffn_dim": 5120,
    "decoder_ffn_dim": 5120,
    "num_mel_bins": 128,
    "vocab_size": 51866,
}
SMOKE_TURBO = {
    **TURBO_CONFIG,
    "d_model": 64,
    "encoder_layers": 2,
    "decoder_layers": 1,
    "encoder_attention_heads": 2,
    "decoder_attention_heads": 2,
    "encoder_ffn_dim": 128,
    "decoder_ffn_dim": 128,
}
SMOKE_CLIPS = ("pyannote_ami_dev00", "speechbrain_spk1_snt1")


def device_facts() -> dict:
    import jax

    d = jax.devices()[0]
    facts = {
        "platform": d.platform,
        "device": getattr(d, "device_kind", str(d)),
        "jax": jax.__version__,
        "python": platform.python_version(),
        "host": platform.node(),
    }
    from jax_models.compile_cache import cpu_description

    facts["cpu"] = cpu_description()  # machine | model | flags, as every bench result records
    return facts


def transcripts(engine, audio: dict[str, np.ndarray], names) -> dict:
    """``{clip: {"text", "segments": [[start, end, text, tokens], …]}}``: English, with timestamps,
    greedy with openai's temperature fallback (the engine's defaults)."""
    from jax_models.engine import TranscribeOptions

    out = {}
    for name in names:
        t = engine.transcribe(audio[name], TranscribeOptions(language="en"))
        out[name] = {"text": t.text, "segments": [[s.start, s.end, s.text, list(s.tokens)] for s in t.segments]}
    return out


def compare(got: dict, ref: dict) -> dict:
    """Per clip: ``equal`` (text, every segment's times and tokens), and the first difference."""
    rows = {}
    for name, want in ref.items():
        have = got.get(name)
        if have is None:
            continue
        diff = None
        if have["text"] != want["text"]:
            diff = {"cpu": want["text"], "device": have["text"]}
        elif have["segments"] != want["segments"]:
            i = next(i for i, (a, b) in enumerate(zip(have["segments"], want["segments"] + [None])) if a != b)
            diff = {
                "segment": i,
                "cpu": want["segments"][i] if i < len(want["segments"]) else None,
                "device": have["segments"][i] if i < len(have["segments"]) else None,
            }
        rows[name] = {"equal": diff is None, "difference": diff}
    return rows


def turbo_dir(base_dir: Path, out: Path, config: dict) -> Path:
    """A Hugging Face directory with base's tokenizer and a config of ``config``'s shapes (no weights)."""
    out.mkdir(parents=True, exist_ok=True)
    for f in base_dir.iterdir():
        if f.suffix == ".json":
            shutil.copy(f, out / f.name)
    cfg = json.loads((base_dir / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**cfg, **config}))
    pre = json.loads((base_dir / "preprocessor_config.json").read_text())
    (out / "preprocessor_config.json").write_text(json.dumps({**pre, "feature_size": config["num_mel_bins"]}))
    return out


def random_engine_class():
    """``WhisperEngine`` whose functional weights are random normals (std 0.02; LayerNorm scales 1)
    drawn on the device at the config's shapes, so no checkpoint travels."""
    from types import SimpleNamespace

    import jax
    import jax.numpy as jnp

    from bench.gpu.roofline import abstract_weights
    from jax_models.engine import WhisperEngine

    class RandomWeightsEngine(WhisperEngine):
        @staticmethod
        def _load_functional(model_path, jdtype):
            from transformers import WhisperConfig

            c = WhisperConfig.from_pretrained(model_path)
            dims = {
                "d_model": c.d_model,
                "encoder_layers": c.encoder_layers,
                "decoder_layers": c.decoder_layers,
                "heads": c.encoder_attention_heads,
                "num_mel_bins": c.num_mel_bins,
                "vocab_size": c.vocab_size,
                "ffn": c.encoder_ffn_dim,
            }
            shapes = abstract_weights(jdtype, dims)
            leaves, tree = jax.tree_util.tree_flatten_with_path(shapes)
            keys = jax.random.split(jax.random.PRNGKey(0), len(leaves))
            values = []
            for (path, leaf), key in zip(leaves, keys):
                name = str(getattr(path[-1], "key", ""))
                if name.endswith("_s"):
                    values.append(jnp.ones(leaf.shape, leaf.dtype))
                else:
                    values.append((0.02 * jax.random.normal(key, leaf.shape, jnp.float32)).astype(leaf.dtype))
            return SimpleNamespace(config=c), jax.tree_util.tree_unflatten(tree, values)

    return RandomWeightsEngine


def rtfx_by_batch(engine, windows: list[np.ndarray], batches, repeats: int, deadline: float) -> list[dict]:
    """RTFx of one batch of ``B`` windows for each ``B`` (ascending), see the module docstring."""
    from jax_models.engine import PREFIX_BUCKETS, CompiledShape, _Job

    prefix = engine.ids.task_tokens("en", "transcribe")
    bucket = next(p for p in PREFIX_BUCKETS if len(prefix) <= p)
    rows = []
    compile_s = engine._compile(CompiledShape("encode", 1))
    for B in sorted(batches):
        if time.monotonic() > deadline:
            rows.append({"batch": B, "skipped": "time budget spent"})
            continue
        shape_s = engine._compile(CompiledShape("decode", B, bucket))
        chosen = [windows[i % len(windows)] for i in range(B)]
        audio_s = sum(len(w) for w in chosen) / 16000

        def once(chosen=chosen):
            t0 = time.perf_counter()
            feats = engine.log_mel(chosen)
            futures = engine._submit_all([_Job("decode", f, prefix, 0.0, Future()) for f in feats])
            results = [f.result() for f in futures]
            return time.perf_counter() - t0, results

        once()  # the first run loads kernels and the batch's small executables
        walls, results = [], []
        for _ in range(repeats):
            wall, results = once()
            walls.append(wall)
        best = min(walls)
        rows.append(
            {
                "batch": B,
                "audio_s": round(audio_s, 2),
                "wall_s": round(best, 4),
                "rtfx": round(audio_s / best, 1),
                "walls_s": [round(w, 4) for w in walls],
                "tokens_per_window": round(float(np.mean([len(r.tokens) for r in results])), 1),
                "compile_s": {"encode B=1": round(compile_s, 2), f"decode B={B}": round(shape_s, 2)},
            }
        )
        compile_s = 0.0
    return rows


def windows_of(audio: dict[str, np.ndarray], names) -> list[np.ndarray]:
    """30 s windows (the engine's plan) of the named clips."""
    from server.core.windows import plan_windows

    return [audio[n][a:b] for n in names for a, b in plan_windows(audio[n])]


def run(args) -> dict:
    import jax

    from bench.gpu.pack import read_audio
    from jax_models.engine import WhisperEngine

    t_start = time.monotonic()
    deadline = t_start + args.budget_s
    smoke = args.cpu_smoke
    batches = (1, 2) if smoke else tuple(args.batches)
    audio = read_audio(args.model_dir)
    reference = json.loads(args.reference.read_text())
    result = {
        "facts": device_facts(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "equality": {},
        "rtfx": [],
        "skipped": [],
    }

    # 1. equality with the CPU on base, float32, full-precision matmuls
    names = [n for n in reference["clips"] if not smoke or n in SMOKE_CLIPS]
    jax.config.update("jax_default_matmul_precision", "highest")
    t0 = time.perf_counter()
    engine = WhisperEngine(str(args.model_dir), backend="functional", dtype="float32", batch_size=8)
    try:
        got = transcripts(engine, audio, names)
    finally:
        engine.close()
    jax.config.update("jax_default_matmul_precision", None)
    want = {n: reference["clips"][n]["transcript"] for n in names}
    result["equality"] = {
        "clips": compare(got, want),
        "seconds": round(time.perf_counter() - t0, 1),
        "reference_weights": reference["weights"],
    }
    result["equality"]["all_equal"] = all(r["equal"] for r in result["equality"]["clips"].values())
    write(args.out, result)
    print(f"equality with the CPU reference: {result['equality']['all_equal']} ({len(names)} clips)", flush=True)

    # 2. RTFx by batch
    base_windows = [
        w for w in windows_of(audio, [n for n in audio if n.startswith("pyannote_ami")]) if len(w) >= 20 * 16000
    ]  # whole windows only, not the 1.6 s ends of the 30 s clips
    turbo = turbo_dir(args.model_dir, args.work / "turbo-shaped", SMOKE_TURBO if smoke else TURBO_CONFIG)
    plans = [
        ("base", "float32"),
        ("large-v3-turbo-shaped (random)", "bfloat16"),
        ("base", "bfloat16"),
        ("large-v3-turbo-shaped (random)", "float32"),
        ("base", "int8"),
        ("large-v3-turbo-shaped (random)", "int8"),
    ]
    if smoke:  # every code path once: base, the random model, bfloat16, int8
        plans = [*plans[:2], plans[-1]]
    for model, dtype in plans:
        if time.monotonic() > deadline:
            result["skipped"].append(f"{model} {dtype}: time budget spent")
            continue
        t0 = time.perf_counter()
        quantization = "int8" if dtype == "int8" else "none"
        dtype_kw = {"dtype": "float32" if dtype == "int8" else dtype, "quantization": quantization}
        if model == "base":
            engine = WhisperEngine(
                str(args.model_dir),
                backend="functional",
                **dtype_kw,
                batch_size=max(batches),
                max_new_tokens=32 if smoke else 224,
            )
        else:
            engine = random_engine_class()(
                str(turbo),
                backend="functional",
                **dtype_kw,
                batch_size=max(batches),
                max_new_tokens=8 if smoke else args.turbo_tokens,
            )
        load_s = time.perf_counter() - t0
        try:
            rows = rtfx_by_batch(engine, base_windows, batches, args.repeats, deadline)
        finally:
            engine.close()
        for row in rows:
            row.update(model=model, dtype=dtype, load_s=round(load_s, 1))
            result["rtfx"].append(row)
            print(json.dumps(row), flush=True)
        write(args.out, result)  # a run stopped by its timeout keeps what it measured
    result["wall_s"] = round(time.monotonic() - t_start, 1)
    return result


def write(out: Path, result: dict) -> str:
    """``gpu-bench.json`` and ``gpu-bench.md`` under ``out`` (rewritten after every step)."""
    result.setdefault("wall_s", None)
    (out / "gpu-bench.json").write_text(json.dumps(result, indent=1, ensure_ascii=False))
    md = markdown(result)
    (out / "gpu-bench.md").write_text(md)
    return md


def markdown(result: dict) -> str:
    f = result["facts"]
    eq = result["equality"]
    lines = [
        f"# GPU bench: {f['device']} ({f['platform']}), jax {f['jax']}",
        "",
        f"Equality with the CPU reference (base, 7-bit pack {eq['reference_weights']}, float32, full-precision "
        f"matmuls): **{'all equal' if eq['all_equal'] else 'DIFFERENT'}** over {len(eq['clips'])} clips "
        f"({eq['seconds']} s).",
        "",
    ]
    for name, r in eq["clips"].items():
        if not r["equal"]:
            lines.append(f"- {name}: {json.dumps(r['difference'], ensure_ascii=False)[:400]}")
    lines += [
        "",
        "| model | dtype | batch | audio s | wall s | RTFx | tokens/window | compile s |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in result["rtfx"]:
        if "skipped" in r:
            lines.append(f"| {r['model']} | {r['dtype']} | {r['batch']} | | | skipped: {r['skipped']} | | |")
            continue
        comp = ", ".join(f"{k} {v}" for k, v in r["compile_s"].items() if v)
        lines.append(
            f"| {r['model']} | {r['dtype']} | {r['batch']} | {r['audio_s']} | {r['wall_s']} | "
            f"**{r['rtfx']}** | {r['tokens_per_window']} | {comp} |"
        )
    lines += ["", *(f"- skipped: {s}" for s in result["skipped"]), f"- wall: {result.get('wall_s')} s"]
    return "\n".join(lines) + "\n"


def reference(args) -> dict:
    """Transcribe every packed clip on this (CPU) host and write the reference JSON."""
    from bench.gpu.pack import audio_digest, read_audio, weights_digest
    from jax_models.engine import WhisperEngine

    audio = read_audio(args.model_dir)
    engine = WhisperEngine(str(args.model_dir), backend="functional", dtype="float32", batch_size=8)
    try:
        got = transcripts(engine, audio, sorted(audio))
    finally:
        engine.close()
    ref = {
        "about": "Whisper base (bench/gpu/pack.py 7-bit pack), float32, functional backend, on a CPU; "
        "written by `python -m bench.gpu.gpu_bench reference`",
        "facts": device_facts(),
        "weights": weights_digest(args.model_dir),
        "clips": {n: {"audio": audio_digest(audio[n]), "transcript": got[n]} for n in sorted(audio)},
    }
    args.out.write_text(json.dumps(ref, indent=1, ensure_ascii=False) + "\n")
    return ref


def main(argv=None) -> None:
    import logging

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--model-dir", type=Path, required=True, help="bench/gpu/pack.py unpack's directory")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--work", type=Path, default=Path("/tmp/chorus-gpu-bench"))
    r.add_argument("--reference", type=Path, default=REFERENCE)
    r.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64])
    r.add_argument("--repeats", type=int, default=2)
    r.add_argument("--turbo-tokens", type=int, default=128)
    r.add_argument("--budget-s", type=float, default=420.0)
    r.add_argument("--cpu-smoke", action="store_true", help="tiny sizes, to prove the script on a CPU")
    f = sub.add_parser("reference")
    f.add_argument("--model-dir", type=Path, required=True)
    f.add_argument("--out", type=Path, default=REFERENCE)
    args = ap.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(asctime)s %(name)s: %(message)s")
    if args.cmd == "reference":
        ref = reference(args)
        print(json.dumps({n: c["transcript"]["text"] for n, c in ref["clips"].items()}, indent=1))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    print(write(args.out, run(args)))


if __name__ == "__main__":
    main()
