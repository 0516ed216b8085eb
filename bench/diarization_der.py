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

import itertools
import json
import os
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

# Synthetic 3- and 4-voice meetings of ~30 s (the AMI clips' length) for choosing thresholds: the two
# AMI dev clips have 2 speakers each, so they cannot tell whether a setting keeps a third or fourth
# (small) speaker. Each line is (voice, line of LONG_DIALOGUE, gap before it in seconds; negative: it
# starts that long before the previous line ends, both voices at once). One voice per meeting says
# little (a "small" speaker, as in a real meeting). trn00/trn08 are never used to choose anything.
# The voices were picked by CAM++ cosine (one embedding of two lines against another of a third line,
# 16 espeak-ng voice/variant settings): self 0.86-0.94, each pair of these four 0.09-0.48 (on AMI dev00 /
# dev01 the two speakers' centroids are at 0.22 / 0.29). The voices of torch_models.synth other than
# en+f3 are 0.73-0.87 apart, as alike to CAM++ as one person, so no threshold can separate them.
MEETING_VOICES: dict[str, tuple[str, int, int]] = {
    "A": ("en+klatt2", 50, 160),
    "B": ("en+f3", 80, 150),
    "C": ("en+m7", 40, 150),
    "D": ("en-us+f2", 60, 160),
}
MEETINGS: dict[str, tuple[tuple[str, int, float], ...]] = {
    # 3 voices, C says one short line
    "syn3a": (
        ("A", 0, 0.5),
        ("B", 1, 0.4),
        ("A", 2, 0.3),
        ("C", 16, 0.5),
        ("B", 3, -0.6),
        ("A", 4, 0.3),
        ("B", 5, 0.3),
        ("A", 6, 0.4),
    ),
    # 3 voices, balanced-ish, two overlaps
    "syn3b": (
        ("B", 8, 0.4),
        ("C", 9, -0.5),
        ("A", 10, 0.4),
        ("C", 11, 0.3),
        ("B", 12, -0.7),
        ("A", 13, 0.5),
        ("C", 16, 0.3),
    ),
    # 4 voices, D says one short line
    "syn4a": (
        ("A", 20, 0.4),
        ("B", 21, 0.3),
        ("C", 22, 0.5),
        ("A", 23, -0.5),
        ("D", 59, 0.4),
        ("B", 24, 0.3),
        ("C", 25, 0.4),
    ),
    # 4 voices, each twice, overlaps
    "syn4b": (
        ("C", 30, 0.4),
        ("D", 31, 0.3),
        ("A", 32, -0.6),
        ("B", 33, 0.4),
        ("D", 34, 0.3),
        ("C", 35, -0.5),
        ("A", 36, 0.4),
        ("B", 37, 0.3),
    ),
}


def synthetic_meeting(name: str):
    """``(samples, reference turns, uem)`` of one of ``MEETINGS`` (needs espeak-ng): lines spoken
    in turn with the listed gaps (negative: overlapped, the voices mixed), peak-normalised to 0.5
    (``torch_models.synth.mix_lines``); each reference turn is its line's span above an energy
    floor (``torch_models.synth.spoken_line``)."""
    from bench.router_eval import LONG_DIALOGUE
    from torch_models.synth import mix_lines, spoken_line

    rate = 16000
    parts = []
    end = 0
    for who, line, gap in MEETINGS[name]:
        audio = spoken_line(LONG_DIALOGUE[line], *MEETING_VOICES[who])
        start = max(0, end + int(gap * rate))
        parts.append((start, audio, who))
        end = start + audio.shape[0]
    mix = mix_lines(parts)
    return mix.samples, list(mix.turns), (0.0, mix.duration)


def load_case(name: str, data: Path):
    """``(samples, reference turns, scored region)`` of an AMI clip name, a synthetic meeting,
    ``espeak305``, or several of those joined end to end (``dev00+dev01``: a longer recording; the
    reference keeps each clip's speaker labels, so an AMI speaker or a synthetic voice heard in two
    clips is one speaker, and the scored region is the union of the clips' regions)."""
    from bench.eval_der import read_reference
    from server.core.audio import decode_audio

    if "+" in name:
        return joined_case([load_case(part, data) for part in name.split("+")])
    if name in MEETINGS:
        return synthetic_meeting(name)
    if name == ESPEAK:
        from bench.router_eval import long_conversation

        samples, ref = long_conversation()
        return samples, list(ref.turns), (0.0, len(samples) / 16000)
    wav = data / f"pyannote_ami_{name}.wav"
    return decode_audio(wav.read_bytes()), *read_reference(wav)


