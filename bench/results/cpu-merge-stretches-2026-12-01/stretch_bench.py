"""A/B: merge._stretches hand-rolled vs pyannote.core (Timeline.support per speaker, and Annotation.support)."""

import time

import numpy as np
from pyannote.core import Annotation, Timeline
from pyannote.core import Segment as Span

from server.core.transcript import SpeakerTurn
from server.router.merge import GAP_S
from server.router.merge import _stretches as old  # the code measured: merge.py's own


def timeline(turns):
    by = {}
    for t in sorted(turns, key=lambda t: t.start):
        by.setdefault(t.speaker, []).append(Span(t.start, t.end))
    return {k: [(s.start, s.end) for s in Timeline(v).support(collar=GAP_S)] for k, v in by.items()}


def annotation(turns):
    ann = Annotation()
    for i, t in enumerate(turns):
        ann[Span(t.start, t.end), i] = t.speaker
    out = {}
    for seg, _, label in ann.support(collar=GAP_S).itertracks(yield_label=True):
        out.setdefault(label, []).append((seg.start, seg.end))
    return out


def make(n, rng):
    turns, t = [], 0.0
    for _ in range(n):
        t += float(rng.uniform(0.05, 2.0))
        a = round(t, 3)
        turns.append(SpeakerTurn(a, round(a + float(rng.uniform(0.1, 4.0)), 3), "ABCD"[int(rng.integers(4))], 0.9))
    return turns


rng = np.random.default_rng(0)
for n, reps in ((20, 200), (300, 20), (5000, 3)):
    turns = make(n, rng)
    same = old(turns) == timeline(turns)
    funcs = {"old": old, "timeline": timeline, "annotation": annotation}
    best = {k: [] for k in funcs}
    for _ in range(reps):
        for k, f in funcs.items():
            t0 = time.perf_counter()
            f(turns)
            best[k].append(time.perf_counter() - t0)
    med = {k: float(np.median(v)) for k, v in best.items()}
    print(
        f"{n:5d} turns (same: {same}): "
        + ", ".join(f"{k} {v * 1e3:.3f} ms ({v / med['old']:.1f}x)" for k, v in med.items())
    )
