"""PNG plots of benchmark summaries (matplotlib, headless): throughput curves, speed/accuracy, soak."""

from __future__ import annotations

import math
from collections.abc import Sequence


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finite(x) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def throughput_figure(rows: Sequence[dict], title: str):
    """RTFx and p95 latency against concurrency, one line per server label.

    Args:
        rows: ``{label, concurrency, rtfx, latency_p95_s}`` (latency in seconds).
        title: the figure's title.

    Returns:
        A matplotlib ``Figure`` (two panels).
    """
    plt = _pyplot()
    fig, (ax_r, ax_l) = plt.subplots(1, 2, figsize=(11, 4))
    for label in dict.fromkeys(r["label"] for r in rows):
        pts = sorted((r["concurrency"], r["rtfx"], r["latency_p95_s"]) for r in rows if r["label"] == label)
        ax_r.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        ax_l.plot([p[0] for p in pts], [p[2] for p in pts], marker="o", label=label)
    for ax, ylabel in ((ax_r, "aggregate RTFx (audio s / wall s)"), (ax_l, "p95 latency (s)")):
        ax.set_xlabel("concurrent requests")
        ax.set_ylabel(ylabel)
        ax.set_xscale("log", base=2)
        ax.grid(True, alpha=0.3)
        ax.set_ylim(bottom=0)
    ax_r.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def tradeoff_figure(rows: Sequence[dict], title: str, baseline: str | None = None):
    """Speed bars (RTFx, with the ratio to ``baseline``) beside a WER-vs-RTFx scatter.

    Args:
        rows: ``{label, rtfx, wer}`` (``wer`` a fraction; rows with an error are drawn empty).
        title: the figure's title.
        baseline: the label the ratios are relative to.

    Returns:
        A matplotlib ``Figure`` (two panels).
    """
    plt = _pyplot()
    fig, (ax_b, ax_s) = plt.subplots(1, 2, figsize=(12, 0.45 * len(rows) + 2.5))
    colors = [plt.get_cmap("tab10")(i % 10) for i in range(len(rows))]
    speeds = [r["rtfx"] if _finite(r.get("rtfx")) else 0.0 for r in rows]
    base = next((r["rtfx"] for r in rows if r["label"] == baseline), None)
    bars = ax_b.barh(range(len(rows)), speeds, color=colors)
    ax_b.set_yticks(range(len(rows)), [r["label"] for r in rows], fontsize=8)
    ax_b.invert_yaxis()
    ax_b.set_xlabel("RTFx (audio s / wall s, one file at a time)")
    for bar, speed in zip(bars, speeds):
        text = f"{speed:.2f}" + (f" ({speed / base:.2f}×)" if base and _finite(base) and speed else "")
        ax_b.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, " " + text, va="center", fontsize=8)
    ax_b.set_xlim(0, max(speeds + [1e-9]) * 1.35)
    for r, color in zip(rows, colors):
        if _finite(r.get("rtfx")) and _finite(r.get("wer")):
            ax_s.scatter(
                r["rtfx"],
                r["wer"] * 100,
                s=70 if r["label"] == baseline else 40,
                color=color,
                marker="*" if r["label"] == baseline else "o",
                label=r["label"],
            )
    if ax_s.collections:
        ax_s.legend(fontsize=7, loc="best")
    ax_s.set_xlabel("RTFx (higher is faster)")
    ax_s.set_ylabel("WER % (Whisper-normalised; lower is better)")
    ax_s.grid(True, alpha=0.3)
    wers = [r["wer"] * 100 for r in rows if _finite(r.get("wer"))]
    ax_s.set_xlim(0, max(speeds + [1e-9]) * 1.15)
    ax_s.set_ylim(0, max(wers + [1.0]) * 1.2)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def soak_figure(samples: list[dict], records: list[dict], warmup_s: float, memory: dict, title: str):
    """RSS over time (warm-up shaded, window start/end medians) above answers per 10 s by outcome.

    Args:
        samples: ``{"t_s", "rss_mib"}`` (seconds since the load started, MiB).
        records: scored soak records (``t_s``, ``latency_s``, ``kind``, ``lost``, ``unexpected``).
        warmup_s: the unmeasured start (seconds).
        memory: ``bench.soak.memory_growth`` of the samples.
        title: the figure's title.

    Returns:
        A matplotlib ``Figure`` (two panels sharing the time axis, in minutes).
    """
    plt = _pyplot()
    fig, (ax_m, ax_r) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True, height_ratios=[3, 2])
    ts = [s["t_s"] / 60 for s in samples]
    ax_m.plot(ts, [s["rss_mib"] for s in samples], color="tab:blue", lw=1.2, label="server RSS")
    ax_m.axvspan(0, warmup_s / 60, color="0.85", label="warm-up (not measured)")
    for key, style in (("start_mib", ":"), ("end_mib", "--")):
        if not math.isnan(memory.get(key, math.nan)):
            ax_m.axhline(
                memory[key],
                color="tab:gray",
                ls=style,
                lw=1,
                label=f"window {key.split('_')[0]} median {memory[key]:.0f} MiB",
            )
    ax_m.set_ylabel("RSS (MiB)")
    growth = memory.get("growth", math.nan)
    ax_m.set_title(f"{title}: RSS growth {growth * 100:+.1f} % over the window" if not math.isnan(growth) else title)
    ax_m.grid(True, alpha=0.3)
    ax_m.legend(fontsize=8, loc="lower right")
    if records:
        end = max(r["t_s"] + r["latency_s"] for r in records)
        edges = [i * 10.0 for i in range(int(end // 10) + 2)]
        groups = {
            "good 200": lambda r: r["kind"] == "good" and not r["lost"],
            "bad, expected status": lambda r: r["kind"] == "bad" and not r["unexpected"],
            "lost / unexpected": lambda r: r.get("lost") or r["unexpected"],
        }
        bottom = [0] * (len(edges) - 1)
        for (label, pick), color in zip(groups.items(), ("tab:green", "tab:orange", "tab:red")):
            counts = [0] * (len(edges) - 1)
            for r in records:
                if pick(r):
                    counts[min(int((r["t_s"] + r["latency_s"]) // 10), len(counts) - 1)] += 1
            ax_r.bar(
                [e / 60 for e in edges[:-1]],
                counts,
                width=10 / 60,
                align="edge",
                bottom=bottom,
                color=color,
                label=label,
            )
            bottom = [b + c for b, c in zip(bottom, counts)]
        ax_r.legend(fontsize=8, loc="upper right")
    ax_r.set_xlabel("minutes since the load started")
    ax_r.set_ylabel("answers per 10 s")
    ax_r.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig
