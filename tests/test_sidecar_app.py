"""The sidecar over HTTP, in-process (``httpx.ASGITransport`` with the app's lifespan), including
the unmodified OpenAI SDK for the Phi-4 endpoints."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import threading
import time

import httpx
import numpy as np
import pytest

from server.core.audio import SAMPLE_RATE
from server.core.transcript import SpeakerTurn
from tests.sidecar_fixtures import (
    assert_openai_error,
    assert_turns_schema,
    build_tiny_phi4,
    espeak_conversation,
    pyannote_backend,
    tiny_nemo,
    tone,
    wav,
)
from torch_models.diarization import DiarizationResult
from torch_models.settings import SidecarSettings
from torch_models.sidecar_app import create_app
from torch_models.synth import DIALOGUE, espeak_available

BASE = "http://sidecar.test"


@contextlib.asynccontextmanager
async def serve(app):
    """Run the app's lifespan and yield an ``httpx.AsyncClient`` talking to it over ASGI."""
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as client:
            yield client


def settings(**kw) -> SidecarSettings:
    kw.setdefault("warmup", False)
    return SidecarSettings(**kw)


@pytest.fixture(scope="module")
def cluster():
    """The default offline backend (segmentation-3.0 + CAM++), loaded once per session."""
    return pyannote_backend()


@pytest.fixture(scope="module")
def talk_wav():
    if not espeak_available():
        pytest.skip("espeak-ng is not installed")
    conv = espeak_conversation()
    return wav(conv.samples), conv


@pytest.fixture(scope="module")
def phi_dir(tmp_path_factory):
    return build_tiny_phi4(tmp_path_factory.mktemp("phi4") / "tiny")


# --- health, readiness, models ---------------------------------------------------------------------


async def test_health_ready_metrics_and_models(cluster):
    app = create_app(settings(), diarizer=cluster)
    async with serve(app) as client:
        assert (await client.get("/health")).json()["status"] == "ok"
        ready = await client.get("/ready")
        assert ready.status_code == 200 and ready.json()["ready"] is True
        models = (await client.get("/v1/models")).json()
        assert models["object"] == "list"
        diar, emb, phi = models["data"]
        assert diar["id"] == "diarization" and diar["backend"] == "pyannote" and diar["status"] == "ready"
        assert "segmentation-3.0" in diar["diarizer"] and "CAM++" in diar["embedder"]
        assert diar["max_window_s"] == 300.0
        assert emb["dim"] == "192"
        assert phi["status"] == "not configured" and "--phi4-model" in phi["hint"]
        metrics = (await client.get("/metrics")).text
        assert 'chorus_requests_total{route="/v1/models",status="200"}' in metrics


async def test_not_ready_until_the_diarizer_loads():
    gate = threading.Event()

    def slow_factory(_settings):
        gate.wait(10)
        raise RuntimeError("weights unreachable")

    app = create_app(settings(), diarizer_factory=slow_factory)
    lifespan = app.router.lifespan_context(app)
    startup = asyncio.create_task(lifespan.__aenter__())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as client:
        await asyncio.sleep(0.05)
        ready = await client.get("/ready")
        assert ready.status_code == 503 and ready.json()["detail"] == "loading the diarizer"
        assert (await client.get("/health")).status_code == 200
        r = await client.post("/v1/diarize", files={"file": ("a.wav", wav(tone(1.0)), "audio/wav")})
        assert assert_openai_error(r, 503)["code"] == "not_ready"
        assert r.headers["retry-after"] == "5"
        gate.set()
        await startup  # start-up failed: the app keeps serving health and the reason
        ready = await client.get("/ready")
        assert ready.status_code == 503 and "weights unreachable" in ready.json()["detail"]
        models = (await client.get("/v1/models")).json()["data"][0]
        assert models["backend"] == "pyannote" and "weights unreachable" in models["status"]
        assert models["max_window_s"] == 300.0
    await lifespan.__aexit__(None, None, None)


