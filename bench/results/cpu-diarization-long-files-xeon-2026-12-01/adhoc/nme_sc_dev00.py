import numpy as np, torch
torch.set_num_threads(2)
from bench.diarization_der import load_case, DATA
from torch_models.service import build_diarizer
from torch_models.settings import SidecarSettings
from scipy.linalg import eigh
d = build_diarizer(SidecarSettings())
x, ref, uem = load_case("dev00", DATA)
a = d.analyse(x)
E = a.embeddings.reshape(-1, a.embeddings.shape[-1]); E = E[~np.isnan(E).any(1)]
E = E / np.linalg.norm(E, axis=1, keepdims=True); n = len(E)
S = E @ E.T; print("n", n, "cos pct", np.percentile(S[np.triu_indices(n,1)], [5,25,50,75,95]).round(2))
np.fill_diagonal(S, -np.inf); order = np.argsort(-S, axis=1)
for p in [1,2,3,5,8,12,16,20,25,30]:
    if p >= n: break
    g = np.zeros((n,n)); np.put_along_axis(g, order[:, :p], 1.0, axis=1); g = 0.5*(g+g.T)
    lap = np.diag(g.sum(1)) - g
    lam = eigh(lap, eigvals_only=True)
    gap = np.diff(lam[:13]); k = int(np.argmax(gap))
    print(p, "k", k+1, "gap", gap[k].round(3), "top", lam[-1].round(2), "ratio", round((p/n)/(gap[k]/lam[-1]), 3), "lam", lam[:6].round(3))
