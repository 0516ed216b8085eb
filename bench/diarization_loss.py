"""Where the sidecar's offline diarizer loses reference speech, step by step (issue 14).

    python -m bench.diarization_loss                       # AMI clips + synthetic meetings + espeak305
    python -m bench.diarization_loss --clips trn00,trn08 --out bench/results/x

On the file's segmentation frame grid (frame ``t`` stands for the instant ``t · step + duration / 2``,
the frame middle ``to_turns`` uses as a boundary) and inside the scored region (.uem), each step's
speaker count per frame is compared with the reference count (reference turns covering the frame
middle). "Lost" speaker-time of a step is ``Σ_t max(ref_t − n_t, 0) · step``, as a share of the
reference speaker-time (collar 0, so it is comparable with pyannote.metrics' missed detection at
collar 0, not at 0.25 s). The steps (``torch_models/pyannote_diarizer.py``):

- ``window``: each 10 s window's own count (active local speakers), averaged over the windows that
  cover the frame (speech segmentation-3.0 misses in a typical window);
- ``any window``: the largest count any covering window gives (speech no window sees);
- ``mean count``: the unrounded mean over windows (pyannote ``speaker_count`` before ``np.rint``);
- ``count``: the rounded count, split into frames where it is 0 (speech taken for non-speech),
  frames where the reference has more than 2 speakers (segmentation-3.0's ceiling) and the rest
  (overlap counted too low);
- ``reconstruct``: active clusters per frame after ``reconstruct``; ``dropped`` = frames where it is
  below ``count`` (a count with fewer clusters to switch on);
- ``turns``: the final turns rasterised back onto the grid (what ``to_turns`` keeps).

Also reported: local speakers (or pieces) active in a window that got no cluster (-2) although they
talk, and pyannote.metrics' missed detection / false alarm / confusion at collar 0 and 0.25 s.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import numpy as np

from bench.diarization_der import CLIPS, DATA, ESPEAK, MEETINGS, load_case


def reference_count(turns: Sequence[Any], num_frames: int, frame_step: float, frame_duration: float) -> np.ndarray:
    """int ``(num_frames,)``: reference turns covering each frame middle."""
    mid = np.arange(num_frames) * frame_step + frame_duration / 2
    out = np.zeros(num_frames, np.int64)
    for t in turns:
        out += (mid >= t.start) & (mid < t.end)
    return out


def scored_mask(uem: Any, num_frames: int, frame_step: float, frame_duration: float) -> np.ndarray:
    """bool ``(num_frames,)``: frame middles inside the scored region (a Timeline, a (start, end)
    tuple, or None for everything)."""
    mid = np.arange(num_frames) * frame_step + frame_duration / 2
    if uem is None:
        return np.ones(num_frames, bool)
    spans = [uem] if isinstance(uem, tuple) else [(s.start, s.end) for s in uem]
    mask = np.zeros(num_frames, bool)
    for a, b in spans:
        mask |= (mid >= a) & (mid < b)
    return mask


def window_counts(hard: np.ndarray, offsets: np.ndarray, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Per file frame: the mean and the max over the covering windows of each window's count of
    active local speakers, float ``(T,)`` each (frames no window covers: 0)."""
    per = hard.sum(axis=-1)  # (C, F)
    total = np.zeros(num_frames)
    cover = np.zeros(num_frames)
    best = np.zeros(num_frames)
    f = per.shape[1]
    for c, o in enumerate(offsets):
        n = max(0, min(f, num_frames - o))
        total[o : o + n] += per[c, :n]
        cover[o : o + n] += 1
        best[o : o + n] = np.maximum(best[o : o + n], per[c, :n])
    return total / np.maximum(cover, 1), best


def _level(samples: np.ndarray, frames: np.ndarray, fs: float, fd: float) -> float | None:
    """RMS level (dBFS) of the audio under the selected frames (their middle ``fs`` seconds)."""
    idx = np.flatnonzero(frames)
    if not idx.size:
        return None
    starts = ((idx * fs + fd / 2 - fs / 2) * 16000).astype(np.int64)
    width = int(round(fs * 16000))
    x = np.concatenate([samples[max(0, s) : s + width] for s in starts])
    return round(float(20 * np.log10(np.sqrt(np.mean(x.astype(np.float64) ** 2)) + 1e-12)), 1)


def _frame_levels(samples: np.ndarray, n: int, fs: float, fd: float) -> np.ndarray:
    """float ``(n,)``: RMS level (dBFS) of each frame's ``fd`` seconds of audio."""
    width = int(round(fd * 16000))
    out = np.full(n, -240.0)
    for t in range(n):
        s = int(round(t * fs * 16000))
        x = samples[s : s + width].astype(np.float64)
        if x.size:
            out[t] = 20 * np.log10(np.sqrt(np.mean(x**2)) + 1e-12)
    return out