# --- /v1/diarize with the offline backend ----------------------------------------------------------------


async def test_diarize_json_rttm_and_probabilities(cluster, talk_wav):
    data, conv = talk_wav
    app = create_app(settings(), diarizer=cluster)
    async with serve(app) as client:
        r = await client.post(
            "/v1/diarize", files={"file": ("talk.wav", data, "audio/wav")}, data={"include_probabilities": "true"}
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["duration"] == pytest.approx(conv.duration, abs=1e-3)
        assert body["speakers"] == ["speaker_0", "speaker_1"]
        assert_turns_schema(body["segments"], body["duration"])
        assert set(body["fingerprints"]) == {"speaker_0", "speaker_1"}
        assert all(len(v) == 192 for v in body["fingerprints"].values())
        probs = body["probabilities"]
        assert len(probs["values"][0]) == 2 and probs["frame_rate"] == pytest.approx(1 / 0.016875, abs=1e-3)
        assert body["models"]["backend"] == "pyannote"

        short = wav(espeak_conversation(DIALOGUE[:2]).samples)
        r = await client.post(
            "/v1/diarize",
            files={"file": ("my talk.wav", short, "audio/wav")},
            data={"response_format": "rttm", "num_speakers": "1"},
        )
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        lines = r.text.strip().splitlines()
        assert lines and all(x.startswith("SPEAKER my_talk 1 ") and " speaker_0 " in x for x in lines)
        assert len(lines[0].split()) == 10


async def test_diarize_errors_are_openai_shaped(cluster):
    app = create_app(settings(), diarizer=cluster)
    good = {"file": ("a.wav", wav(tone(1.0)), "audio/wav")}
    async with serve(app) as client:
        r = await client.post("/v1/diarize", data={"num_speakers": "2"}, files={"other": ("x", b"1")})
        assert_openai_error(r, 400, "file")
        r = await client.post("/v1/diarize", files={"file": ("a.wav", b"RIFF....garbage", "audio/wav")})
        assert assert_openai_error(r, 400, "file")["code"] == "invalid_file_format"
        r = await client.post("/v1/diarize", files=good, data={"response_format": "srt"})
        assert_openai_error(r, 400, "response_format")
        r = await client.post("/v1/diarize", files=good, data={"min_speakers": "3", "max_speakers": "2"})
        assert "larger than" in assert_openai_error(r, 400, "min_speakers")["message"]
        r = await client.post("/v1/diarize", files=good, data={"num_speakers": "zero"})
        assert_openai_error(r, 400, "num_speakers")
        r = await client.post("/v1/diarize", files=good, data={"speakers": "2"})
        assert "Unrecognized" in assert_openai_error(r, 400, "speakers")["message"]
        r = await client.post("/v1/diarize", json={"file": "x"})
        assert_openai_error(r, 415, "file")
        r = await client.get("/v1/diarize")
        assert_openai_error(r, 405)
        # a bad request never disturbs the next good one
        r = await client.post("/v1/diarize", files=good)
        assert r.status_code == 200 and r.json()["duration"] == pytest.approx(1.0)


async def test_audio_longer_than_the_limit(cluster):
    app = create_app(settings(max_audio_s=1.0), diarizer=cluster)
    async with serve(app) as client:
        r = await client.post("/v1/diarize", files={"file": ("a.wav", wav(tone(2.5)), "audio/wav")})
        assert assert_openai_error(r, 400, "file")["code"] == "audio_too_long"
    app = create_app(settings(max_window_s=2.0), diarizer=SlowDiarizer(0.0))
    async with serve(app) as client:
        assert (await client.get("/v1/models")).json()["data"][0]["max_window_s"] == 2.0
        r = await client.post("/v1/diarize", files={"file": ("a.wav", wav(tone(2.5)), "audio/wav")})
        assert assert_openai_error(r, 400, "file")["code"] == "audio_too_long"
        r = await client.post("/v1/diarize", files={"file": ("a.wav", wav(tone(1.5)), "audio/wav")})
        assert r.status_code == 200


def test_sidecar_accepts_uploads_as_long_as_its_window():
    s = SidecarSettings()
    assert s.max_upload_bytes >= 44 + s.max_window_s * SAMPLE_RATE * 2  # the router sends 16-bit WAV


async def test_speaker_embeddings(cluster, talk_wav):
    data, _ = talk_wav
    app = create_app(settings(), diarizer=cluster)
    async with serve(app) as client:
        r = await client.post("/v1/speaker-embeddings", files={"file": ("ref.wav", data, "audio/wav")})
        assert r.status_code == 200, r.text
        body = r.json()
        vec = np.asarray(body["embedding"])
        assert body["dim"] == 192 == vec.shape[0] and abs(np.linalg.norm(vec) - 1) < 1e-4
        assert "CAM++" in body["model"]
        r = await client.post("/v1/speaker-embeddings", files={"file": ("ref.wav", wav(tone(0.2)), "audio/wav")})
        assert assert_openai_error(r, 400, "file")["code"] == "audio_too_short"


# --- admission, deadlines, auth -----------------------------------------------------------------------


class SlowDiarizer:
    """A fake backend that takes ``seconds`` per request."""

    backend, max_speakers = "fake", None

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.embedder = type("E", (), {"name": "fake", "dim": 2, "embed": lambda self, x: np.array([1.0, 0.0])})()

    def describe(self):
        return {"backend": "fake", "diarizer": "sleep", "embedder": "fake", "embedding_dim": "2"}

    def diarize(self, samples, options=None, *, include_probabilities=False):
        time.sleep(self.seconds)
        d = len(samples) / SAMPLE_RATE
        return DiarizationResult((SpeakerTurn(0.0, d, "speaker_0", 1.0),), ("speaker_0",), d, self.describe())


async def test_overload_gives_429_and_timeouts_504():
    app = create_app(settings(max_concurrent=1, max_queue=0), diarizer=SlowDiarizer(0.5))
    files = {"file": ("a.wav", wav(tone(1.0)), "audio/wav")}
    async with serve(app) as client:
        first, second = await asyncio.gather(
            client.post("/v1/diarize", files=files),
            client.post("/v1/diarize", files=files),
        )
        codes = sorted([first.status_code, second.status_code])
        assert codes == [200, 429]
        busy = first if first.status_code == 429 else second
        assert assert_openai_error(busy, 429)["type"] == "rate_limit_error"
    app = create_app(settings(request_timeout_s=0.1), diarizer=SlowDiarizer(0.5))
    async with serve(app) as client:
        r = await client.post("/v1/diarize", files=files)
        assert assert_openai_error(r, 504)["code"] == "timeout"


async def test_api_keys(cluster):
    app = create_app(settings(api_keys=["sk-1"]), diarizer=cluster)
    async with serve(app) as client:
        assert_openai_error(await client.get("/v1/models"), 401)
        assert (await client.get("/v1/models", headers={"Authorization": "Bearer sk-1"})).status_code == 200
        assert (await client.get("/health")).status_code == 200


# --- the Sortformer backend, built from settings like `chorus serve sidecar --diarizer sortformer` -------


async def test_sortformer_backend_from_settings(tmp_path):
    pytest.importorskip("nemo.collections.asr")
    sortformer = tiny_nemo("sortformer", tmp_path / "sortformer.nemo")
    titanet = tiny_nemo("titanet", tmp_path / "titanet.nemo")
    app = create_app(
        settings(diarizer="sortformer", sortformer_model=str(sortformer), titanet_model=str(titanet), warmup=True)
    )
    async with serve(app) as client:
        assert (await client.get("/ready")).status_code == 200
        diar = (await client.get("/v1/models")).json()["data"][0]
        assert diar["backend"] == "sortformer" and str(sortformer) in diar["diarizer"]
        assert str(titanet) == diar["embedder"] and diar["embedding_dim"] == "192"
        audio = np.concatenate([tone(3.0, 180), tone(3.0, 320)])
        r = await client.post(
            "/v1/diarize", files={"file": ("a.wav", wav(audio), "audio/wav")}, data={"include_probabilities": "1"}
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert_turns_schema(body["segments"], body["duration"])
        assert all(s["confidence"] is not None for s in body["segments"])
        assert len(body["probabilities"]["values"][0]) == 4
        assert abs(body["probabilities"]["frame_rate"] - 12.5) < 0.5
        r = await client.post(
            "/v1/diarize", files={"file": ("a.wav", wav(audio), "audio/wav")}, data={"num_speakers": "5"}
        )
        assert "at most 4" in assert_openai_error(r, 400, "num_speakers")["message"]
        r = await client.post("/v1/speaker-embeddings", files={"file": ("a.wav", wav(audio), "audio/wav")})
        assert r.json()["dim"] == 192


async def test_bad_sortformer_path_is_reported_by_ready(tmp_path):
    pytest.importorskip("nemo.collections.asr")
    app = create_app(
        settings(
            diarizer="sortformer",
            sortformer_model=str(tmp_path / "nope.nemo"),
            titanet_model=str(tmp_path / "nope-titanet.nemo"),
        )
    )
    async with serve(app) as client:
        ready = await client.get("/ready")
        assert ready.status_code == 503 and "--titanet-model" in ready.json()["detail"]


# --- Phi-4 endpoints --------------------------------------------------------------------------------------


def openai_client(client: httpx.AsyncClient):
    from openai import AsyncOpenAI

    return AsyncOpenAI(base_url=f"{BASE}/v1", api_key="sk-test", http_client=client, max_retries=0)


def audio_part(samples: np.ndarray) -> dict:
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav(samples)).decode(), "format": "wav"}}


