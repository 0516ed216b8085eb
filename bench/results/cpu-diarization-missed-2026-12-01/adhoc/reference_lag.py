import numpy as np
from bench.diarization_der import load_case, DATA
from bench.diarization_loss import reference_count, scored_mask, _frame_levels
fs, fd = 0.016875, 0.0619375
for name in ("dev00","dev01","trn00","trn08"):
    x, ref, uem = load_case(name, DATA)
    n = int(len(x)/16000/fs)
    db = _frame_levels(np.asarray(x,np.float32), n, fs, fd)
    loud = db > np.median(db[db>-200]) - 0  # frames above the clip's median level
    best=[]
    for lag_s in np.arange(-3,3.01,0.1):
        sh=[type(t)(t.start+lag_s, t.end+lag_s, t.speaker) for t in ref]
        r = reference_count(sh, n, fs, fd) > 0
        m = scored_mask(uem, n, fs, fd)
        # agreement between reference speech and energy above -55 dBFS
        e = db > -55
        best.append((float(((r==e)&m).sum()/m.sum()), round(lag_s,1)))
    best.sort(reverse=True)
    z=[b for b in best if b[1]==0.0][0]
    print(name, 'best', best[:3], 'at 0:', z, 'dur', len(x)/16000)
