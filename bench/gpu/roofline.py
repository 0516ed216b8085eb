"""Roofline estimate of Whisper large-v3-turbo on an H100 from XLA's ``cost_analysis()``.

The jitted functions of ``jax_models.functional`` (the engine's encoder, cross-attention K/V and
one cached decode step) are lowered at large-v3-turbo's shapes over abstract weights
(``jax.ShapeDtypeStruct``: nothing is allocated), and XLA's HLO cost analysis gives the FLOPs and
bytes accessed of each. Each function's time on the device is bounded below by
``max(FLOPs / peak FLOP/s, bytes / memory bandwidth)``; RTFx follows for a batch of 30 s windows.

XLA counts the bytes of the *unoptimised* HLO (every op reads its operands and writes its
result, before fusion), an upper bound on memory traffic; the weights and caches each step must
read are the lower bound, computed here as well. The prediction is given for both.

    python -m bench.gpu.roofline [--batch 64] [--tokens 120] [--out bench/results/roofline-large-v3-turbo]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp

from jax_models import functional as fn

# large-v3-turbo (openai/whisper-large-v3-turbo config.json)
D_MODEL, ENC_LAYERS, DEC_LAYERS, HEADS, N_MELS, VOCAB, FFN = 1280, 32, 4, 20, 128, 51866, 5120
FRAMES, MAX_POS = 1500, 448
H100 = {"name": "H100 SXM", "flops": 989e12, "bandwidth": 3.35e12}  # bf16 dense, HBM3
WINDOW_S = 30.0
PREFIX = 8  # task tokens (the engine's smallest prefix bucket)
MAX_NEW = 224


TURBO = {
    "d_model": D_MODEL,
    "encoder_layers": ENC_LAYERS,
    "decoder_layers": DEC_LAYERS,
    "heads": HEADS,
    "num_mel_bins": N_MELS,
    "vocab_size": VOCAB,
    "ffn": FFN,
}


def abstract_weights(dtype=jnp.bfloat16, dims: dict = TURBO) -> dict:
    """``functional.whisper_weights``' pytree at ``dims`` (large-v3-turbo's by default), as
    ShapeDtypeStructs (``bench.gpu.gpu_bench`` fills them with random values)."""

    def s(*shape):
        return jax.ShapeDtypeStruct(shape, dtype)

    D_MODEL, FFN, N_MELS, VOCAB = dims["d_model"], dims["ffn"], dims["num_mel_bins"], dims["vocab_size"]
    ENC_LAYERS, DEC_LAYERS = dims["encoder_layers"], dims["decoder_layers"]

    def layer(cross: bool) -> dict:
        w = {}
        for name in ("sa_q", "sa_k", "sa_v", "sa_o") + (("ca_q", "ca_k", "ca_v", "ca_o") if cross else ()):
            w[name + "_w"] = s(D_MODEL, D_MODEL)
            if not name.endswith("_k"):
                w[name + "_b"] = s(D_MODEL)
        w.update(fc1_w=s(D_MODEL, FFN), fc1_b=s(FFN), fc2_w=s(FFN, D_MODEL), fc2_b=s(D_MODEL))
        for norm in ("sa_ln", "mlp_ln") + (("ca_ln",) if cross else ()):
            w[norm + "_s"], w[norm + "_b"] = s(D_MODEL), s(D_MODEL)
        return w

    encoder = {
        "conv1_w": s(3, N_MELS, D_MODEL),
        "conv1_b": s(D_MODEL),
        "conv2_w": s(3, D_MODEL, D_MODEL),
        "conv2_b": s(D_MODEL),
        "pos": s(FRAMES, D_MODEL),
        "ln_s": s(D_MODEL),
        "ln_b": s(D_MODEL),
        "layers": [layer(False) for _ in range(ENC_LAYERS)],
    }
    decoder = {
        "embed": s(VOCAB, D_MODEL),
        "pos": s(MAX_POS, D_MODEL),
        "ln_s": s(D_MODEL),
        "ln_b": s(D_MODEL),
        "proj": s(D_MODEL, VOCAB),
        "layers": [layer(True) for _ in range(DEC_LAYERS)],
    }
    return {"encoder": encoder, "decoder": decoder}


def nbytes(tree) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def cost(fun, *args) -> dict:
    """XLA's cost analysis of ``jax.jit(fun)`` lowered at ``args`` (abstract): flops, bytes."""
    analysis = jax.jit(fun).lower(*args).cost_analysis()
    if isinstance(analysis, list):  # older jax returns one dict per device
        analysis = analysis[0]
    return {"flops": float(analysis.get("flops", 0.0)), "bytes": float(analysis.get("bytes accessed", 0.0))}


def measure(batch: int, dtype=jnp.bfloat16) -> dict:
    # XLA's cost analysis counts a while loop's body once, so the encoder's tiled attention (a
    # lax.map over 60 tiles) would count 1/60 of its FLOPs: cost the same maths untiled.
    tiled, fn._attend_tiled = fn._attend_tiled, lambda q, k, v: fn._attend(q, k, v, None)
    try:
        return _measure(batch, dtype)
    finally:
        fn._attend_tiled = tiled


