import numpy as np, torch
torch.set_num_threads(2)
from bench.diarization_der import load_case, DATA
from torch_models.service import build_diarizer
from torch_models.settings import SidecarSettings
from scipy.cluster.hierarchy import linkage, fcluster
d = build_diarizer(SidecarSettings())
for name in ("dev00+dev01+trn00+trn08", "dev00+dev01+trn00+trn08+dev00+dev01+trn00+trn08"):
    x, ref, uem = load_case(name, DATA)
    a = d.analyse(x)
    E = a.embeddings.reshape(-1, a.embeddings.shape[-1]); E = E[~np.isnan(E).any(1)]
    E = E / np.linalg.norm(E, axis=1, keepdims=True)
    Z = linkage(E.astype(np.float64), method="centroid", metric="euclidean")
    cl = fcluster(Z, 0.8, criterion="distance")
    ids, cnt = np.unique(cl, return_counts=True)
    print(name[:30], "n", len(E), "clusters >=12:", sorted(cnt[cnt >= 12].tolist(), reverse=True), "small:", int((cnt < 12).sum()), "last merges", np.round(Z[-8:, 2], 3))
