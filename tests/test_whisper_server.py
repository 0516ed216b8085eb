"""The whisper server through the unmodified OpenAI SDK (in-process over ASGI), on the tiny model."""

from __future__ import annotations

import asyncio
import io
import json
import re

import httpx
import numpy as np
import openai
import pytest

from jax_models.whisper_app import create_app
from server.core.audio import to_wav_bytes
from server.kit.settings import WhisperSettings
from tests.conftest import make_client


@pytest.fixture(scope="module")
def app(tiny_engine, tiny_whisper_dir, cache_dir):
    settings = WhisperSettings(model=str(tiny_whisper_dir), warmup=False, cache_dir=cache_dir, max_upload_mb=1.0)
    return create_app(settings, engine=tiny_engine)


@pytest.fixture
def client(app):
    return make_client(app)


def wav(speech_samples) -> bytes:
    return to_wav_bytes(speech_samples)


async def test_all_formats_agree(client, tiny_engine, speech_samples, monkeypatch):
    data = wav(speech_samples)
    seen = []
    real = tiny_engine.transcribe
    monkeypatch.setattr(
        tiny_engine, "transcribe", lambda s, options, *a, **k: seen.append(options) or real(s, options, *a, **k)
    )
    verbose = await client.audio.transcriptions.create(
        model="whisper-1", file=("a.wav", data), response_format="verbose_json", language="en"
    )
    assert verbose.language == "en"
    assert verbose.duration == pytest.approx(len(speech_samples) / 16000, abs=0.01)
    assert verbose.text == "".join(s.text for s in verbose.segments).strip()
    for seg in verbose.segments:
        assert 0 <= seg.start <= seg.end <= verbose.duration + 0.01
        assert seg.tokens and all(isinstance(t, int) for t in seg.tokens)
        assert -1e9 < seg.avg_logprob <= 0 and 0 <= seg.no_speech_prob <= 1
    assert verbose.usage.seconds == int(np.ceil(verbose.duration))

    # json and text return no times, so the engine samples text tokens only for them
    as_json = await client.audio.transcriptions.create(model="whisper-1", file=("a.wav", data), language="en")
    text = await client.audio.transcriptions.create(
        model="whisper-1", file=("a.wav", data), response_format="text", language="en"
    )
    assert text.strip() == as_json.text  # greedy decoding is deterministic
    assert [o.without_timestamps for o in seen] == [False, True, True]
    srt = await client.audio.transcriptions.create(
        model="whisper-1", file=("a.wav", data), response_format="srt", language="en"
    )
    assert len(re.findall(r"^\d\d:\d\d:\d\d,\d\d\d --> \d\d:\d\d:\d\d,\d\d\d$", srt, re.M)) == len(verbose.segments)
    vtt = await client.audio.transcriptions.create(
        model="whisper-1", file=("a.wav", data), response_format="vtt", language="en"
    )
    assert vtt.startswith("WEBVTT")
    assert len(re.findall(r"^\d\d:\d\d:\d\d\.\d\d\d --> ", vtt, re.M)) == len(verbose.segments)


async def test_word_timestamps_in_verbose_json(client, speech_samples):
    out = await client.audio.transcriptions.create(
        model="whisper-1",
        file=("a.wav", wav(speech_samples)),
        response_format="verbose_json",
        language="en",
        timestamp_granularities=["word", "segment"],
    )
    assert out.words is not None
    assert "".join(w.word for w in out.words).strip() == out.text
    assert all(0 <= w.start <= w.end <= out.duration + 0.01 for w in out.words)
    assert sum(len(s.model_extra.get("words", [])) for s in out.segments) == len(out.words)
    plain = await client.audio.transcriptions.create(
        model="whisper-1", file=("a.wav", wav(speech_samples)), response_format="verbose_json", language="en"
    )
    assert plain.words is None and plain.text == out.text


async def test_translation_endpoint(client, speech_samples):
    out = await client.audio.translations.create(
        model="whisper-1", file=("a.wav", wav(speech_samples)), response_format="verbose_json"
    )
    assert out.task == "translate"
    assert out.duration == pytest.approx(len(speech_samples) / 16000, abs=0.01)


async def test_language_detected_when_absent(client, speech_samples):
    out = await client.audio.transcriptions.create(
        model="whisper-1", file=("a.wav", wav(speech_samples)), response_format="verbose_json"
    )
    from server.kit.protocol import WHISPER_LANGUAGES

    assert out.language in WHISPER_LANGUAGES


