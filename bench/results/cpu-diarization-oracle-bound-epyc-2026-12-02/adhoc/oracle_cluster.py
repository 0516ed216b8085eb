"""Diagnostic: DER with each (window, piece) given its reference speaker (oracle clustering)."""
import pickle, sys, numpy as np
from pathlib import Path
import torch_models.pyannote_diarizer as P
from bench.eval_der import der
from bench.diarization_loss import reference_count
from torch_models.protocol import DiarizationOptions

CACHE = Path("/tmp/vadx/cache")  # written by silero_count0.py (samples, reference, uem, analyse(), silero probs)

d = P.PyannoteDiarizer()
seg = d.segmentation
orig = P.cluster_chunks
for name in sys.argv[1].split(","):
    samples, ref, uem, a, sp = pickle.loads((CACHE / f"{name}.pkl").read_bytes())
    spk = sorted({t.speaker for t in ref})
    C, F, S = a.hard.shape
    # reference activity per file frame per speaker
    nf = int(a.offsets.max()) + F
    mid = np.arange(nf) * seg.frame_step + seg.frame_duration / 2
    R = np.zeros((nf, len(spk)))
    for t in ref:
        R[:, spk.index(t.speaker)] += (mid >= t.start) & (mid < t.end)
    def oracle(a_, options, c, warnings):
        out = np.full((C, S), -2, np.int64)
        for ci in range(C):
            for s in range(S):
                fr = np.flatnonzero(a_.hard[ci, :, s] > 0)
                if len(fr):
                    out[ci, s] = int(R[a_.offsets[ci] + fr].sum(0).argmax())
        return out, len(spk)
    res = {}
    for tag, fn in (("ours", orig), ("oracle", oracle)):
        P.cluster_chunks = fn
        r = d.finish(samples, a, DiarizationOptions())
        parts = []
        for collar in (0.0, 0.25):
            m = der(ref, r.segments, uem=uem, collar=collar)
            parts.append(f"c{collar:g} {m['der']*100:.1f} (miss {m['missed']*100:.1f} fa {m['false_alarm']*100:.1f} conf {m['confusion']*100:.1f})")
        res[tag] = " ".join(parts) + f" {len(r.speakers)}/{len(spk)}"
    P.cluster_chunks = orig
    print(name, "|", res["ours"], "|", res["oracle"], flush=True)
