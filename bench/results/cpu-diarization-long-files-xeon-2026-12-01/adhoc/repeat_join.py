"""Join a wav (+ its .rttm/.uem) N times: python repeat_join.py IN.wav N OUT.wav"""
import sys, soundfile as sf, numpy as np
from pathlib import Path
src, n, out = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
x, sr = sf.read(src, dtype="float32")
dur = len(x) / sr
sf.write(out, np.concatenate([x] * n), sr)
name = out.stem
rt, ue = [], []
for k in range(n):
    for l in open(src.with_suffix(".rttm")):
        p = l.split(); p[1] = name; p[3] = f"{float(p[3]) + k * dur:.3f}"; rt.append(" ".join(p))
    for l in open(src.with_suffix(".uem")):
        p = l.split(); p[0] = name; p[2] = f"{float(p[2]) + k * dur:.3f}"; p[3] = f"{float(p[3]) + k * dur:.3f}"; ue.append(" ".join(p))
out.with_suffix(".rttm").write_text("\n".join(rt) + "\n"); out.with_suffix(".uem").write_text("\n".join(ue) + "\n")
print(out, len(x) * n / sr)