@pytest.mark.parametrize(
    "kwargs, status, param",
    [
        ({"model": "no-such-model"}, 404, "model"),
        ({"response_format": "xml"}, 400, "response_format"),
        ({"temperature": -0.5}, 400, "temperature"),
        ({"language": "xx"}, 400, "language"),
        ({"response_format": "diarized_json"}, 400, "response_format"),
        ({"include": ["logprobs"]}, 400, "include"),
    ],
)
async def test_bad_fields_are_openai_errors(client, speech_samples, kwargs, status, param):
    args = {"model": "whisper-1", "file": ("a.wav", wav(speech_samples)), **kwargs}
    with pytest.raises(openai.APIStatusError) as info:
        await client.audio.transcriptions.create(**args)
    err = info.value
    assert err.status_code == status
    body = err.body if isinstance(err.body, dict) else {}
    assert body.get("param") == param and body.get("message") and body.get("type")


async def test_include_logprobs_is_refused_by_name(client, speech_samples):
    """The SDK's ``include=["logprobs"]`` gets a 400 that says what is missing, not a generic
    unrecognized argument (the field is OpenAI's) nor a silent ``logprobs: null``."""
    with pytest.raises(openai.BadRequestError) as info:
        await client.audio.transcriptions.create(
            model="whisper-1", file=("a.wav", wav(speech_samples)), include=["logprobs"]
        )
    body = info.value.body
    assert body["param"] == "include"
    assert "log-probabilities" in body["message"] and "Unrecognized" not in body["message"]


async def test_undecodable_audio_is_400(client):
    with pytest.raises(openai.BadRequestError) as info:
        await client.audio.transcriptions.create(model="whisper-1", file=("a.mp3", b"\x00\x01garbage" * 100))
    assert info.value.body["code"] == "invalid_file_format"
    assert info.value.body["param"] == "file"


async def test_too_large_is_413(client):
    big = to_wav_bytes(np.zeros(16000 * 40, np.float32))  # 1.28 MB > the 1 MB limit of this app
    with pytest.raises(openai.APIStatusError) as info:
        await client.audio.transcriptions.create(model="whisper-1", file=("big.wav", big))
    assert info.value.status_code == 413


async def test_raw_http_errors_keep_openai_shape(app):
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        r = await http.post("/v1/audio/transcriptions", json={"model": "whisper-1"})
        assert r.status_code == 415 and set(r.json()["error"]) == {"message", "type", "param", "code"}
        r = await http.post("/v1/audio/transcriptions", data={"model": "whisper-1"}, files={"x": ("a", b"1")})
        assert r.status_code == 400 and r.json()["error"]["param"] == "file"
        r = await http.get("/v1/nothing-here")
        assert r.status_code == 404 and r.json()["error"]["message"]
        r = await http.get("/v1/models")
        assert "whisper-1" in [m["id"] for m in r.json()["data"]]
        assert (await http.get("/health")).status_code == 200
        assert (await http.get("/ready")).json()["ready"] is True
        metrics = (await http.get("/metrics")).text
        assert "chorus_requests_total" in metrics


async def test_bad_requests_do_not_disturb_good_ones(client, speech_samples):
    data = wav(speech_samples)
    good = [
        client.audio.transcriptions.create(model="whisper-1", file=("a.wav", data), language="en") for _ in range(3)
    ]
    bad = [client.audio.transcriptions.create(model="whisper-1", file=("a.wav", b"not audio")) for _ in range(3)]
    results = await asyncio.gather(*good, *bad, return_exceptions=True)
    texts = {r.text for r in results[:3]}
    assert len(texts) == 1 and not any(isinstance(r, Exception) for r in results[:3])
    assert all(isinstance(r, openai.BadRequestError) for r in results[3:])


async def test_not_ready_is_503(tiny_whisper_dir, cache_dir, speech_samples):
    # no lifespan runs over bare ASGI, so the engine never loads: the server must say so, not crash
    app = create_app(WhisperSettings(model=str(tiny_whisper_dir), cache_dir=cache_dir))
    client = make_client(app)
    with pytest.raises(openai.APIStatusError) as info:
        await client.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav(speech_samples)))
    assert info.value.status_code == 503 and info.value.body["code"] == "not_ready"


async def test_api_key_required_when_configured(tiny_engine, tiny_whisper_dir, cache_dir, speech_samples):
    settings = WhisperSettings(model=str(tiny_whisper_dir), warmup=False, cache_dir=cache_dir, api_keys=["k1"])
    app = create_app(settings, engine=tiny_engine)
    with pytest.raises(openai.AuthenticationError):
        await make_client(app).audio.transcriptions.create(model="whisper-1", file=("a.wav", wav(speech_samples)))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        assert (await http.get("/health")).status_code == 200
        r = await http.post(
            "/v1/audio/transcriptions",
            headers={"Authorization": "Bearer k1"},
            data={"model": "whisper-1"},
            files={"file": ("a.wav", io.BytesIO(wav(speech_samples)))},
        )
        assert r.status_code == 200, r.text