async def test_phi4_not_configured_names_the_setting(cluster):
    app = create_app(settings(), diarizer=cluster)
    async with serve(app) as client:
        r = await client.post(
            "/v1/chat/completions",
            json={"model": "phi-4-multimodal", "messages": [{"role": "user", "content": [audio_part(tone(1.0))]}]},
        )
        err = assert_openai_error(r, 404, "model")
        assert err["code"] == "model_not_configured" and "--phi4-model" in err["message"]
        assert "CHORUS_SIDECAR_PHI4_MODEL" in err["message"]
        r = await client.post(
            "/v1/audio/transcriptions",
            files={"file": ("a.wav", wav(tone(1.0)), "audio/wav")},
            data={"model": "microsoft/Phi-4-multimodal-instruct", "task": "summarize"},
        )
        assert assert_openai_error(r, 404, "model")["code"] == "model_not_configured"
        r = await client.post(
            "/v1/audio/transcriptions",
            files={"file": ("a.wav", wav(tone(1.0)), "audio/wav")},
            data={"model": "whisper-1"},
        )
        assert "whisper server" in assert_openai_error(r, 404, "model")["message"]


async def test_phi4_chat_and_transcriptions_through_the_openai_sdk(cluster, phi_dir):
    app = create_app(settings(phi4_model=str(phi_dir), phi4_max_new_tokens=8), diarizer=cluster)
    async with serve(app) as client:
        models = (await client.get("/v1/models")).json()["data"][2]
        assert models["status"] == "not loaded (loads on first use)"
        sdk = openai_client(client)
        completion = await sdk.chat.completions.create(
            model="phi-4-multimodal",
            messages=[
                {"role": "system", "content": "You transcribe audio."},
                {"role": "user", "content": [audio_part(tone(2.0)), {"type": "text", "text": "Transcribe."}]},
            ],
            max_tokens=5,
        )
        assert completion.object == "chat.completion" and completion.model == "phi-4-multimodal"
        choice = completion.choices[0]
        assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
        assert choice.finish_reason in {"stop", "length"}
        assert 1 <= completion.usage.completion_tokens <= 5
        assert completion.usage.prompt_tokens > 25  # 2 s of audio is 25 placeholder tokens
        assert (await client.get("/v1/models")).json()["data"][2]["status"] == "loaded"

        text = await sdk.audio.transcriptions.create(
            model="phi-4-multimodal", file=("a.wav", wav(tone(1.5)), "audio/wav"), response_format="text"
        )
        assert isinstance(text, str)
        r = await client.post(
            "/v1/audio/transcriptions",
            files={"file": ("a.wav", wav(tone(1.5)), "audio/wav")},
            data={"model": str(phi_dir), "task": "diarize", "template": "json"},
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["task"] == "diarize" and body["template"] == "json" and "segments" in body
        assert body["usage"]["seconds"] == pytest.approx(1.5) and body["usage"]["output_tokens"] <= 8


async def test_phi4_request_errors(cluster, phi_dir):
    app = create_app(settings(phi4_model=str(phi_dir)), diarizer=cluster)
    one = {"file": ("a.wav", wav(tone(1.0)), "audio/wav")}
    async with serve(app) as client:
        r = await client.post(
            "/v1/chat/completions",
            json={
                "model": "phi-4-multimodal",
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "input_audio", "input_audio": {"data": "%%%", "format": "wav"}}],
                    }
                ],
            },
        )
        assert_openai_error(r, 400, "messages.0.content.0.input_audio.data")
        r = await client.post(
            "/v1/chat/completions",
            json={
                "model": "phi-4-multimodal",
                "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}],
            },
        )
        assert_openai_error(r, 400, "messages.0.content.0.type")
        r = await client.post(
            "/v1/chat/completions",
            json={"model": "phi-4-multimodal", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        )
        assert_openai_error(r, 400, "stream")
        r = await client.post("/v1/chat/completions", json={"model": "phi-4-multimodal", "messages": []})
        assert_openai_error(r, 400, "messages")
        r = await client.post(
            "/v1/chat/completions", json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
        )
        assert_openai_error(r, 404, "model")
        r = await client.post(
            "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert_openai_error(r, 400)
        r = await client.post(
            "/v1/audio/transcriptions", files=one, data={"model": "phi-4-multimodal", "task": "translate"}
        )
        assert_openai_error(r, 400, "language")
        r = await client.post("/v1/audio/transcriptions", files=one, data={"model": "phi-4-multimodal", "task": "qa"})
        assert_openai_error(r, 400, "prompt")
        r = await client.post(
            "/v1/audio/transcriptions",
            files=one,
            data={"model": "phi-4-multimodal", "task": "diarize", "template": "nope"},
        )
        assert_openai_error(r, 400, "template")
        r = await client.post("/v1/audio/transcriptions", files=one, data={"model": "phi-4-multimodal", "task": "sing"})
        assert_openai_error(r, 400, "task")
        # text-only chat works too
        r = await client.post(
            "/v1/chat/completions",
            json={"model": "phi-4-multimodal", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]},
        )
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 2


async def test_phi4_load_failure_is_503_naming_the_setting(cluster, tmp_path):
    app = create_app(settings(phi4_model=str(tmp_path / "missing-phi")), diarizer=cluster)
    async with serve(app) as client:
        r = await client.post(
            "/v1/audio/transcriptions",
            files={"file": ("a.wav", wav(tone(1.0)), "audio/wav")},
            data={"model": "phi-4-multimodal"},
        )
        err = assert_openai_error(r, 503, "model")
        assert err["code"] == "model_load_failed" and "--phi4-model" in err["message"]
        assert "load failed" in (await client.get("/v1/models")).json()["data"][2]["status"]
