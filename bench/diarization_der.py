"""DER table of the sidecar's offline diarizer (segmentation-3.0 + CAM++) on the AMI clips in
``../shared/data`` and the 305 s two-voice espeak-ng conversation, and its speed.

    python -m bench.diarization_der                                  # the table, results in bench/results/
    python -m bench.diarization_der --clips dev00,dev01 --thresholds 0.9,1.0,1.1,1.2   # choose a threshold
    python -m bench.diarization_der --rtfx-minutes 10                # + RTFx on ~10 min of speech

Each clip ``X`` is ``../shared/data/pyannote_ami_X.wav`` with ``.rttm`` (reference) and ``.uem``
(scored region). DER is pyannote.metrics' ``DiarizationErrorRate`` (overlap scored), at collar 0 and
0.25 s. The diarizer is the one ``chorus serve sidecar`` builds (``torch_models.service``). With
``--thresholds`` the two networks run once per clip and only the clustering is redone per value.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import click
import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CLIPS = ("dev00", "dev01", "trn00", "trn08")
ESPEAK = "espeak305"
COLLARS = (0.0, 0.25)


def load_case(name: str, data: Path):
    """``(samples, reference turns, scored region)`` of an AMI clip name or ``espeak305``."""
    from bench.eval_der import read_reference
    from server.core.audio import decode_audio

    if name == ESPEAK:
        from bench.router_eval import long_conversation

        samples, ref = long_conversation()
        return samples, list(ref.turns), (0.0, len(samples) / 16000)
    wav = data / f"pyannote_ami_{name}.wav"
    return decode_audio(wav.read_bytes()), *read_reference(wav)


def speech_for(minutes: float) -> np.ndarray:
    """About ``minutes`` of two-voice espeak-ng speech (the 305 s conversation repeated)."""
    from bench.router_eval import long_conversation

    samples, _ = long_conversation()
    reps = max(1, int(round(minutes * 60 / (len(samples) / 16000))))
    return np.concatenate([samples] * reps)


@click.command()
@click.option("--clips", default=",".join(CLIPS + (ESPEAK,)), show_default=True,
              help="AMI clip names (dev00, …) and/or espeak305.")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=DATA, show_default=True)
@click.option("--thresholds", default=None, help="Comma-separated clustering thresholds to compare (sweep).")
@click.option("--step", type=float, default=None, help="Segmentation step (s); default: the sidecar's.")
@click.option("--piece", type=float, default=None, help="Piece length (s) of local speakers; 0: whole (pyannote 3.1).")
@click.option("--rtfx-minutes", type=float, default=0.0, help="Also time the diarizer on this much speech.")
@click.option("--threads", type=int, default=None, help="torch threads (default: torch's own choice).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Result folder (default bench/results/diarization-der-<date>).")
def main(clips, data, thresholds, step, piece, rtfx_minutes, threads, out) -> None:
    """Print per-clip DER (collar 0 and 0.25 s) and write result.json + table.md."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    from bench.eval_der import der
    from bench.machine import cpu_model
    from torch_models.diarization import DiarizationOptions
    from torch_models.service import build_diarizer
    from torch_models.settings import SidecarSettings

    settings = SidecarSettings()
    diarizer = build_diarizer(settings)
    if step is not None:
        diarizer.config = replace(diarizer.config, step_s=step)
    if piece is not None:
        diarizer.config = replace(diarizer.config, piece_s=piece or None)
    values = [float(x) for x in thresholds.split(",")] if thresholds else [diarizer.config.threshold]
    names = [c.strip() for c in clips.split(",") if c.strip()]
    rows = []
    for name in names:
        samples, ref, uem = load_case(name, data)
        t0 = time.perf_counter()
        analysis = diarizer.analyse(samples)
        for thr in values:
            config = replace(diarizer.config, threshold=thr)
            t1 = time.perf_counter()
            result = diarizer.finish(samples, analysis, DiarizationOptions(), config=config)
            wall = (t1 - t0) + (time.perf_counter() - t1)
            row = {"clip": name, "threshold": thr, "seconds": round(len(samples) / 16000, 2),
                   "speakers_ref": len({t.speaker for t in ref}), "speakers_hyp": len(result.speakers),
                   "wall_s": round(wall, 2)}
            for collar in COLLARS:
                score = der(ref, result.segments, uem=uem, collar=collar)
                row[f"der_c{collar:g}"] = round(score["der"], 4)
                row[f"parts_c{collar:g}"] = {k: round(score[k], 4) for k in ("missed", "false_alarm", "confusion")}
            rows.append(row)
            click.echo(f"{name:10s} thr {thr:5.3f}  DER {row['der_c0']:6.1%} (collar 0)  {row['der_c0.25']:6.1%} "
                       f"(collar 0.25: miss {row['parts_c0.25']['missed']:.1%}, FA "
                       f"{row['parts_c0.25']['false_alarm']:.1%}, conf {row['parts_c0.25']['confusion']:.1%})  "
                       f"speakers {row['speakers_hyp']}/{row['speakers_ref']}  {wall:.1f} s")
    summary = {}
    for thr in values:
        ami = [r for r in rows if r["threshold"] == thr and r["clip"] != ESPEAK]
        if ami:
            summary[str(thr)] = {f"mean_ami_der_c{c:g}": round(float(np.mean([r[f"der_c{c:g}"] for r in ami])), 4)
                                 for c in COLLARS}
            click.echo(f"threshold {thr:5.3f}: mean AMI DER {summary[str(thr)]['mean_ami_der_c0']:.1%} (collar 0), "
                       f"{summary[str(thr)]['mean_ami_der_c0.25']:.1%} (collar 0.25) over {len(ami)} clips")
    rtfx = None
    if rtfx_minutes > 0:
        speech = speech_for(rtfx_minutes)
        diarizer.diarize(speech[: 30 * 16000])  # warm-up
        t0 = time.perf_counter()
        result = diarizer.diarize(speech)
        wall = time.perf_counter() - t0
        rtfx = {"audio_s": round(len(speech) / 16000, 1), "wall_s": round(wall, 2),
                "rtfx": round(len(speech) / 16000 / wall, 2), "speakers": len(result.speakers),
                "torch_threads": torch.get_num_threads()}
        click.echo(f"RTFx: {rtfx['audio_s']:.0f} s of speech in {wall:.1f} s = {rtfx['rtfx']:.1f}x real time")
    out = out or Path(__file__).resolve().parent / "results" / f"diarization-der-{time.strftime('%Y-%m-%d')}"
    out.mkdir(parents=True, exist_ok=True)
    meta = {"cpu": cpu_model(), "device": settings.device, "backend": diarizer.describe(),
            "config": {k: getattr(diarizer.config, k) for k in diarizer.config.__dataclass_fields__},
            "torch": torch.__version__, "command": "python -m bench.diarization_der " + " ".join(sys.argv[1:]),
            "note": "2-core CPU shared with other jobs (load average ~7-11): timings are pessimistic"}
    (out / "result.json").write_text(json.dumps({"meta": meta, "rows": rows, "summary": summary, "rtfx": rtfx},
                                                indent=2))
    lines = ["| clip | speakers (found/ref) | DER collar 0 | DER collar 0.25 s |", "|---|---|---|---|"]
    for r in rows:
        tag = f" (thr {r['threshold']:g})" if len(values) > 1 else ""
        lines.append(f"| {r['clip']}{tag} | {r['speakers_hyp']}/{r['speakers_ref']} | {r['der_c0']:.1%} | "
                     f"{r['der_c0.25']:.1%} |")
    for thr, s in summary.items():
        lines.append(f"| mean of the AMI clips (thr {float(thr):g}) | | {s['mean_ami_der_c0']:.1%} | "
                     f"{s['mean_ami_der_c0.25']:.1%} |")
    if rtfx:
        lines.append(f"\nRTFx: {rtfx['audio_s']:.0f} s of two-voice espeak speech in {rtfx['wall_s']:.1f} s = "
                     f"{rtfx['rtfx']:.1f}x real time ({rtfx['torch_threads']} torch threads).")
    lines.append(f"\nCPU: {meta['cpu']}; device {meta['device']}.")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    click.echo(f"wrote {out}/result.json and table.md")


if __name__ == "__main__":
    main()