def trace(diarizer: Any, samples: np.ndarray, analysis: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[Any]]:
    """``finish``'s steps 5–7 on an ``analyse`` result, keeping the intermediate arrays:
    ``(clusters (C, S), count (T,), binary (T, K), turns)``."""
    import math

    from torch_models.diarization import DiarizationOptions
    from torch_models.pyannote_diarizer import (
        aggregate,
        cluster_chunks,
        clustered_scores,
        reconstruct,
        to_turns,
    )

    c, seg, a = diarizer.config, diarizer.segmentation, analysis
    clusters, k = cluster_chunks(a, DiarizationOptions(), c, [])
    activity = aggregate(clustered_scores(a.hard, clusters, k), a.offsets, skip_average=True)
    probs = aggregate(clustered_scores(a.soft, clusters, k), a.offsets)
    binary = reconstruct(activity, a.count)
    n = min(binary.shape[0], int(math.ceil(a.duration / seg.frame_step)))
    turns = to_turns(binary[:n], probs[:n], seg.frame_step, seg.frame_duration, a.duration, c.min_duration_off)
    return clusters, a.count[:n], binary[:n], turns


def losses(diarizer: Any, samples: np.ndarray, ref: Sequence[Any], uem: Any) -> dict[str, Any]:
    """The step-by-step table of one clip (see the module docstring)."""
    from bench.eval_der import der

    seg = diarizer.segmentation
    a = diarizer.analyse(samples)
    clusters, count, binary, turns = trace(diarizer, samples, a)
    n = count.shape[0]
    fs, fd = seg.frame_step, seg.frame_duration
    refc = reference_count(ref, n, fs, fd)
    mask = scored_mask(uem, n, fs, fd)
    ref_time = float((refc * mask).sum() * fs) or 1e-9

    def lost(hyp: np.ndarray, where: np.ndarray | None = None) -> float:
        sel = mask if where is None else mask & where
        return float((np.maximum(refc - hyp, 0) * sel).sum() * fs / ref_time)

    mean_w, max_w = window_counts(a.hard, a.offsets, n)
    mean_count = np.zeros(n)
    from torch_models.pyannote_diarizer import aggregate

    mean_count[:] = aggregate(a.hard.sum(axis=-1, keepdims=True), a.offsets)[:n, 0]
    out_n = binary.sum(axis=1)
    turn_n = np.zeros(n)
    mid = np.arange(n) * fs + fd / 2
    for t in turns:
        turn_n += (mid >= t.start) & (mid < t.end)
    active = a.hard.sum(axis=1) > 0
    valid = ~np.isnan(a.embeddings).any(axis=-1)
    row: dict[str, Any] = {
        "ref_speaker_s": round(ref_time, 2),
        "ref_share_beyond_2": round(float((np.maximum(refc - 2, 0) * mask).sum() * fs / ref_time), 4),
        "lost_window_mean": round(lost(mean_w), 4),
        "lost_any_window": round(lost(max_w), 4),
        "lost_mean_count": round(lost(mean_count), 4),
        "lost_count": round(lost(count), 4),
        "lost_count_as_nonspeech": round(lost(count, count == 0), 4),
        # count > 0 but too low: below min(ref, 2) (overlap counted too low) and beyond 2 (the ceiling)
        "lost_count_overlap_low": round(lost(count - np.minimum(refc, 2) + refc, count > 0), 4),
        "lost_count_ref_beyond_2": round(lost(np.maximum(count, np.minimum(refc, 2)), count > 0), 4),
        "lost_reconstruct": round(lost(out_n), 4),
        "dropped_by_reconstruct": round(float((np.maximum(count - out_n, 0) * mask).sum() * fs / ref_time), 4),
        "lost_turns": round(lost(turn_n), 4),
        "false_alarm_count": round(float((np.maximum(count - refc, 0) * mask).sum() * fs / ref_time), 4),
        "active_columns": int(active.sum()),
        "active_without_embedding": int((active & ~valid).sum()),
        "active_without_cluster": int((active & (clusters < 0)).sum()),
        "clusters": int(clusters.max() + 1) if clusters.size else 0,
        "speakers_hyp": len({t.speaker for t in turns}),
        "speakers_ref": len({t.speaker for t in ref}),
    }
    # per reference speaker: speech the count calls non-speech, and how loud / how sure the model was
    samples = np.asarray(samples, np.float32)
    expected = aggregate(a.soft.sum(axis=-1, keepdims=True), a.offsets)[:n, 0]  # soft count, mean over windows
    lost0 = mask & (refc > 0) & (count == 0)
    row["soft_count_where_count0"] = round(float(expected[lost0].mean()), 3) if lost0.any() else None
    row["soft_count_where_kept"] = round(float(expected[mask & (refc > 0) & (count > 0)].mean()), 3)
    per = {}
    for who in sorted({t.speaker for t in ref}):
        own = reference_count([t for t in ref if t.speaker == who], n, fs, fd) > 0
        own &= mask
        alone = own & (refc == 1)
        missed = alone & (count == 0)
        per[who] = {
            "speech_s": round(float(own.sum() * fs), 2),
            "share_in_count0": round(float((own & (count == 0)).sum() / max(own.sum(), 1)), 4),
            "alone_s": round(float(alone.sum() * fs), 2),
            "alone_missed_share": round(float(missed.sum() / max(alone.sum(), 1)), 4),
            "alone_kept_dbfs": _level(samples, alone & (count > 0), fs, fd),
            "alone_missed_dbfs": _level(samples, missed, fs, fd),
        }
    row["per_speaker"] = per
    # the clip's non-speech level, and how much of the speech taken for non-speech is no louder than it
    db = _frame_levels(samples, n, fs, fd)
    quiet = mask & (refc == 0)
    floor = float(np.median(db[quiet])) if quiet.any() else None
    row["nonspeech_median_dbfs"] = round(floor, 1) if floor is not None else None
    row["speech_median_dbfs"] = round(float(np.median(db[mask & (refc > 0) & (count > 0)])), 1)
    row["count0_median_dbfs"] = round(float(np.median(db[lost0])), 1) if lost0.any() else None
    if floor is not None:
        row["lost_count0_within_6db_of_nonspeech"] = round(lost(count, (count == 0) & (db < floor + 6)), 4)
    for collar in (0.0, 0.25):
        s = der(ref, turns, uem=uem, collar=collar)
        row[f"der_c{collar:g}"] = {k: round(s[k], 4) for k in ("der", "missed", "false_alarm", "confusion")}
    return row


