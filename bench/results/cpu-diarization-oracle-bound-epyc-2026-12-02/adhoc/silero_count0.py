"""Probe: do silero-vad's frame probabilities mark the speech segmentation-3.0's count drops (count 0)?"""
import pickle, sys, numpy as np, torch
from pathlib import Path
from bench.diarization_der import DATA, load_case
from bench.diarization_loss import reference_count, scored_mask
from torch_models.pyannote_diarizer import PyannoteDiarizer

torch.set_num_threads(1)
clips = sys.argv[1].split(",")
cache = Path("/tmp/vadx/cache")  # reused by oracle_cluster.py; cache.mkdir(exist_ok=True)
d = PyannoteDiarizer()
from silero_vad import load_silero_vad
vad = load_silero_vad()

def silero_probs(x):
    vad.reset_states()
    w = 512
    n = len(x) // w
    ps = []
    for i in range(n):
        ps.append(float(vad(torch.from_numpy(x[i*w:(i+1)*w].copy()), 16000)))
    return np.array(ps, np.float32)  # one per 32 ms

for name in clips:
    f = cache / f"{name}.pkl"
    if f.exists():
        samples, ref, uem, a, sp = pickle.loads(f.read_bytes())
    else:
        samples, ref, uem = load_case(name, DATA)
        a = d.analyse(samples)
        sp = silero_probs(samples)
        f.write_bytes(pickle.dumps((samples, ref, uem, a, sp)))
    seg = d.segmentation
    T = len(a.count)
    mid = np.arange(T) * seg.frame_step + seg.frame_duration / 2
    vp = sp[np.clip((mid / 0.032).astype(int), 0, len(sp) - 1)]
    rc = reference_count(ref, T, seg.frame_step, seg.frame_duration)
    m = scored_mask(uem, T, seg.frame_step, seg.frame_duration)
    miss0 = m & (rc > 0) & (a.count == 0)
    nonsp = m & (rc == 0) & (a.count == 0)
    line = [name, f"count0-missed {miss0.sum()*seg.frame_step:.1f}s", f"nonspeech-count0 {nonsp.sum()*seg.frame_step:.1f}s"]
    for th in (0.5, 0.3, 0.2, 0.1):
        line.append(f"th{th}: rec {(miss0 & (vp>th)).sum()*seg.frame_step:.1f}s fa {(nonsp & (vp>th)).sum()*seg.frame_step:.1f}s")
    print(" | ".join(line), flush=True)
