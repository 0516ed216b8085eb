"""Time the full-size Sortformer and TitaNet architectures (random weights, no download).

    python -m torch_models.timing --seconds 60                      # CPU
    python -m torch_models.timing --seconds 600 --device cuda       # 10 min of audio on a GPU

Random weights cost the same compute as trained ones, so this measures throughput, not accuracy.
The audio is synthetic (tones + noise); the timed call is the one the sidecar makes
(``diarize(..., include_tensor_outputs=True)`` / ``infer_segment``), after one warm-up call.
"""

from __future__ import annotations

import json
import time

import click
import numpy as np

from server.core.audio import SAMPLE_RATE


def synthetic(seconds: float, seed: int = 0) -> np.ndarray:
    """float32 ``(n,)`` 16 kHz: alternating 2 s tones of two pitches plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    pitch = np.where((t // 2) % 2 == 0, 180.0, 310.0)
    x = 0.3 * np.sin(2 * np.pi * pitch * t) + 0.02 * rng.standard_normal(t.shape)
    return x.astype(np.float32)


@click.command()
@click.option("--seconds", type=float, default=60.0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--models", default="sortformer,sortformer_streaming,titanet", show_default=True)
@click.option("--json-out", type=click.Path(dir_okay=False), default=None)
def main(seconds: float, device: str, models: str, json_out: str | None) -> None:
    """Print parameters, wall time and real-time factor of each architecture."""
    import torch

    from torch_models.nemo_io import build_random_model

    audio = synthetic(seconds)
    rows = []
    for kind in [m.strip() for m in models.split(",") if m.strip()]:
        model = build_random_model(kind).to(torch.device(device)).eval()
        params = sum(p.numel() for p in model.parameters())
        if kind == "titanet":

            def run(x, model=model):
                return model.infer_segment(x)[0]
        else:
            if kind == "sortformer_streaming":  # the sidecar's defaults for long files
                m = model.sortformer_modules
                m.chunk_len, m.chunk_right_context, m.fifo_len, m.spkcache_update_period = 340, 40, 40, 300

            def run(x, model=model):
                return model.diarize(
                    audio=[x], sample_rate=SAMPLE_RATE, num_workers=0, include_tensor_outputs=True, verbose=False
                )

        run(audio[: 5 * SAMPLE_RATE])
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        run(audio)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        rows.append(
            {
                "model": kind,
                "params_m": round(params / 1e6, 1),
                "audio_s": seconds,
                "wall_s": round(wall, 2),
                "rtfx": round(seconds / wall, 1),
                "device": device,
            }
        )
        click.echo(
            f"{kind:22s} {params / 1e6:6.1f} M params  {seconds:.0f} s audio in {wall:6.2f} s  "
            f"(RTFx {seconds / wall:.1f}) on {device}"
        )
        del model
    if json_out:
        with open(json_out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
