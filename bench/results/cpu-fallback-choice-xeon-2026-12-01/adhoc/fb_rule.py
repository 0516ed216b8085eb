"""Fallback choice when every temperature fails: openai (hottest) vs faster-whisper (most probable), side by side."""
import sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
import numpy as np
from bench.audio_sets import resolve_audio, WORKLOADS
from bench.metrics import word_error_rate
from server.core.audio import decode_audio
import jax_models.engine as E
from jax_models.engine import WhisperEngine, TranscribeOptions

real_pick = E.pick_fallback
def openai_pick(failed, *a, **k):  # openai/whisper: the first passing decode, else the last (hottest)
    return next((k for k, f in enumerate(failed) if not f), len(failed) - 1)
eng = WhisperEngine(str(Path.home() / ".cache/chorus/models/whisper-base"), batch_size=8, quantization="int8", workers=2)
eng.warmup()
for wl in sys.argv[1].split(","):
    items = resolve_audio([WORKLOADS[wl]], Path.home() / ".cache/chorus/bench")
    audio = [decode_audio(i.path.read_bytes()) for i in items]
    total = sum(i.duration_s for i in items)
    for fmt in ("verbose", "text"):
        opts = TranscribeOptions(language="en", without_timestamps=(fmt == "text"))
        for rule in ("openai", "faster-whisper", "openai", "faster-whisper"):
            E.pick_fallback = openai_pick if rule == "openai" else real_pick
            before = eng.fallback_stats()
            t0 = time.perf_counter()
            with ThreadPoolExecutor(8) as ex:
                outs = list(ex.map(lambda x: eng.transcribe(x, opts).text, audio))
            wall = time.perf_counter() - t0
            after = eng.fallback_stats()
            kept = {t: after["kept"].get(t, 0) - before["kept"].get(t, 0) for t in sorted(set(after["kept"]))}
            refs = [i.reference for i in items]
            wer = word_error_rate(refs, outs)["wer"] if all(refs) else None
            print(f"{wl:9s} {fmt:7s} {rule:15s} RTFx {total/wall:6.2f} WER {'' if wer is None else f'{100*wer:.1f}'} kept {kept}", flush=True)
E.pick_fallback = real_pick
eng.close()
