"""Long-form: a five-minute two-voice espeak-ng conversation with a known script and turn boundaries,
through the router with the real Whisper base model and the sidecar's default offline diarizer
(pyannote segmentation-3.0 + CAM++, overlap-aware), all in-process over ASGI.

Checks no words are lost at chunk cuts (WER), who-spoke-when (DER of the returned segments), and
that speaker labels stay consistent across the ~11 chunks (cpWER, meeteval).
"""

from __future__ import annotations

import time

import httpx
import pytest

from bench.router_eval import long_conversation, score
from jax_models.whisper_app import create_app as whisper_app
from server.core.audio import to_wav_bytes
from server.kit.settings import RouterSettings, WhisperSettings
from server.router.app import create_app as router_app
from tests.conftest import make_client
from tests.speech import have_espeak

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not have_espeak(), reason="espeak-ng is not installed")]


async def test_five_minutes_two_voices(base_engine, base_model_dir, cache_dir):
    from torch_models.settings import SidecarSettings
    from torch_models.sidecar_app import create_app as sidecar_app

    samples, ref = long_conversation()
    duration = len(samples) / 16000
    assert duration >= 300
    whisper = whisper_app(WhisperSettings(model=str(base_model_dir), warmup=False, cache_dir=cache_dir), engine=base_engine)
    sidecar = sidecar_app(SidecarSettings(warmup=False))
    async with sidecar.router.lifespan_context(sidecar):
        router = router_app(RouterSettings(), transports={"whisper": httpx.ASGITransport(app=whisper),
                                                          "sidecar": httpx.ASGITransport(app=sidecar)})
        client = make_client(router)
        t0 = time.perf_counter()
        out = await client.audio.transcriptions.create(model="gpt-4o-transcribe-diarize",
                                                       file=("long.wav", to_wav_bytes(samples)),
                                                       response_format="diarized_json", timeout=1200)
        wall = time.perf_counter() - t0
    assert not (out.model_extra or {}).get("warnings")
    figures = score([s.model_dump() for s in out.segments], ref)
    print(f"\nlong-form {duration:.0f}s in {wall:.0f}s: WER {figures['wer']:.1%}  DER {figures['der']:.1%} "
          f"(miss {figures['der_missed']:.1%}, FA {figures['der_false_alarm']:.1%}, conf {figures['der_confusion']:.1%})"
          f"  cpWER {figures['cpwer']:.1%}  speakers {figures['speakers_hyp']}/{figures['speakers_ref']}")
    assert figures["wer"] < 0.20
    assert figures["der"] < 0.30
    assert figures["speakers_hyp"] == 2  # one label per voice across all chunks
    assert figures["cpwer"] < 0.25  # consistent labels: cpWER stays close to the WER
    assert figures["cpwer"] - figures["wer"] < 0.08
    assert {s.speaker for s in out.segments} == {"A", "B"} and out.segments[0].speaker == "A"
