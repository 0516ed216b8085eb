"""Hostile and odd uploads (``bench.bad_inputs``) against the whisper server (tiny model) and the router
(fake backends): each gets its expected status in OpenAI's error shape, and the server keeps serving."""

from __future__ import annotations

import asyncio
import math
import time

import httpx
import numpy as np
import psutil
import pytest

from bench.bad_inputs import NAMES, UPLOAD_NAMES, bad_inputs, silence_aac
from server.core.audio import SAMPLE_RATE, to_wav_bytes

MAX_AUDIO_S = 600.0
MAX_UPLOAD_MB = 8.0


@pytest.fixture(scope="module")
def corpus(speech_samples) -> dict:
    entries = bad_inputs(speech_samples, max_audio_s=MAX_AUDIO_S, max_upload_mb=MAX_UPLOAD_MB)
    assert [e.name for e in entries] == list(NAMES)
    return {e.name: e for e in entries}


@pytest.fixture(scope="module")
def whisper_app(tiny_engine, tiny_whisper_dir, cache_dir):
    from jax_models.whisper_app import create_app
    from server.kit.settings import WhisperSettings

    settings = WhisperSettings(
        model=str(tiny_whisper_dir),
        warmup=False,
        cache_dir=cache_dir,
        max_audio_s=MAX_AUDIO_S,
        max_upload_mb=MAX_UPLOAD_MB,
        temperature_fallback=False,  # the random model's windows all fail the thresholds: 1 decode, not 6
    )
    return create_app(settings, engine=tiny_engine)


@pytest.fixture(scope="module")
def router_app():
    from tests.test_router import router_app as make

    return make(max_audio_s=MAX_AUDIO_S, max_upload_mb=MAX_UPLOAD_MB)


def check(entry, r: httpx.Response) -> None:
    assert r.status_code == entry.status, f"{entry.name}: {r.status_code} {r.text[:300]}"
    if entry.status >= 400:
        body = r.json()
        assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
        err = body["error"]
        assert err["message"] and err["type"] in ("invalid_request_error", "server_error")
        if entry.code is not None:
            assert err["code"] == entry.code, (entry.name, err)
        if entry.param is not None:
            assert err["param"] == entry.param, (entry.name, err)
    elif entry.duration_s is not None:
        assert abs(r.json()["usage"]["seconds"] - entry.duration_s) <= 1, (entry.name, r.json())


async def post(app, entry) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        return await http.post("/v1/audio/transcriptions", **entry.httpx_kwargs())


@pytest.mark.parametrize("name", NAMES)
async def test_whisper_server_answers_each_bad_input(whisper_app, corpus, name):
    check(corpus[name], await post(whisper_app, corpus[name]))


@pytest.mark.parametrize("name", NAMES)
async def test_router_answers_each_bad_input(router_app, corpus, name):
    check(corpus[name], await post(router_app, corpus[name]))


async def test_the_whisper_server_keeps_serving_through_the_whole_corpus(whisper_app, corpus, speech_samples):
    """Good requests interleaved with every bad one, all at once: the good answers are what they are
    alone, and no file descriptor (spooled upload) is left open."""
    good = {
        "files": {"file": ("a.wav", to_wav_bytes(speech_samples))},
        "data": {"model": "whisper-1", "language": "en"},
    }
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=whisper_app), base_url="http://t") as http:
        alone = (await http.post("/v1/audio/transcriptions", **good)).json()["text"]
        fds = psutil.Process().num_fds()
        calls = []
        for i, entry in enumerate(corpus.values()):
            calls.append(http.post("/v1/audio/transcriptions", **entry.httpx_kwargs()))
            if i % 4 == 0:
                calls.append(http.post("/v1/audio/transcriptions", **good))
        answers = await asyncio.gather(*calls)
        bad = [r for i, r in enumerate(answers) if i % 5 != 1]
        for entry, r in zip(corpus.values(), bad):
            check(entry, r)
        texts = [r.json()["text"] for i, r in enumerate(answers) if i % 5 == 1]
        assert texts == [alone] * math.ceil(len(corpus) / 4)
        await asyncio.sleep(0.1)
        assert psutil.Process().num_fds() <= fds
        assert (await http.get("/health")).status_code == 200


