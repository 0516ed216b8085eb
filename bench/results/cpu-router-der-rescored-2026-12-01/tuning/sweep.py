"""TURN_REACH_S sweep, replayed from recorded backend answers (bench.router_eval --cache).

    PYTHONPATH=. python bench/results/cpu-router-der-rescored-2026-12-01/tuning/sweep.py CACHE OUT \\
        ../shared/data/pyannote_ami_dev00.wav ../shared/data/pyannote_ami_dev01.wav --overlap-meetings 8
"""

import json
import sys

import server.router.merge as merge
from bench.router_eval import main

cache, out, args = sys.argv[1], sys.argv[2], sys.argv[3:]
for reach in (float("inf"), 1.0, 0.5, 0.3, 0.2, 0.1, 0.0):
    merge.TURN_REACH_S = reach
    js = f"{out}/reach-{reach:g}.json"
    main(["--cache", cache, "--collar", "0", "--collar", "0.25", *args, "--json-out", js], standalone_mode=False)
    rows = json.load(open(js))["files"]
    for c in ("0.25", "0.0"):

        def mean(kind, key="der", c=c, rows=rows):
            v = [r["by_collar"][c][key] for r in rows if kind in r["file"]]
            return sum(v) / len(v) if v else float("nan")

        print(
            f"REACH {reach:g} collar {c}: AMI {mean('ami'):.2%} (FA {mean('ami', 'der_false_alarm'):.2%}, miss "
            f"{mean('ami', 'der_missed'):.2%}) meetings {mean('meeting'):.2%} (FA "
            f"{mean('meeting', 'der_false_alarm'):.2%}, miss {mean('meeting', 'der_missed'):.2%})",
            flush=True,
        )
