"""End to end: the whisper server (tiny model), the sidecar (offline cluster diarizer) and the router
as three real processes on free 127.0.0.1 ports, started by ``chorus up``'s launcher and called with
the unmodified OpenAI SDK.

The tiny Whisper is random, so its words are noise; the speakers come from the real diarizer on a
two-voice espeak-ng conversation, and those are what is checked. Kill-the-sidecar runs last.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import openai
import pytest

from bench.procs import free_port, metric_samples, wait_http
from server.core.audio import to_wav_bytes
from server.launcher import Launcher, UpOptions, plan_services
from torch_models.synth import espeak_available

pytestmark = pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed")


@pytest.fixture(scope="module")
def conversation_wav():
    from torch_models.synth import conversation

    conv = conversation()  # 8 alternating lines, two voices, ~35 s: two chunks
    return to_wav_bytes(conv.samples), conv


@pytest.fixture(scope="module")
def stack(tiny_whisper_dir, tiny_xla_cache):
    """``chorus up`` on free ports: whisper (tiny, 32 tokens), sidecar (cluster), router. The whisper
    server loads the tiny engine's executables (``tiny_xla_cache``) instead of compiling them."""
    cache_dir = tiny_xla_cache
    options = UpOptions(
        router_port=free_port(),
        whisper_port=free_port(),
        sidecar_port=free_port(),
        model=str(tiny_whisper_dir),
        batch_size=2,
    )
    services = plan_services(options)
    env = {
        "CHORUS_CACHE_DIR": str(cache_dir),
        "CHORUS_WHISPER_MAX_NEW_TOKENS": "32",
        # the random model's windows all fail Whisper's thresholds: no fallback (6 decodes each)
        "CHORUS_WHISPER_TEMPERATURE_FALLBACK": "false",
        "CHORUS_ROUTER_READY_POLL_S": "0.5",
        "CHORUS_ROUTER_MAX_CHUNK_S": "20",
        "CHORUS_ROUTER_DIARIZATION_WINDOW_S": "20",
        "CHORUS_SIDECAR_MAX_AUDIO_S": "3600",
    }
    services = [type(s)(s.name, s.argv, s.url, {**s.env, **env}) for s in services]
    messages: list[str] = []
    launcher = Launcher(services, echo=messages.append, grace_s=15)
    launcher.start()
    try:
        assert launcher.wait_ready(timeout_s=420), messages
        yield launcher, {s.name: s.url for s in services}
    finally:
        launcher.stop()
        assert not [n for n, p in launcher.procs.items() if p.poll() is None]


def speaker_of_turn(segments, turn) -> str | None:
    """The speaker of the segment that overlaps ``turn`` (a reference ``SpeakerTurn``) most. The tiny
    Whisper is random, so where its first words fall (and so which segment comes first) is not what
    is checked: a word it places in the silence before the first turn takes its neighbours' speaker."""
    best = max(segments, key=lambda s: min(s.end, turn.end) - max(s.start, turn.start))
    return best.speaker


def sdk(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="sk-none", max_retries=0, timeout=300)


async def test_diarized_json_through_three_processes(stack, conversation_wav):
    launcher, urls = stack
    data, conv = conversation_wav
    client = sdk(urls["router"])
    out = await client.audio.transcriptions.create(
        model="gpt-4o-transcribe-diarize",
        file=("c.wav", data),
        response_format="diarized_json",
        chunking_strategy="auto",
    )
    assert out.duration == pytest.approx(conv.duration, abs=0.05)
    assert not (out.model_extra or {}).get("warnings"), out.model_extra
    spoken = [s for s in out.segments if s.text.strip()]
    assert spoken and all(s.speaker in ("A", "B") for s in spoken)
    # letters by first appearance: the voice that opens the conversation is A, the other B
    assert [speaker_of_turn(out.segments, t) for t in conv.turns[:2]] == ["A", "B"]
    ready = httpx.get(f"{urls['router']}/ready").json()
    assert ready["ready"] is True
    metrics = httpx.get(f"{urls['router']}/metrics").text
    assert metric_samples(metrics, "chorus_router_chunks_total")[0][1] >= 2  # ~35 s in chunks of at most 20 s
    assert ({"backend": "sidecar"}, 1.0) in metric_samples(metrics, "chorus_router_backend_ready")