def test_live_uvicorn_process(tiny_whisper_dir, tiny_xla_cache, speech_wav, tmp_path):
    """`chorus serve whisper` as a real process on 127.0.0.1, called by the synchronous SDK."""
    import time

    from openai import OpenAI

    from bench.procs import free_port, start_whisper_server

    port = free_port()
    # tiny_engine's settings (conftest.TINY_*): the warm-up loads the session's compiled executables
    proc = start_whisper_server(
        tiny_whisper_dir,
        port,
        cache_dir=tiny_xla_cache,
        args=["--api-key", "secret"],
        env={"CHORUS_WHISPER_BATCH_SIZE": "2", "CHORUS_WHISPER_MAX_NEW_TOKENS": "32"},
        stderr=(tmp_path / "server.log").open("wb"),
    )
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()[-2000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            pytest.fail("server did not become ready")
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="secret", max_retries=0)
        with open(speech_wav, "rb") as f:
            out = client.audio.transcriptions.create(model="whisper-1", file=f, response_format="verbose_json")
        assert out.duration > 1.0 and isinstance(out.text, str)
        with pytest.raises(openai.AuthenticationError):
            OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong", max_retries=0).models.list()
        # `chorus transcribe --url` uses this server instead of loading a model of its own
        from click.testing import CliRunner

        from server.cli import main

        cli = CliRunner().invoke(
            main,
            [
                "transcribe",
                str(speech_wav),
                "--url",
                f"http://127.0.0.1:{port}",
                "--api-key",
                "secret",
                "--format",
                "verbose_json",
            ],
        )
        assert cli.exit_code == 0, cli.output
        assert json.loads(cli.output)["duration"] == pytest.approx(out.duration, abs=0.01)
        bad = CliRunner().invoke(
            main, ["transcribe", str(speech_wav), "--url", f"http://127.0.0.1:{port}", "--api-key", "wrong"]
        )
        assert bad.exit_code != 0 and "401" in bad.output, bad.output
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) is not None
    log = (tmp_path / "server.log").read_text()
    # readable logs: no access line per /ready poll, one line per API request with its RTFx
    assert "/ready" not in log, log[-2000:]
    assert re.search(r"POST /v1/audio/transcriptions status=200 wall=\S+ audio=\S+ rtfx=", log), log[-2000:]


def test_compilation_cache_survives_easydel_import(tmp_path):
    """EasyDeL's ejit re-points JAX's cache at import; ours must be the one in force after it."""
    import subprocess
    import sys

    code = (
        "from pathlib import Path; import sys\n"
        "from jax_models.whisper_app import enable_compilation_cache\n"
        "enable_compilation_cache(Path(sys.argv[1]))\n"
        "import easydel, jax\n"
        "print(jax.config.jax_compilation_cache_dir)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    from jax_models.compile_cache import cache_dir_for

    assert out.stdout.strip().splitlines()[-1] == str(cache_dir_for(tmp_path))  # <cache>/xla/<this CPU>


async def test_metrics_count_fallback_by_temperature(app, client, tiny_engine, speech_samples, monkeypatch):
    """``/metrics`` counts the decodes at each fallback temperature and the temperature kept."""
    from prometheus_client.parser import text_string_to_metric_families

    from tests.test_engine import FALLBACK_CASES, TEMPERATURES, WORDS, scripted

    async def counts() -> dict[tuple[str, str], float]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
            text = (await http.get("/metrics")).text
        return {
            (s.name, s.labels["temperature"]): s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name.startswith("chorus_whisper_fallback")
        }

    scripted(monkeypatch, tiny_engine, FALLBACK_CASES["lowest-pass"])  # fails at 0 and 0.2, passes at 0.4
    before = await counts()
    out = await client.audio.transcriptions.create(
        model="whisper-1", file=("a.wav", wav(speech_samples)), language="en"
    )
    assert out.text == WORDS[0.4]
    after = await counts()
    delta = {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}
    expected = {("chorus_whisper_fallback_total", f"{t:g}"): 1.0 for t in TEMPERATURES[1:]}
    expected[("chorus_whisper_fallback_kept_total", "0.4")] = 1.0
    assert delta == expected


async def test_without_temperature_fallback_the_greedy_decode_is_kept(
    tiny_engine, tiny_whisper_dir, cache_dir, speech_samples, monkeypatch
):
    """``temperature_fallback=False`` (``--no-temperature-fallback``): a window that fails the
    thresholds at T=0 keeps its greedy decode, one decode and no fallback counted; the same window
    through the default server falls back to 0.4."""
    from tests.test_engine import FALLBACK_CASES, WORDS, scripted

    fake = scripted(monkeypatch, tiny_engine, FALLBACK_CASES["lowest-pass"])  # fails at 0 and 0.2
    texts = {}
    for fallback in (False, True):
        settings = WhisperSettings(
            model=str(tiny_whisper_dir), warmup=False, cache_dir=cache_dir, temperature_fallback=fallback
        )
        client = make_client(create_app(settings, engine=tiny_engine))
        before, batches = tiny_engine.fallback_stats(), len(fake.batches)
        out = await client.audio.transcriptions.create(
            model="whisper-1", file=("a.wav", wav(speech_samples)), language="en"
        )
        texts[fallback] = out.text
        if not fallback:
            assert [sorted(t for t, _ in b) for b in fake.batches[batches:]] == [[0.0]]
            assert tiny_engine.fallback_stats() == before
    assert texts == {False: WORDS[0.0], True: WORDS[0.4]}


async def test_metrics_count_decoder_steps(app, client, tiny_engine, speech_samples):
    """``/metrics`` counts the engine's decoder steps: a request adds what the engine ran."""
    from prometheus_client.parser import text_string_to_metric_families

    async def steps() -> float:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
            text = (await http.get("/metrics")).text
        found = [s.value for f in text_string_to_metric_families(text) for s in f.samples]
        names = [s.name for f in text_string_to_metric_families(text) for s in f.samples]
        return found[names.index("chorus_whisper_decode_steps_total")]

    before, engine_before = await steps(), tiny_engine.decode_steps
    await client.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav(speech_samples)), language="en")
    ran = tiny_engine.decode_steps - engine_before
    assert ran > 0 and await steps() - before == ran


