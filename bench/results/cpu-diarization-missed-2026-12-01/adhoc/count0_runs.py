import numpy as np
from bench.diarization_der import load_case, DATA
from bench.diarization_loss import reference_count, scored_mask, _frame_levels
from torch_models.service import build_diarizer
from torch_models.settings import SidecarSettings
import torch; torch.set_num_threads(1)
d = build_diarizer(SidecarSettings()); fs, fd = d.segmentation.frame_step, d.segmentation.frame_duration
for name in ("trn00","trn08"):
    x, ref, uem = load_case(name, DATA); x=np.asarray(x,np.float32)
    a = d.analyse(x); n = int(np.ceil(a.duration/fs)); count=a.count[:n]
    refc = reference_count(ref, n, fs, fd); db=_frame_levels(x,n,fs,fd)
    lost = (refc>0)&(count==0)
    on=np.concatenate([[0],lost.astype(int),[0]]); e=np.flatnonzero(np.diff(on))
    runs=sorted(zip(e[::2],e[1::2]), key=lambda r:r[0]-r[1])[:8]
    print(name)
    for a0,b0 in sorted(runs):
        t0=a0*fs+fd/2; t1=b0*fs+fd/2
        who=[t.speaker for t in ref if t.start<t1 and t.end>t0]
        spans=[(t.speaker,round(t.start,2),round(t.end,2)) for t in ref if t.start<t1 and t.end>t0]
        print(f'  {t0:6.2f}-{t1:6.2f} ({t1-t0:.2f} s) level median {np.median(db[a0:b0]):.1f} max {db[a0:b0].max():.1f} dBFS; ref turns {spans}')