@click.command()
@click.option(
    "--clips",
    default=",".join(CLIPS + tuple(MEETINGS) + (ESPEAK,)),
    show_default=True,
    help="AMI clip names, synthetic meetings (syn3a, …) and/or espeak305.",
)
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=DATA, show_default=True)
@click.option("--threads", type=int, default=1, show_default=True, help="torch threads.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None, help="Result folder.")
def main(clips: str, data: Path, threads: int, out: Path | None) -> None:
    """Print the step-by-step speech loss per clip and write result.json + table.md."""
    import torch

    torch.set_num_threads(threads)
    from bench.machine import cpu_model
    from torch_models.service import build_diarizer
    from torch_models.settings import SidecarSettings

    diarizer: Any = build_diarizer(SidecarSettings())
    rows: dict[str, dict[str, Any]] = {}
    cols = [
        ("window", "lost_window_mean"),
        ("any window", "lost_any_window"),
        ("mean count", "lost_mean_count"),
        ("count", "lost_count"),
        ("count=0", "lost_count_as_nonspeech"),
        ("ref>2", "lost_count_ref_beyond_2"),
        ("overlap low", "lost_count_overlap_low"),
        ("reconstruct", "lost_reconstruct"),
        ("dropped", "dropped_by_reconstruct"),
        ("turns", "lost_turns"),
    ]
    for name in [c.strip() for c in clips.split(",") if c.strip()]:
        samples, ref, uem = load_case(name, data)
        t0 = time.perf_counter()
        row = losses(diarizer, samples, ref, uem)
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        rows[name] = row
        click.echo(
            f"{name:9s} "
            + " ".join(f"{label} {row[key]:.1%}" for label, key in cols)
            + f" | missed c0 {row['der_c0']['missed']:.1%} c0.25 {row['der_c0.25']['missed']:.1%}"
            + f" | no cluster {row['active_without_cluster']}/{row['active_columns']}"
        )
    out = out or Path(__file__).resolve().parent / "results" / f"diarization-loss-{time.strftime('%Y-%m-%d')}"
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "cpu": cpu_model(),
        "config": {k: getattr(diarizer.config, k) for k in diarizer.config.__dataclass_fields__},
        "command": "python -m bench.diarization_loss " + " ".join(sys.argv[1:]),
    }
    (out / "result.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    head = (
        "| clip | " + " | ".join(label for label, _ in cols) + " | DER c0 (miss/FA/conf) | DER c0.25 (miss/FA/conf) |"
    )
    lines = [head, "|---" * (len(cols) + 3) + "|"]
    for name, r in rows.items():
        d0, d1 = r["der_c0"], r["der_c0.25"]
        lines.append(
            f"| {name} | "
            + " | ".join(f"{r[key]:.1%}" for _, key in cols)
            + f" | {d0['der']:.1%} ({d0['missed']:.1%}/{d0['false_alarm']:.1%}/{d0['confusion']:.1%})"
            + f" | {d1['der']:.1%} ({d1['missed']:.1%}/{d1['false_alarm']:.1%}/{d1['confusion']:.1%}) |"
        )
    lines.append(
        f"\nLost = share of the reference speaker-time (collar 0) a step no longer covers. CPU: {meta['cpu']}."
    )
    (out / "table.md").write_text("\n".join(lines) + "\n")
    click.echo(f"wrote {out}/result.json and table.md")


if __name__ == "__main__":
    main()