async def test_large_v3_shaped_model_through_the_sdk(tiny_v3_engine, tiny_v3_dir, cache_dir, speech_samples):
    """A large-v3-shaped model (128 mel bins, 51866 tokens, ``<|yue|>``) serves transcriptions
    (Cantonese asked for, and detected) and translations through the unmodified OpenAI SDK. The
    random model's windows all fail Whisper's thresholds: greedy only, not 6 decodes each."""
    settings = WhisperSettings(model=str(tiny_v3_dir), warmup=False, cache_dir=cache_dir, temperature_fallback=False)
    client = make_client(create_app(settings, engine=tiny_v3_engine))
    data = wav(speech_samples)
    yue = await client.audio.transcriptions.create(
        model="whisper-1", file=("a.wav", data), language="yue", response_format="verbose_json"
    )
    assert yue.language == "yue" and yue.duration == pytest.approx(len(speech_samples) / 16000, abs=0.01)
    for seg in yue.segments:
        assert seg.tokens and max(seg.tokens) < tiny_v3_engine.ids.eot
        assert 0 <= seg.start <= seg.end <= yue.duration + 0.02
    detected = await client.audio.transcriptions.create(
        model="whisper-1", file=("a.wav", data), response_format="verbose_json"
    )
    assert detected.language in tiny_v3_engine.ids.lang_to_id
    srt = await client.audio.translations.create(model="whisper-1", file=("a.wav", data), response_format="srt")
    assert isinstance(srt, str)
    models = await client.models.list()
    card = models.data[0].model_extra["chorus"]
    assert card["multilingual"] is True and (card["n_mels"], card["vocab_size"]) == (128, 51866)


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        ([], {}, True),
        (["--no-temperature-fallback"], {}, False),
        ([], {"CHORUS_WHISPER_TEMPERATURE_FALLBACK": "false"}, False),
    ],
)
def test_serve_whisper_temperature_fallback_flag_and_env(monkeypatch, tmp_path, args, env, expected):
    """``chorus serve whisper --no-temperature-fallback`` and its environment variable reach the
    app's settings (the app and the HTTP server are stand-ins here)."""
    from click.testing import CliRunner

    import jax_models.whisper_app
    import server.kit.app
    from server.cli import main

    seen = []
    monkeypatch.setattr(jax_models.whisper_app, "create_app", lambda settings: seen.append(settings) or "app")
    monkeypatch.setattr(jax_models.whisper_app, "enable_compilation_cache", lambda path: None)
    monkeypatch.setattr(server.kit.app, "serve", lambda app, settings: 0)
    env = {"CHORUS_CACHE_DIR": str(tmp_path), **env}
    result = CliRunner().invoke(main, ["serve", "whisper", "--port", "8011", *args], env=env)
    assert result.exit_code == 0, result.output
    (settings,) = seen
    assert settings.temperature_fallback is expected and settings.port == 8011
