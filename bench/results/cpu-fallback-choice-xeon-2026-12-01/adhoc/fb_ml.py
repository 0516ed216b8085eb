import time
from pathlib import Path
import jiwer
from server.core.audio import decode_audio
import jax_models.engine as E
from jax_models.engine import WhisperEngine, TranscribeOptions
from bench.metrics import text_normalizer
norm = text_normalizer("basic") if True else None
real_pick = E.pick_fallback
eng = WhisperEngine(str(Path.home() / ".cache/chorus/models/whisper-base"), batch_size=8, quantization="none", workers=1)
rows = [l.strip().split("|") for l in open("/tmp/ml/list.txt")]
for fmt in ("verbose", "text"):
    for rule in ("openai", "faster-whisper"):
        E.pick_fallback = (lambda f, *a, **k: next((i for i, x in enumerate(f) if not x), len(f) - 1)) if rule == "openai" else real_pick
        refs, hyps = [], []
        for lang, text in rows:
            x = decode_audio(open(f"/tmp/ml/{lang}.wav", "rb").read())
            out = eng.transcribe(x, TranscribeOptions(language=lang, without_timestamps=(fmt == "text")))
            refs.append(norm(text)); hyps.append(norm(out.text))
            print(f"  {fmt} {rule} {lang}: {out.text[:90]}  T={[s.temperature for s in out.segments]}", flush=True)
        print(f"{fmt} {rule}: WER {100*jiwer.wer(refs, hyps):.1f} CER {100*jiwer.cer(refs, hyps):.1f}", flush=True)
