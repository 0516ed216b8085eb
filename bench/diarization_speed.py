"""A/B speed of the sidecar's offline diarizer (segmentation-3.0 + CAM++) at several CAM++ batch
sizes, interleaved in one process, with the check that batching changes no result.

    python -m bench.diarization_speed --clips dev00,dev01,espeak305 --batches 1,32 --rounds 3 --threads 1

Each round runs every batch size once per clip, in alternating order (A B, then B A, ...), so a
change of machine load hits both sides alike. Per run: wall seconds of ``diarize`` (both networks,
clustering, reconstruction, fingerprints), of which CAM++ on the (chunk, piece) embeddings (the
time inside ``embed_features`` / ``embed_features_batch`` during ``analyse``) and the rest of
``analyse`` (mostly segmentation-3.0); and the same in process CPU seconds, which other jobs
time-sliced onto the same core disturb less than wall time. Then, against the first batch size: the smallest cosine
between the two runs' embeddings, whether the turns are identical, and DER (collar 0.25 s) where
the clip has a reference. Clips: as ``bench.diarization_der`` (AMI names in ``../shared/data``,
``espeak305``). Writes ``result.json`` and ``table.md`` to ``--out``.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
import numpy as np


class _Timed:
    """Wraps the embedder's piece-embedding methods to add their wall time to ``seconds``."""

    def __init__(self, embedder) -> None:
        self.seconds = 0.0
        self.cpu_seconds = 0.0
        self.calls = 0
        self.frames: list[int] = []  # frames of each piece embedded
        for name in ("embed_features", "embed_features_batch"):
            setattr(self, name, self._wrap(getattr(embedder, name)))
        self.dim = embedder.dim

    def _wrap(self, fn):
        def timed(pieces, *args, **kwargs):
            self.frames += [int(p.shape[0]) for p in pieces] if isinstance(pieces, list) else [int(pieces.shape[0])]
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return fn(pieces, *args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0
                self.cpu_seconds += time.process_time() - c0
                self.calls += 1

        return timed


@click.command()
@click.option("--clips", default="dev00,dev01,espeak305", show_default=True, help="AMI clip names and/or espeak305.")
@click.option(
    "--batches",
    default="1,32",
    show_default=True,
    help="CAM++ batch sizes to compare (1: unbatched), each optionally /FRAMES (padded frames per batch).",
)
@click.option("--rounds", type=int, default=3, show_default=True)
@click.option("--threads", type=int, default=1, show_default=True, help="torch threads.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Result folder.")
def main(clips: str, batches: str, rounds: int, threads: int, out: Path) -> None:
    """Print one line per run and a summary per clip; write result.json and table.md."""
    import torch

    torch.set_num_threads(threads)
    import torch_models.pyannote_diarizer as pd
    from bench.diarization_der import DATA, load_case
    from bench.eval_der import der
    from bench.machine import cpu_model
    from torch_models.service import build_diarizer
    from torch_models.settings import SidecarSettings

    diarizer = build_diarizer(SidecarSettings())
    base = diarizer.config
    sizes = [b.strip() for b in batches.split(",")]

    def config(b: str):
        size, _, frames = b.partition("/")
        return replace(
            base, embedding_batch_size=int(size), **({"embedding_batch_frames": int(frames)} if frames else {})
        )

    names = [c.strip() for c in clips.split(",") if c.strip()]
    original = pd.chunk_embeddings
    timer: dict[str, _Timed] = {}

    def timed_chunk_embeddings(embedder, *args, **kwargs):
        timer["t"] = _Timed(embedder)
        return original(timer["t"], *args, **kwargs)

    pd.chunk_embeddings = timed_chunk_embeddings  # type: ignore[assignment]
    diarizer.diarize(np.zeros(16000, np.float32))  # first-call costs out of the timings
    runs: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    lengths: dict[str, np.ndarray] = {}
    for name in names:
        samples, ref, uem = load_case(name, DATA)
        first: dict = {}
        for r in range(rounds):
            for b in sizes if r % 2 == 0 else sizes[::-1]:
                diarizer.config = config(b)
                t0, c0 = time.perf_counter(), time.process_time()
                analysis = diarizer.analyse(samples)
                t1 = time.perf_counter()
                result = diarizer.finish(samples, analysis)
                t2, c2 = time.perf_counter(), time.process_time()
                campp = timer["t"].seconds
                row = {
                    "clip": name,
                    "round": r,
                    "batch": b,
                    "audio_s": round(len(samples) / 16000, 2),
                    "wall_s": round(t2 - t0, 3),
                    "campp_s": round(campp, 3),
                    "cpu_s": round(c2 - c0, 3),
                    "campp_cpu_s": round(timer["t"].cpu_seconds, 3),
                    "analyse_rest_s": round(t1 - t0 - campp, 3),
                    "finish_s": round(t2 - t1, 3),
                    "rtfx": round(len(samples) / 16000 / (t2 - t0), 2),
                    "pieces": int((~np.isnan(analysis.embeddings).any(axis=-1)).sum()),
                    "speakers": len(result.speakers),
                }
                row["der_c0.25"] = round(der(ref, result.segments, uem=uem, collar=0.25)["der"], 4)
                runs.append(row)
                click.echo(json.dumps(row))
                if b not in first:
                    first[b] = (analysis.embeddings, result.segments)
                    frames = np.array(timer["t"].frames)
                    click.echo(
                        f"{name}: {frames.size} pieces of {frames.min()}-{frames.max()} fbank frames (median "
                        f"{np.median(frames):.0f}), {np.unique(frames).size} distinct lengths, "
                        f"{timer['t'].calls} embedder calls"
                    )
                    lengths[name] = frames
        e0, s0 = first[sizes[0]]
        valid = ~np.isnan(e0).any(axis=-1)
        for b in sizes[1:]:
            e, s = first[b]
            cos = np.sum(e[valid] * e0[valid], axis=-1)  # both unit-norm
            checks.append(
                {
                    "clip": name,
                    "batch": b,
                    "vs_batch": sizes[0],
                    "min_cosine": float(cos.min()) if cos.size else None,
                    "same_nan": bool(np.array_equal(np.isnan(e).any(axis=-1), ~valid)),
                    "identical_turns": s == s0,
                    "pieces": int(valid.sum()),
                    "piece_frames": lengths[name].tolist(),
                }
            )
            click.echo(json.dumps(checks[-1]))
    pd.chunk_embeddings = original
    summary: list[dict[str, Any]] = []
    for name in names:
        med: dict[str, dict[str, Any]] = {}
        for b in sizes:
            sel = [r for r in runs if r["clip"] == name and r["batch"] == b]
            med[b] = {
                k: float(np.median([r[k] for r in sel]))
                for k in ("wall_s", "campp_s", "analyse_rest_s", "cpu_s", "campp_cpu_s")
            }
            med[b]["der_c0.25"] = sel[0].get("der_c0.25")
            med[b]["audio_s"] = sel[0]["audio_s"]
        summary.append({"clip": name, "median": med})
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "config": {k: getattr(base, k) for k in base.__dataclass_fields__},
        "command": "python -m bench.diarization_speed " + " ".join(sys.argv[1:]),
    }
    (out / "result.json").write_text(
        json.dumps({"meta": meta, "runs": runs, "checks": checks, "summary": summary}, indent=2)
    )
    lines = [
        "| clip | audio s | CAM++ batch | wall s (median) | CAM++ s | rest of analyse s | RTFx | CPU s | CAM++ CPU s "
        "| DER c0.25 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for entry in summary:
        for b, m in entry["median"].items():
            der_s = f"{m['der_c0.25']:.1%}" if m["der_c0.25"] is not None else ""
            lines.append(
                f"| {entry['clip']} | {m['audio_s']:.0f} | {b} | {m['wall_s']:.2f} | {m['campp_s']:.2f} | "
                f"{m['analyse_rest_s']:.2f} | {m['audio_s'] / m['wall_s']:.1f} | {m['cpu_s']:.2f} | "
                f"{m['campp_cpu_s']:.2f} | {der_s} |"
            )
    lines.append(f"\nCPU: {meta['cpu']}; {meta['torch_threads']} torch thread(s); {rounds} rounds, order alternated.")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    click.echo("\n".join(lines))


if __name__ == "__main__":
    main()
