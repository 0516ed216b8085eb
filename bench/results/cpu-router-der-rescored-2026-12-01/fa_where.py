"""Where router diarized_json segments reach outside their speaker's sidecar turns: seconds by kind."""

import json
import sys

from pyannote.core import Segment as S
from pyannote.core import Timeline

rows = json.load(open(sys.argv[1]))["files"]
only = sys.argv[2].split(",") if len(sys.argv) > 2 else None
for r in rows:
    if only and not any(o in r["file"] for o in only):
        continue
    if "sidecar_turns" not in r:
        continue
    by = {}
    order = list(dict.fromkeys(t["speaker"] for t in sorted(r["sidecar_turns"], key=lambda t: t["start"])))
    name = {k: "ABCDEFGH"[i] for i, k in enumerate(order)}
    for t in r["sidecar_turns"]:
        by.setdefault(name[t["speaker"]], []).append(S(t["start"], t["end"]))
    kinds = {"edge": 0.0, "gap": 0.0, "none": 0.0}
    for s in r["segments"]:
        if not s["text"]:
            continue
        seg = S(s["start"], s["end"])
        mine = Timeline(by.get(s["speaker"], [])).support()
        inside = mine.crop(seg)
        if not inside:
            kinds["none"] += seg.duration
            continue
        lo, hi = inside[0].start, inside[-1].end
        kinds["edge"] += max(0, lo - seg.start) + max(0, seg.end - hi)
        kinds["gap"] += sum(g.duration for g in inside.gaps(S(lo, hi)))
    print(f"{r['file']:32s} outside own turns: " + ", ".join(f"{k} {v:.2f}s" for k, v in kinds.items()))
