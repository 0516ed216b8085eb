"""Cache analyse() per clip/config: python cache.py step piece clips..."""
import pickle, sys, time
from dataclasses import replace
from pathlib import Path
from bench.diarization_der import load_case, DATA
from torch_models.service import build_diarizer
from torch_models.settings import SidecarSettings
import torch
step, piece = float(sys.argv[1]), float(sys.argv[2])
d = build_diarizer(SidecarSettings())
d.config = replace(d.config, step_s=step, piece_s=piece or None)
for name in sys.argv[3:]:
    out = Path(f"/tmp/diarsc/cache/{name}_s{step:g}_p{piece:g}.pkl")
    if out.exists(): continue
    samples, ref, uem = load_case(name, DATA)
    t = time.perf_counter()
    a = d.analyse(samples)
    print(name, round(time.perf_counter()-t,1), a.hard.shape, flush=True)
    pickle.dump(dict(samples=samples, ref=ref, uem=uem, a=a), out.open("wb"))