def joined_case(cases):
    """One case from ``(samples, turns, region)`` cases played one after another (region: a
    ``pyannote.core.Timeline``, a ``(start, end)`` tuple or None for the whole clip)."""
    from pyannote.core import Segment, Timeline

    from server.core.transcript import SpeakerTurn

    samples, turns, spans = [], [], []
    offset = 0.0
    for x, ref, region in cases:
        duration = len(x) / 16000
        samples.append(x)
        turns += [SpeakerTurn(t.start + offset, t.end + offset, t.speaker) for t in ref]
        if region is None:
            spans.append(Segment(offset, offset + duration))
        elif isinstance(region, tuple):
            spans.append(Segment(region[0] + offset, region[1] + offset))
        else:
            spans += [Segment(s.start + offset, s.end + offset) for s in region]
        offset += duration
    return np.concatenate(samples), turns, Timeline(spans)


def speech_for(minutes: float) -> np.ndarray:
    """About ``minutes`` of two-voice espeak-ng speech (the 305 s conversation repeated)."""
    from bench.router_eval import long_conversation

    samples, _ = long_conversation()
    reps = max(1, int(round(minutes * 60 / (len(samples) / 16000))))
    return np.concatenate([samples] * reps)


@click.command()
@click.option(
    "--clips",
    default=",".join(CLIPS + (ESPEAK,)),
    show_default=True,
    help="AMI clip names (dev00, …) and/or espeak305.",
)
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=DATA, show_default=True)
@click.option("--thresholds", default=None, help="Comma-separated clustering thresholds to compare (sweep).")
@click.option("--min-cluster-sizes", default=None, help="Comma-separated min_cluster_size values (sweep).")
@click.option("--min-cluster-fractions", default=None, help="Comma-separated min_cluster_fraction values (sweep).")
@click.option("--min-cluster-shares", default=None, help="Comma-separated min_cluster_share values (sweep).")
@click.option("--min-durations-off", default=None, help="Comma-separated min_duration_off values in seconds (sweep).")
@click.option("--linkages", default=None, help="Comma-separated scipy linkage methods (sweep): centroid, average, ...")
@click.option("--step", type=float, default=None, help="Segmentation step (s); default: the sidecar's.")
@click.option("--piece", type=float, default=None, help="Piece length (s) of local speakers; 0: whole (pyannote 3.1).")
@click.option("--rtfx-minutes", type=float, default=0.0, help="Also time the diarizer on this much speech.")
@click.option("--threads", type=int, default=None, help="torch threads (default: torch's own choice).")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Result folder (default bench/results/diarization-der-<date>).",
)
def main(
    clips,
    data,
    thresholds,
    min_cluster_sizes,
    min_cluster_fractions,
    min_cluster_shares,
    min_durations_off,
    linkages,
    step,
    piece,
    rtfx_minutes,
    threads,
    out,
) -> None:
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
    c0 = diarizer.config
    grid = {
        "threshold": [float(x) for x in thresholds.split(",")] if thresholds else [c0.threshold],
        "min_cluster_size": [int(x) for x in min_cluster_sizes.split(",")]
        if min_cluster_sizes
        else [c0.min_cluster_size],
        "min_cluster_fraction": [float(x) for x in min_cluster_fractions.split(",")]
        if min_cluster_fractions
        else [c0.min_cluster_fraction],
        "min_cluster_share": [float(x) for x in min_cluster_shares.split(",")]
        if min_cluster_shares
        else [c0.min_cluster_share],
        "min_duration_off": [float(x) for x in min_durations_off.split(",")]
        if min_durations_off
        else [c0.min_duration_off],
        "linkage": linkages.split(",") if linkages else [c0.linkage],
    }
    values = [dict(zip(grid, v)) for v in itertools.product(*grid.values())]
    swept = [k for k, v in grid.items() if len(v) > 1] or ["threshold"]

    def label(v: dict) -> str:
        return ", ".join(f"{k} {v[k]:g}" if isinstance(v[k], float | int) else f"{k} {v[k]}" for k in swept)

    names = [c.strip() for c in clips.split(",") if c.strip()]
    rows = []
    for name in names:
        samples, ref, uem = load_case(name, data)
        t0 = time.perf_counter()
        analysis = diarizer.analyse(samples)
        for v in values:
            config = replace(diarizer.config, **v)
            t1 = time.perf_counter()
            result = diarizer.finish(samples, analysis, DiarizationOptions(), config=config)
            wall = (t1 - t0) + (time.perf_counter() - t1)
            row = {
                "clip": name,
                **v,
                "setting": label(v),
                "seconds": round(len(samples) / 16000, 2),
                "speakers_ref": len({t.speaker for t in ref}),
                "speakers_hyp": len(result.speakers),
                "wall_s": round(wall, 2),
            }
            for collar in COLLARS:
                score = der(ref, result.segments, uem=uem, collar=collar)
                row[f"der_c{collar:g}"] = round(score["der"], 4)
                row[f"parts_c{collar:g}"] = {k: round(score[k], 4) for k in ("missed", "false_alarm", "confusion")}
            rows.append(row)
            click.echo(
                f"{name:10s} {label(v)}  DER {row['der_c0']:6.1%} (collar 0)  {row['der_c0.25']:6.1%} "
                f"(collar 0.25: miss {row['parts_c0.25']['missed']:.1%}, FA "
                f"{row['parts_c0.25']['false_alarm']:.1%}, conf {row['parts_c0.25']['confusion']:.1%})  "
                f"speakers {row['speakers_hyp']}/{row['speakers_ref']}  {wall:.1f} s"
            )
    summary = {}
    joined = tuple(n for n in names if "+" in n)
    for v in values:
        for group, members in (("ami", CLIPS), ("synthetic", tuple(MEETINGS)), ("joined", joined)):
            sel = [r for r in rows if r["setting"] == label(v) and r["clip"] in members]
            if not sel:
                continue
            summary.setdefault(label(v), {}).update(
                {f"mean_{group}_der_c{c:g}": round(float(np.mean([r[f"der_c{c:g}"] for r in sel])), 4) for c in COLLARS}
            )
            summary[label(v)][f"{group}_clips"] = [r["clip"] for r in sel]
            s = summary[label(v)]
            click.echo(
                f"{label(v)}: mean {group} DER {s[f'mean_{group}_der_c0']:.1%} (collar 0), "
                f"{s[f'mean_{group}_der_c0.25']:.1%} (collar 0.25) over {len(sel)} clips"
            )
    rtfx = None
    if rtfx_minutes > 0:
        speech = speech_for(rtfx_minutes)
        diarizer.diarize(speech[: 30 * 16000])  # warm-up
        t0 = time.perf_counter()
        result = diarizer.diarize(speech)
        wall = time.perf_counter() - t0
        rtfx = {
            "audio_s": round(len(speech) / 16000, 1),
            "wall_s": round(wall, 2),
            "rtfx": round(len(speech) / 16000 / wall, 2),
            "speakers": len(result.speakers),
            "torch_threads": torch.get_num_threads(),
        }
        click.echo(f"RTFx: {rtfx['audio_s']:.0f} s of speech in {wall:.1f} s = {rtfx['rtfx']:.1f}x real time")
    out = out or Path(__file__).resolve().parent / "results" / f"diarization-der-{time.strftime('%Y-%m-%d')}"
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "cpu": cpu_model(),
        "device": settings.device,
        "backend": diarizer.describe(),
        "config": {k: getattr(diarizer.config, k) for k in diarizer.config.__dataclass_fields__},
        "torch": torch.__version__,
        "command": "python -m bench.diarization_der " + " ".join(sys.argv[1:]),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],  # 1, 5, 15 min: was the CPU shared?
    }
    (out / "result.json").write_text(
        # "kind": the label bench/results/README.md's index gives it ("?" without one)
        json.dumps({"kind": "diarization-der", "meta": meta, "rows": rows, "summary": summary, "rtfx": rtfx}, indent=2)
    )
    lines = ["| clip | speakers (found/ref) | DER collar 0 | DER collar 0.25 s |", "|---|---|---|---|"]
    for r in rows:
        tag = f" ({r['setting']})" if len(values) > 1 else ""
        lines.append(
            f"| {r['clip']}{tag} | {r['speakers_hyp']}/{r['speakers_ref']} | {r['der_c0']:.1%} | {r['der_c0.25']:.1%} |"
        )
    for setting, s in summary.items():
        for group in ("ami", "synthetic", "joined"):
            if f"mean_{group}_der_c0" in s:
                lines.append(
                    f"| mean of the {group} clips {', '.join(s[f'{group}_clips'])} ({setting}) | | "
                    f"{s[f'mean_{group}_der_c0']:.1%} | {s[f'mean_{group}_der_c0.25']:.1%} |"
                )
    if rtfx:
        lines.append(
            f"\nRTFx: {rtfx['audio_s']:.0f} s of two-voice espeak speech in {rtfx['wall_s']:.1f} s = "
            f"{rtfx['rtfx']:.1f}x real time ({rtfx['torch_threads']} torch threads)."
        )
    lines.append(f"\nCPU: {meta['cpu']}; device {meta['device']}.")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    click.echo(f"wrote {out}/result.json and table.md")


if __name__ == "__main__":
    main()