async def test_decode_timeout_stops_a_pathological_file(tiny_engine, cache_dir):
    """Two hours of AAC with a generous duration limit but a 50 ms decode deadline: 400 in well under
    the ~1-4 s a full decode takes, with its own code."""
    from jax_models.whisper_app import create_app
    from server.kit.settings import WhisperSettings

    app = create_app(
        WhisperSettings(model="tiny", warmup=False, cache_dir=cache_dir, max_audio_s=4 * 3600, decode_timeout_s=0.05),
        engine=tiny_engine,
    )
    data = silence_aac(7200)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        t0 = time.monotonic()
        r = await http.post(
            "/v1/audio/transcriptions", data={"model": "whisper-1"}, files={"file": ("silence.aac", data)}
        )
        assert time.monotonic() - t0 < 1.0
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "audio_decode_timeout" and err["param"] == "file" and "0.05 seconds" in err["message"]


def test_decode_audio_limits():
    from server.core.audio import (
        AudioDecodeError,
        AudioDecodeTimeoutError,
        AudioTooLongError,
        AudioTooShortError,
        decode_audio,
    )

    two_hours = silence_aac(7200)
    with pytest.raises(AudioTooLongError):
        decode_audio(two_hours, max_duration_s=60)
    with pytest.raises(AudioDecodeTimeoutError):
        decode_audio(two_hours, timeout_s=0.01)
    tone = np.sin(np.arange(SAMPLE_RATE) / 5).astype(np.float32) * 0.5
    with pytest.raises(AudioTooShortError, match="Minimum audio length is 0.1 seconds"):
        decode_audio(to_wav_bytes(tone[: SAMPLE_RATE // 10 - 1]))
    assert decode_audio(to_wav_bytes(tone[: SAMPLE_RATE // 10])).shape == (SAMPLE_RATE // 10,)
    with pytest.raises(AudioDecodeError) as info:  # a plain message, not libav's errno and path
        decode_audio(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    assert "Errno" not in str(info.value) and "<none>" not in str(info.value), str(info.value)
    out = decode_audio(to_wav_bytes(tone), max_duration_s=1.0, timeout_s=10)
    assert out.shape == tone.shape and math.isclose(float(np.abs(out - tone).max()), 0, abs_tol=1e-4)


# --- the sidecar -------------------------------------------------------------------------------------


class FakeDiarizer:
    """One turn over whatever it is given; counts its calls (bad input must never reach it)."""

    backend = "pyannote"
    max_speakers = None

    def __init__(self) -> None:
        self.calls = 0

    def describe(self) -> dict[str, str]:
        return {"backend": self.backend, "diarizer": "fake", "embedder": "fake", "embedding_dim": "2"}

    def diarize(self, samples, options=None, *, include_probabilities=False):
        from server.core.transcript import SpeakerTurn
        from torch_models.diarization import DiarizationResult

        self.calls += 1
        duration = len(samples) / SAMPLE_RATE
        return DiarizationResult(
            (SpeakerTurn(0.0, duration, "speaker_0"),), ("speaker_0",), duration, {"backend": "fake"}
        )


@pytest.mark.parametrize("name", UPLOAD_NAMES)  # the form fields are the whisper server's
async def test_sidecar_answers_each_bad_input(corpus, name):
    """``POST /v1/diarize`` gets the same status, code and param as the whisper server for every upload
    problem (audio shorter than 0.1 s: 400 ``audio_too_short``), and only good audio reaches the diarizer."""
    from torch_models.settings import SidecarSettings
    from torch_models.sidecar_app import create_app

    entry = corpus[name]
    fake = FakeDiarizer()
    app = create_app(
        SidecarSettings(warmup=False, max_audio_s=MAX_AUDIO_S, max_window_s=MAX_AUDIO_S, max_upload_mb=MAX_UPLOAD_MB),
        diarizer=fake,
    )
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
            r = await http.post("/v1/diarize", **entry.httpx_kwargs())
    assert r.status_code == entry.status, f"{entry.name}: {r.status_code} {r.text[:300]}"
    if entry.status >= 400:
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["message"], err
        if entry.code is not None:
            assert err["code"] == entry.code, (entry.name, err)
        if entry.param is not None:
            assert err["param"] == entry.param, (entry.name, err)
        assert fake.calls == 0
    else:
        assert fake.calls == 1
        if entry.duration_s is not None:
            assert abs(r.json()["duration"] - entry.duration_s) <= 1, (entry.name, r.json())
