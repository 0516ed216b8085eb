import pickle, sys
from dataclasses import replace
import numpy as np
from bench.eval_der import der
from torch_models.diarization import DiarizationOptions
import torch_models.pyannote_diarizer as P
from torch_models.service import build_diarizer
from torch_models.settings import SidecarSettings

_D = None
def diarizer():
    global _D
    if _D is None:
        _D = build_diarizer(SidecarSettings())
    return _D

_L = {}
def load(name, step=1.0, piece=2.0):
    key = (name, step, piece)
    if key in _L: return _L[key]
    x = pickle.load(open(f"/tmp/diarsc/cache/{name}_s{step:g}_p{piece:g}.pkl", "rb"))
    a = x["a"]
    if piece and getattr(a, "parents", None) is None:
        h0 = pickle.load(open(f"/tmp/diarsc/cache/{name}_s{step:g}_p0.pkl", "rb"))["a"].hard
        C, F, S = a.hard.shape
        par = np.full((C, S), -1, np.int64)
        for c in range(C):
            for j in range(S):
                m = a.hard[c, :, j] > 0
                if m.any():
                    par[c, j] = int(np.argmax(h0[c][m].sum(0)))
        object.__setattr__(a, "parents", par)
    _L[key] = x
    return x

def oracle_clusters(a, ref, frame_step, frame_duration):
    spk = sorted({t.speaker for t in ref})
    C, F, S = a.hard.shape
    T = int(a.offsets[-1]) + F
    tt = np.arange(T) * frame_step + frame_duration / 2
    R = np.zeros((T, len(spk)))
    for t in ref:
        R[(tt >= t.start) & (tt < t.end), spk.index(t.speaker)] = 1
    out = np.full((C, S), -2, np.int64)
    for c in range(C):
        seg = R[a.offsets[c]:a.offsets[c] + F]
        for s in range(S):
            m = a.hard[c, :, s] > 0
            if m.any():
                ov = seg[m].sum(0)
                if ov.max() > 0:
                    out[c, s] = int(np.argmax(ov))
    return out, len(spk)

def run(d, name, config=None, oracle=False, step=1.0, piece=2.0, collar=0.25, verbose=True):
    x = load(name, step, piece)
    a = x["a"]
    seg = d.segmentation
    orig = P.cluster_chunks
    if oracle:
        P.cluster_chunks = lambda a_, o, c, w: oracle_clusters(a_, x["ref"], seg.frame_step, seg.frame_duration)
    try:
        r = d.finish(x["samples"], a, DiarizationOptions(), config=config or d.config)
    finally:
        P.cluster_chunks = orig
    s = der(x["ref"], r.segments, uem=x["uem"], collar=collar)
    if verbose:
        print(f"{name:8s} DER {s['der']:.1%} miss {s['missed']:.1%} FA {s['false_alarm']:.1%} conf {s['confusion']:.1%} spk {len(r.speakers)}/{len({t.speaker for t in x['ref']})}")
    return s, r
