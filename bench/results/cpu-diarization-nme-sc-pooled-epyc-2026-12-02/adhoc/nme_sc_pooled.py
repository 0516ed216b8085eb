"""Experiment: NME-SC spectral clustering on pooled (window, local speaker) CAM++ embeddings vs the AHC default."""
import hashlib, pickle, sys, time
from dataclasses import replace
from pathlib import Path
import numpy as np, torch
import torch_models.pyannote_diarizer as P
from bench.diarization_der import DATA, load_case
from bench.eval_der import der
from torch_models.protocol import DiarizationOptions

torch.set_num_threads(2)
CACHE = Path("/tmp/vadx/cache")  # analyse() results, shared with ../cpu-diarization-oracle-bound-epyc-2026-12-02/adhoc
d = P.PyannoteDiarizer()

def case(name):
    f = CACHE / (hashlib.md5(name.encode()).hexdigest()[:12] + ".pkl") if len(name) > 40 else CACHE / f"{name}.pkl"
    if f.exists():
        t = pickle.loads(f.read_bytes())
        return t[0], t[1], t[2], t[3]
    samples, ref, uem = load_case(name, DATA)
    a = d.analyse(samples)
    f.write_bytes(pickle.dumps((samples, ref, uem, a, None)))
    return samples, ref, uem, a

def nme_sc(X, max_k=10, p_max=None):
    """Park et al. 2020 NME-SC on unit-norm rows X -> labels."""
    from sklearn.cluster import SpectralClustering
    n = len(X)
    if n < 3:
        return np.zeros(n, int), 0, 1
    A = np.clip(X @ X.T, -1, 1)
    p_max = p_max or max(2, min(n - 1, int(n * 0.25)))
    best = None
    for p in range(1, p_max + 1):
        B = np.zeros_like(A)
        idx = np.argsort(-A, axis=1)[:, :p]
        rows = np.arange(n)[:, None]
        B[rows, idx] = 1.0
        B = (B + B.T) / 2
        L = np.diag(B.sum(1)) - B
        lam = np.sort(np.linalg.eigvalsh(L))
        lam_k = lam[: min(max_k, n - 1) + 1]
        gaps = np.diff(lam_k)
        k = int(np.argmax(gaps)) + 1
        g = gaps.max() / (lam.max() + 1e-10)
        r = p / (g + 1e-10)
        if best is None or r < best[0]:
            best = (r, p, k, B)
    _, p, k, B = best
    if k < 2:
        return np.zeros(n, int), p, k
    lab = SpectralClustering(n_clusters=k, affinity="precomputed", random_state=0, assign_labels="kmeans").fit_predict(B)
    return lab, p, k

def spectral_clusters(a, options, c, warnings):
    C, F, S = a.hard.shape
    active = a.hard.sum(1) > 0
    valid = ~np.isnan(a.embeddings).any(-1)
    keys, vecs = [], []
    for ci in range(C):
        for par in np.unique(a.parents[ci][a.parents[ci] >= 0]):
            cols = np.flatnonzero((a.parents[ci] == par) & valid[ci])
            if len(cols):
                v = a.embeddings[ci, cols].mean(0)
                keys.append((ci, par)); vecs.append(v / np.linalg.norm(v))
    X = np.stack(vecs)
    lab, p, k = nme_sc(X)
    spectral_clusters.info = (len(X), p, k)
    lab = np.unique(lab, return_inverse=True)[1]
    out = np.full((C, S), -2, np.int64)
    for (ci, par), l in zip(keys, lab):
        out[ci, a.parents[ci] == par] = l
    out[~active] = -2
    return out, int(lab.max()) + 1

orig = P.cluster_chunks
for name in sys.argv[1].split(","):
    label = name if len(name) < 40 else name[:20] + f"...x{name.count('+')+1}"
    samples, ref, uem, a = case(name)
    row = []
    for tag, fn in (("ahc", orig), ("nme-sc", spectral_clusters)):
        P.cluster_chunks = fn
        r = d.finish(samples, a, DiarizationOptions())
        m = der(ref, r.segments, uem=uem, collar=0.25)
        extra = f" n/p/k={spectral_clusters.info}" if tag == "nme-sc" else ""
        row.append(f"{tag} {m['der']*100:5.1f}% {len(r.speakers)}/{len({t.speaker for t in ref})}{extra}")
    P.cluster_chunks = orig
    print(f"{label:28s} | " + " | ".join(row), flush=True)