def _measure(batch: int, dtype) -> dict:
    w = abstract_weights(dtype)
    sds = jax.ShapeDtypeStruct
    mel = sds((1, N_MELS, 3000), jnp.float32)
    enc1 = sds((1, FRAMES, D_MODEL), dtype)
    S = PREFIX + MAX_NEW
    hd = D_MODEL // HEADS

    def kv(n):
        return tuple(sds((batch, HEADS, n, hd), dtype) for _ in range(DEC_LAYERS))

    cache = fn.KVCache(kv(S), kv(S), sds((batch, S), jnp.bool_), kv(FRAMES), kv(FRAMES))

    def step(w, cache, tokens, positions, start):
        hidden, cache = fn.forward(w, cache, tokens, positions, start, jnp.ones(tokens.shape, bool), HEADS)
        return fn.logits(w, hidden[:, 0]), cache

    out = {
        "encoder_window": cost(lambda w, m: fn.encode(w, m, HEADS), w["encoder"], mel),
        "cross_kv_window": cost(lambda w, e: fn.cross_kv(w, e, HEADS), w["decoder"], enc1),
        "decode_step_batch": cost(
            step, w["decoder"], cache, sds((batch, 1), jnp.int32), sds((batch, 1), jnp.int32), sds((), jnp.int32)
        ),
    }
    itemsize = jnp.dtype(dtype).itemsize
    dec_weights = nbytes(w["decoder"]) - nbytes(w["decoder"]["embed"]) + batch * D_MODEL * itemsize  # rows gathered
    caches = nbytes(cache)
    out["minimum_bytes"] = {
        "encoder_window": nbytes(w["encoder"]) + N_MELS * 3000 * 4 + FRAMES * D_MODEL * itemsize,
        "cross_kv_window": sum(nbytes([lw["ca_k_w"], lw["ca_v_w"]]) for lw in w["decoder"]["layers"])
        + FRAMES * D_MODEL * itemsize * (1 + 2 * DEC_LAYERS),
        "decode_step_batch": dec_weights + caches,
    }
    out["batch"] = batch
    return out


def predict(m: dict, tokens_per_window: float, device: dict = H100) -> dict:
    """Seconds per 30 s window and RTFx at ``m['batch']``, with XLA's bytes and with the minimum bytes."""
    B = m["batch"]
    res = {}
    for label, pick in (("xla_bytes", lambda k: m[k]["bytes"]), ("minimum_bytes", lambda k: m["minimum_bytes"][k])):

        def t(k, pick=pick):
            return max(m[k]["flops"] / device["flops"], pick(k) / device["bandwidth"])

        per_window = t("encoder_window") + t("cross_kv_window") + tokens_per_window * t("decode_step_batch") / B
        res[label] = {
            "encoder_s": t("encoder_window"),
            "cross_kv_s": t("cross_kv_window"),
            "decode_step_s": t("decode_step_batch"),
            "seconds_per_window": per_window,
            "rtfx": WINDOW_S / per_window,
            "encoder_bound": "compute"
            if m["encoder_window"]["flops"] / device["flops"] >= pick("encoder_window") / device["bandwidth"]
            else "memory",
            "decode_bound": "compute"
            if m["decode_step_batch"]["flops"] / device["flops"] >= pick("decode_step_batch") / device["bandwidth"]
            else "memory",
        }
    return res


def markdown(results: dict) -> str:
    rows = [
        "| function (bf16) | GFLOP | GB accessed (XLA, unfused) | GB minimum | arithmetic intensity (FLOP/B, minimum) |",
        "|---|---:|---:|---:|---:|",
    ]
    for b, m in results["measured"].items():
        for k in ("encoder_window", "cross_kv_window", "decode_step_batch"):
            name = k if k != "decode_step_batch" else f"decode step, batch {b}"
            if k != "decode_step_batch" and b != max(results["measured"]):
                continue
            rows.append(
                f"| {name} | {m[k]['flops'] / 1e9:.1f} | {m[k]['bytes'] / 1e9:.3f} | "
                f"{m['minimum_bytes'][k] / 1e9:.3f} | {m[k]['flops'] / m['minimum_bytes'][k]:.0f} |"
            )
    rows += [
        "",
        f"Prediction on {H100['name']} ({H100['flops'] / 1e12:.0f} TFLOP/s bf16 dense, "
        f"{H100['bandwidth'] / 1e12:.2f} TB/s), {results['tokens_per_window']:g} tokens per 30 s window:",
        "",
        "| batch | bytes counted | encoder ms/window | cross K/V ms/window | decode step ms | s per window | RTFx |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for b, p in results["prediction"].items():
        for label, r in p.items():
            rows.append(
                f"| {b} | {label.replace('_', ' ')} | {r['encoder_s'] * 1e3:.2f} ({r['encoder_bound']}) | "
                f"{r['cross_kv_s'] * 1e3:.3f} | {r['decode_step_s'] * 1e3:.3f} ({r['decode_bound']}) | "
                f"{r['seconds_per_window'] * 1e3:.2f} ms | {r['rtfx']:.0f} |"
            )
    return "\n".join(rows)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    ap.add_argument(
        "--tokens",
        type=float,
        default=120.0,
        help="sampled tokens per 30 s window (speech at ~150 wpm: ~75 words ≈ 100 tokens + timestamps)",
    )
    ap.add_argument("--out", type=Path, default=None, help="write <out>.json and <out>.md")
    args = ap.parse_args(argv)
    measured = {b: measure(b) for b in args.batch}
    results = {
        "model": "large-v3-turbo shapes (d 1280, 32+4 layers, 20 heads, 128 mels, vocab 51866), bf16",
        "device": H100,
        "tokens_per_window": args.tokens,
        "jax": jax.__version__,
        "measured": measured,
        "prediction": {b: predict(m, args.tokens) for b, m in measured.items()},
    }
    md = markdown(results)
    print(md)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(results, indent=2, default=str))
        args.out.with_suffix(".md").write_text(md + "\n")


if __name__ == "__main__":
    main()
