import asyncio, sys, numpy as np
from pathlib import Path
from bench.router_eval import CachedWhisper, CachedSidecar, transcribe_in_process
from bench.eval_der import read_reference
from server.core.audio import decode_audio
from pyannote.core import Annotation, Segment
cache = Path("/tmp/link/cache")
f = Path(sys.argv[1])
w, s = CachedWhisper("whisper", None, cache), CachedSidecar("sidecar", None, cache)
body, _ = asyncio.run(transcribe_in_process(decode_audio(f.read_bytes()), w, s))
ds = [a for a in s.answers if hasattr(a, "turns")]
ref_turns, uem = read_reference(f)
ref = Annotation()
for t in ref_turns: ref[Segment(t.start, t.end)] = t.speaker
off = 0.0
for k, d in enumerate(ds):
    hyp = Annotation()
    # window offsets: window 0 starts at 0; window 1 starts where? take from plan: assume the turns are window-relative
    for t in d.turns: hyp[Segment(t.start, t.end)] = t.speaker
    print("window", k)
    for sp in hyp.labels():
        tl = hyp.label_timeline(sp)
        print("  ", sp, round(tl.duration(), 1), {r: round(ref.label_timeline(r).crop(tl).duration() if False else sum((a & b).duration for a in tl for b in ref.label_timeline(r) if a.intersects(b)), 1) for r in ref.labels()})
