import numpy as np
from bench.diarization_der import load_case, DATA
from bench.diarization_loss import reference_count, scored_mask
fs, fd = 0.016875, 0.0619375
for name in ("dev00","dev01","trn00","trn08"):
    x, ref, uem = load_case(name, DATA); n = int(len(x)/16000/fs)
    r = reference_count(ref, n, fs, fd); m = scored_mask(uem, n, fs, fd)
    tot = (r*m).sum()
    print(name, "speaker-time in frames with >=2 ref speakers: %.1f %%" % (100*(r*m*(r>=2)).sum()/tot),
          "; beyond 2: %.1f %%" % (100*(np.maximum(r-2,0)*m).sum()/tot))
