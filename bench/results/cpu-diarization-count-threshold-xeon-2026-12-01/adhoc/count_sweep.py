"""Sweep the speaker-count rounding point (hard mean) and a soft (expected-count) variant."""
import sys, time, json
from dataclasses import replace
import numpy as np
import torch
torch.set_num_threads(2)
from bench.diarization_der import load_case, DATA
from bench.eval_der import der
from torch_models.diarization import DiarizationOptions
from torch_models.service import build_diarizer
from torch_models.settings import SidecarSettings
from torch_models.pyannote_diarizer import aggregate

clips = sys.argv[1].split(",")
ts = [float(x) for x in sys.argv[2].split(",")]
d = build_diarizer(SidecarSettings())
rows = {}
for name in clips:
    samples, ref, uem = load_case(name, DATA)
    t0 = time.time()
    a = d.analyse(samples)
    mean_hard = aggregate(a.hard.sum(axis=-1, keepdims=True), a.offsets)[:, 0]
    mean_soft = aggregate(np.nan_to_num(a.soft).sum(axis=-1, keepdims=True), a.offsets)[:, 0]
    base = a.count
    for kind, mean in (("hard", mean_hard), ("soft", mean_soft)):
        for t in ts:
            count = np.maximum(np.ceil(mean - t), 0).astype(np.int64)
            if kind == "hard" and t == 0.5:
                count = base
            r = d.finish(samples, replace(a, count=count), DiarizationOptions())
            s = [der(ref, r.segments, uem=uem, collar=c) for c in (0.0, 0.25)]
            rows[(name, kind, t)] = (s[0]["der"], s[1]["der"], s[1]["missed"], s[1]["false_alarm"], s[1]["confusion"], len(r.speakers))
            print(f"{name:9s} {kind} t={t:.2f} DER {s[0]['der']:.1%} / {s[1]['der']:.1%} (miss {s[1]['missed']:.1%} FA {s[1]['false_alarm']:.1%} conf {s[1]['confusion']:.1%}) spk {len(r.speakers)}", flush=True)
    print(f"  {time.time()-t0:.1f}s", flush=True)
for kind in ("hard", "soft"):
    for t in ts:
        for grp in (["dev00","dev01"], ["syn3a","syn3b","syn4a","syn4b"], ["trn00","trn08"], ["dev00","dev01","trn00","trn08"]):
            v = [rows[(c, kind, t)] for c in grp if (c, kind, t) in rows]
            if len(v) == len(grp):
                print(f"{kind} t={t:.2f} {'+'.join(grp)}: c0 {np.mean([x[0] for x in v]):.1%} c0.25 {np.mean([x[1] for x in v]):.1%}")
