"""Long-form: a two-minute two-voice espeak-ng conversation with a known script and turn boundaries,
through the router with the real Whisper base model and the sidecar's default offline diarizer
(pyannote segmentation-3.0 + CAM++, overlap-aware), all in-process over ASGI.

Checks no words are lost at chunk cuts (WER), who-spoke-when (DER of the returned segments), and
that speaker labels stay consistent across chunks and across diarization windows (cpWER, meeteval).
The router's diarization window is capped at 30 s, so the ~70 s conversation (3 chunks) is
diarized in 3 sidecar calls whose chunk-local speakers must be linked into one label per voice: the
same boundaries the five-minute ``bench.router_eval.long_conversation`` crosses, at under 1/4 of its
cost (the test took ~80 s of a 2-core CPU with the first 24 lines and 60 s windows).
"""

from __future__ import annotations

import time

import httpx
import pytest

from bench.router_eval import LONG_DIALOGUE, LONG_PAUSES_S, Reference, score
from jax_models.whisper_app import create_app as whisper_app
from server.core.audio import to_wav_bytes
from server.kit.settings import RouterSettings, WhisperSettings
from server.router.app import create_app as router_app
from tests.conftest import make_client
from torch_models.synth import espeak_available

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed")]

LINES = 14  # the first 14 lines of the five-minute dialogue: ~70 s with its pauses
WINDOW_S = 30.0  # diarization window cap: ~70 s / 30 s -> 3 sidecar calls


class CountingTransport(httpx.ASGITransport):
    """An ASGI transport that counts the requests per path (to see the diarization windows)."""

    def __init__(self, app):
        super().__init__(app=app)
        self.paths: list[str] = []

    async def handle_async_request(self, request):
        self.paths.append(request.url.path)
        return await super().handle_async_request(request)


async def test_seventy_seconds_two_voices_across_diarization_windows(base_engine, base_model_dir, cache_dir):
    from torch_models.settings import SidecarSettings
    from torch_models.sidecar_app import create_app as sidecar_app
    from torch_models.synth import conversation

    lines = LONG_DIALOGUE[:LINES]
    conv = conversation([("A" if i % 2 == 0 else "B", text) for i, text in enumerate(lines)], pauses_s=LONG_PAUSES_S)
    samples, ref = conv.samples, Reference(conv.turns, lines)
    duration = len(samples) / 16000
    assert duration > 2 * WINDOW_S  # at least three diarization windows
    whisper = whisper_app(
        WhisperSettings(model=str(base_model_dir), warmup=False, cache_dir=cache_dir), engine=base_engine
    )
    sidecar = sidecar_app(SidecarSettings(warmup=False))
    sidecar_transport = CountingTransport(sidecar)
    async with sidecar.router.lifespan_context(sidecar):
        router = router_app(
            RouterSettings(diarization_window_s=WINDOW_S),
            transports={"whisper": httpx.ASGITransport(app=whisper), "sidecar": sidecar_transport},
        )
        client = make_client(router)
        t0 = time.perf_counter()
        out = await client.audio.transcriptions.create(
            model="gpt-4o-transcribe-diarize",
            file=("long.wav", to_wav_bytes(samples)),
            response_format="diarized_json",
            timeout=1200,
        )
        wall = time.perf_counter() - t0
    assert not (out.model_extra or {}).get("warnings")
    windows = sum(p.endswith("/diarize") for p in sidecar_transport.paths)
    assert windows >= 3, sidecar_transport.paths  # speakers were linked across sidecar calls
    figures = score([s.model_dump() for s in out.segments], ref)
    print(
        f"\nlong-form {duration:.0f}s ({windows} diarization windows) in {wall:.0f}s: WER {figures['wer']:.1%}  "
        f"DER {figures['der']:.1%} (miss {figures['der_missed']:.1%}, FA {figures['der_false_alarm']:.1%}, "
        f"conf {figures['der_confusion']:.1%})  cpWER {figures['cpwer']:.1%}  "
        f"speakers {figures['speakers_hyp']}/{figures['speakers_ref']}"
    )
    assert figures["wer"] < 0.20
    assert figures["der"] < 0.30
    assert figures["speakers_hyp"] == 2  # one label per voice across all chunks and windows
    assert figures["cpwer"] < 0.25  # consistent labels: cpWER stays close to the WER
    assert figures["cpwer"] - figures["wer"] < 0.08
    assert {s.speaker for s in out.segments} == {"A", "B"} and out.segments[0].speaker == "A"
