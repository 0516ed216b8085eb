import asyncio, sys, numpy as np
from pathlib import Path
from bench.router_eval import CachedWhisper, CachedSidecar, transcribe_in_process
from server.core.audio import decode_audio
cache = Path("/tmp/link/cache")
for f in sys.argv[1:]:
    w, s = CachedWhisper("whisper", None, cache), CachedSidecar("sidecar", None, cache)
    body, _ = asyncio.run(transcribe_in_process(decode_audio(Path(f).read_bytes()), w, s))
    ds = [a for a in s.answers if hasattr(a, "turns")]
    print(f, "windows", len(ds))
    fps, tags = [], []
    for k, d in enumerate(ds):
        sp = {}
        for t in d.turns: sp[t.speaker] = sp.get(t.speaker, 0) + t.end - t.start
        print("  window", k, "turn span", round(min(t.start for t in d.turns),1), round(max(t.end for t in d.turns),1), {a: round(b,1) for a,b in sp.items()}, "no fp:", [x for x in sp if x not in d.fingerprints])
        for lab, fp in d.fingerprints.items():
            fps.append(np.asarray(fp)); tags.append(f"{k}:{lab}")
    F = np.stack(fps); F /= np.linalg.norm(F, axis=1, keepdims=True)
    np.set_printoptions(precision=2, suppress=True, linewidth=200)
    print("  ", tags); print(F @ F.T)
    print("  router speakers", sorted({x["speaker"] for x in body["segments"]}))