async def test_streaming_through_three_processes(stack, conversation_wav):
    _, urls = stack
    data, _ = conversation_wav
    client = sdk(urls["router"])
    stream = await client.audio.transcriptions.create(
        model="gpt-4o-transcribe-diarize", file=("c.wav", data), response_format="diarized_json", stream=True
    )
    events = [ev async for ev in stream]
    assert events[-1].type == "transcript.text.done"
    assert events[-1].usage.type == "duration"
    segments = [e for e in events if e.type == "transcript.text.segment"]
    assert segments and all(s.speaker in ("A", "B") for s in segments)
    # srt/vtt with and without speakers: tests/test_router.py (the same router code, in-process)


async def test_known_speaker_names_through_three_processes(stack, conversation_wav):
    import base64

    from torch_models.synth import VOICES, speak

    _, urls = stack
    data, conv = conversation_wav
    refs = []
    for key in ("B", "A"):  # references in the other order than the voices first speak
        voice, pitch, wpm = VOICES[key]
        clip = speak("This is a short reference recording of my own voice for the meeting.", voice, pitch, wpm)
        refs.append("data:audio/wav;base64," + base64.b64encode(to_wav_bytes(clip)).decode())
    client = sdk(urls["router"])
    out = await client.audio.transcriptions.create(
        model="gpt-4o-transcribe-diarize",
        file=("c.wav", data),
        response_format="diarized_json",
        known_speaker_names=["bob", "alice"],
        known_speaker_references=refs,
    )
    spoken = [s for s in out.segments if s.text.strip()]
    assert spoken and {s.speaker for s in spoken} <= {"alice", "bob"}
    # voice A (alice) opens the conversation, voice B (bob) answers
    assert [speaker_of_turn(out.segments, t) for t in conv.turns[:2]] == ["alice", "bob"]


async def test_killing_the_sidecar_mid_request_still_returns_the_transcript(stack, conversation_wav):
    launcher, urls = stack
    data, _ = conversation_wav
    client = sdk(urls["router"])
    sidecar = launcher.procs["sidecar"]
    import asyncio

    request = asyncio.create_task(
        client.audio.transcriptions.create(
            model="gpt-4o-transcribe-diarize", file=("c.wav", data), response_format="diarized_json"
        )
    )
    await asyncio.sleep(0.3)  # the router has decoded, chunked and sent the windows out
    os.killpg(sidecar.pid, signal.SIGKILL)
    sidecar.wait(timeout=10)
    out = await request
    warnings = out.model_extra["warnings"]
    assert any("diarization failed" in w for w in warnings), warnings
    assert isinstance(out.text, str) and out.segments is not None
    # the router notices: /ready goes 503, requests keep working with warnings
    for _ in range(20):
        if httpx.get(f"{urls['router']}/ready").status_code == 503:
            break
        time.sleep(0.25)
    assert httpx.get(f"{urls['router']}/ready").status_code == 503
    again = await client.audio.transcriptions.create(
        model="gpt-4o-transcribe-diarize", file=("c.wav", data), response_format="diarized_json"
    )
    assert any("sidecar" in w for w in again.model_extra["warnings"])


def test_chorus_up_cli_with_remote_backends_stops_on_sigterm(tiny_whisper_dir, cache_dir, tmp_path):
    """The real CLI: ``chorus up`` with the whisper and sidecar elsewhere (fake URLs) starts only the
    router, and SIGTERM stops it cleanly."""
    port = free_port()
    env = {**os.environ, "CHORUS_CACHE_DIR": str(cache_dir)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "server.cli",
            "up",
            "--port",
            str(port),
            "--whisper-url",
            "http://127.0.0.1:9",
            "--sidecar-url",
            "http://127.0.0.1:9",
            "--ready-timeout",
            "60",
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        wait_http(
            f"http://127.0.0.1:{port}/ready",
            timeout_s=60,  # the router is up, its backends are not
            ok=lambda r: r.status_code == 503 and "whisper" in r.json()["detail"],
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        err = proc.stderr.read()
        assert "started router" in err and "stopping router" in err
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
