"""How fast XLA:CPU multiplies the encoder's largest matrices in fp32, bf16 and int8, side by side.

``python -m bench.xla_dot [--repeats 20] [--out DIR]``: one jitted ``(1500, 512) @ (512, 2048)``
product (Whisper base's encoder MLP on one 30 s window: 1500 frames, d_model 512, 4x wider MLP) in
float32, bfloat16 (float32 accumulation) and int8 (int32 accumulation), each timed ``repeats`` times
after one warm-up call, the three interleaved over ``rounds`` rounds. Prints GOP/s per dtype and
the ratio to float32, with the CPU model and flags (``bench.machine``); ``--out DIR`` writes
``result.json`` and ``table.md`` there (kind ``xla-dot``; a directory in ``bench/results`` also
updates its index).

Why (issue 15, item 2): faster-whisper runs int8 CTranslate2 GEMMs; whether an int8 encoder could
close Chorus's per-core gap on a CPU depends on XLA:CPU's int8 dot being faster than its fp32 one.
``--torch`` adds two rows outside XLA, interleaved in the same rounds: PyTorch's float32 product and
its dynamic int8 ``Linear`` (activations quantized per call, int8 weights; the ``x86`` quantized
engine, fbgemm's AVX2 / AVX-512 kernels), i.e. what an int8 GEMM outside XLA would give on this CPU.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench import report

M, K, N = 1500, 512, 2048  # frames of a 30 s window, base's d_model, its MLP width


def operands(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The product's float32 operands, ``(M, K)`` and ``(K, N)``, standard normal from ``seed``."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((M, K), np.float32), rng.standard_normal((K, N), np.float32)


def _xla_cases(a: np.ndarray, b: np.ndarray) -> dict[str, Callable[[], object]]:
    """One zero-argument call per XLA dtype, each running one product to completion."""
    import jax
    import jax.numpy as jnp

    dims = (((1,), (0,)), ((), ()))

    def case(fn, x, y) -> Callable[[], object]:
        return lambda: fn(x, y).block_until_ready()

    return {
        "float32": case(jax.jit(lambda x, y: x @ y), jnp.asarray(a), jnp.asarray(b)),
        "bfloat16": case(
            jax.jit(lambda x, y: jax.lax.dot_general(x, y, dims, preferred_element_type=jnp.float32)),
            jnp.asarray(a, jnp.bfloat16),
            jnp.asarray(b, jnp.bfloat16),
        ),
        "int8": case(
            jax.jit(lambda x, y: jax.lax.dot_general(x, y, dims, preferred_element_type=jnp.int32)),
            jnp.asarray(np.clip(a * 20, -127, 127).astype(np.int8)),
            jnp.asarray(np.clip(b * 20, -127, 127).astype(np.int8)),
        ),
    }


def _torch_cases(a: np.ndarray, b: np.ndarray) -> dict[str, Callable[[], object]]:
    """PyTorch's float32 product and its dynamic int8 ``Linear`` over the same matrices (outside XLA)."""
    import warnings

    import torch

    x, w = torch.from_numpy(a), torch.from_numpy(b)
    linear = torch.nn.Linear(K, N, bias=False)
    linear.weight.data = w.T.contiguous()
    with warnings.catch_warnings():  # torch 2.13 deprecates torch.ao.quantization for torchao, not on PyPI here
        warnings.simplefilter("ignore")
        int8 = torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(linear), {torch.nn.Linear}, dtype=torch.qint8)

    def run_int8() -> object:
        with torch.inference_mode():
            return int8(x)

    return {"torch float32": lambda: x @ w, f"torch int8 dynamic ({torch.backends.quantized.engine})": run_int8}


def measure(repeats: int = 20, rounds: int = 2, seed: int = 0, *, torch_rows: bool = False) -> dict[str, list[float]]:
    """Seconds per product, ``{row: [seconds per round]}`` for XLA's float32, bfloat16 and int8
    (and, with ``torch_rows``, PyTorch's float32 and dynamic int8).

    Each round times every row once (``repeats`` calls after a warm-up call), so drift in the
    machine's load falls on all of them alike.
    """
    a, b = operands(seed)
    cases = _xla_cases(a, b) | (_torch_cases(a, b) if torch_rows else {})
    out: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(rounds):
        for name, run in cases.items():
            run()
            t0 = time.perf_counter()
            for _ in range(repeats):
                run()
            out[name].append((time.perf_counter() - t0) / repeats)
    return out


def main(argv: list[str] | None = None) -> None:
    from bench.machine import machine_info

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", type=Path)
    p.add_argument("--torch", action="store_true", help="also PyTorch's float32 and dynamic int8 products")
    args = p.parse_args(argv)
    seconds = measure(args.repeats, args.rounds, torch_rows=args.torch)
    best = {k: min(v) for k, v in seconds.items()}
    ops = 2 * M * K * N
    rows = {
        k: {"ms": round(s * 1e3, 2), "gops": round(ops / s / 1e9, 1), "x_float32": round(best["float32"] / s, 2)}
        for k, s in best.items()
    }
    info = machine_info()
    print(f"CPU: {info['cpu']}, {info['cpu_logical_cores']} cores, flags {' '.join(info['cpu_flags'])}")
    print(f"({M}x{K} @ {K}x{N}, best of {args.rounds} rounds x {args.repeats} products)")
    for k, r in rows.items():
        print(f"{k:30s} {r['ms']:8.2f} ms  {r['gops']:7.1f} GOP/s  {r['x_float32']:.2f}x float32")
    if args.out:
        record = {
            "kind": "xla-dot",
            "name": args.out.name,
            "command": shlex.join(["python", "-m", "bench.xla_dot", *(sys.argv[1:] if argv is None else argv)]),
            "created": report.now_iso(),
            "shape": [M, K, N],
            "seconds": seconds,
            "best": rows,
            "machine": info,
        }
        report.write_result(args.out, record, table(rows))
        if args.out.resolve().parent == report.RESULTS_DIR.resolve():
            report.update_index()


def table(rows: dict[str, dict]) -> str:
    """The Markdown table of :func:`main`'s rows (``{dtype: {ms, gops, x_float32}}``)."""
    return report.markdown_table(
        ["dtype", "ms per product", "GOP/s", "x float32"],
        [(k, f"{r['ms']:.2f}", f"{r['gops']:.1f}", f"{r['x_float32']:.2f}") for k, r in rows.items()],
        "lrrr",
    )


if __name__ == "__main__":
    main()
