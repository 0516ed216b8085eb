"""DER when the speaker count per frame is the reference's (capped at 2, segmentation-3.0's ceiling),
everything else (windows, embeddings, clustering, reconstruct, turns) as the sidecar does it."""
import math
from dataclasses import replace

import numpy as np
import torch

from bench.diarization_der import DATA, load_case
from bench.diarization_loss import reference_count
from bench.eval_der import der
from torch_models.diarization import DiarizationOptions
from torch_models.pyannote_diarizer import aggregate, cluster_chunks, clustered_scores, reconstruct, to_turns
from torch_models.service import build_diarizer
from torch_models.settings import SidecarSettings

torch.set_num_threads(1)
d = build_diarizer(SidecarSettings())
seg, c = d.segmentation, d.config
for name in ("dev00", "dev01", "trn00", "trn08"):
    x, ref, uem = load_case(name, DATA)
    a = d.analyse(x)
    clusters, k = cluster_chunks(a, DiarizationOptions(), c, [])
    act = aggregate(clustered_scores(a.hard, clusters, k), a.offsets, skip_average=True)
    probs = aggregate(clustered_scores(a.soft, clusters, k), a.offsets)
    n = min(act.shape[0], int(math.ceil(a.duration / seg.frame_step)))
    for label, count in (("model count", a.count[:n]),
                         ("reference count (max 2)", np.minimum(reference_count(ref, n, seg.frame_step, seg.frame_duration), 2))):
        binary = reconstruct(act[:n], count)
        turns = to_turns(binary, probs[:n], seg.frame_step, seg.frame_duration, a.duration, c.min_duration_off)
        out = []
        for collar in (0.0, 0.25):
            s = der(ref, turns, uem=uem, collar=collar)
            out.append(f"c{collar:g} {s['der']:.1%} (miss {s['missed']:.1%} FA {s['false_alarm']:.1%} conf {s['confusion']:.1%})")
        print(f"{name} {label:24s} " + "  ".join(out), flush=True)
