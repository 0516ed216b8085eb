from ev import *
import itertools
from sklearn.cluster import KMeans
d = diarizer()
CL = "dev00 dev01 syn3a syn3b syn4a syn4b".split()
def evaluate(tag, fn=None, config=None, clips=CL, piece=2.0):
    orig = P.agglomerative
    if fn: P.agglomerative = fn
    res = {}
    try:
        for n in clips:
            s, r = run(d, n, config=config, piece=piece, verbose=False)
            res[n] = (s["der"], len(r.speakers))
    finally:
        P.agglomerative = orig
    ami = np.mean([res[n][0] for n in clips if n.startswith("dev")]); syn = np.mean([res[n][0] for n in clips if n.startswith("syn")])
    print(f"{tag:40s} dev {ami:.1%} syn {syn:.1%} | " + " ".join(f"{n} {v[0]:.1%}/{v[1]}" for n, v in res.items()), flush=True)
    return res

def refine(x, labels, iters=10):
    for _ in range(iters):
        k = labels.max() + 1
        cents = np.stack([x[labels == j].mean(0) for j in range(k)])
        cents /= np.linalg.norm(cents, axis=1, keepdims=True)
        new = np.argmax(x @ cents.T, 1)
        new = np.unique(new, return_inverse=True)[1]
        if np.array_equal(new, labels): break
        labels = new
    return labels

def ahc_refine(x, threshold, mcs, lo, hi, frac=0.1):
    return refine(x, orig_agg(x, threshold, mcs, lo, hi, frac))
orig_agg = P.agglomerative
