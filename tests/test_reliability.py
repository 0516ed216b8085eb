"""Graceful shutdown, deadlines and faults.

- ``server.kit.app.serve`` as a real process: SIGTERM refuses new connections, lets the request in
  flight finish, exits 0; past ``shutdown_timeout_s`` it cancels and still exits 0.
- The whisper server's own deadline (504 at once, the engine's worker stops at its next window)
  and its 429, on a fake engine in-process.
- A slow whisper backend behind the router: the router's backend deadline fires with a clear 504,
  the router keeps serving, and no thread or asyncio task is left behind.
- Real processes: the whisper server (tiny model) drains on SIGTERM and exits 0; the router in front
  of it answers 503 while it is down and recovers by itself once it is back; the router drains too.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from bench.procs import free_port, start_whisper_server, wait_http
from server.core.audio import SAMPLE_RATE, to_wav_bytes
from server.core.transcript import Segment, Transcript

REPO = Path(__file__).resolve().parents[1]


def refused(port: int) -> bool:
    """True when nothing accepts TCP connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except OSError:
        return True


def wait_refused(port: int, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if refused(port):
            return True
        time.sleep(0.05)
    return False


# ---------------------------------------------------------------------------------------------
# serve(): the drain itself, on a small app in a real process

SLOW_APP = textwrap.dedent("""
    import asyncio, sys
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from server.kit.app import serve
    from server.kit.settings import ServerSettings

    async def slow(request):
        seconds = float(request.query_params["s"])
        await asyncio.sleep(seconds)
        return JSONResponse({"slept": seconds})

    async def health(request):
        return JSONResponse({"status": "ok"})

    app = Starlette(routes=[Route("/slow", slow), Route("/health", health)])
    settings = ServerSettings(port=int(sys.argv[1]), shutdown_timeout_s=float(sys.argv[2]), log_level="warning")
    sys.exit(serve(app, settings))
""")


def start_slow_app(drain_s: float) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_APP, str(port), str(drain_s)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_http(f"http://127.0.0.1:{port}/health", proc, timeout_s=60)
    return proc, port


def test_building_the_uvicorn_server_leaves_installed_log_handlers_alone():
    """uvicorn's default ``log_config`` (``dictConfig``) closed every handler already installed;
    absl's closes the stream under it, which broke pytest's capture in the tests after it."""
    import logging

    from starlette.applications import Starlette

    from server.kit.app import uvicorn_server
    from server.kit.settings import ServerSettings

    class Recording(logging.Handler):
        closed = False

        def close(self) -> None:
            self.closed = True
            super().close()

    handler = Recording()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        server = uvicorn_server(Starlette(), ServerSettings(log_level="info"))
        assert server.config.access_log is False
        assert handler in root.handlers and not handler.closed
        assert logging.getLogger("uvicorn.error").level == logging.INFO
    finally:
        root.removeHandler(handler)


def test_sigterm_refuses_new_connections_finishes_the_request_in_flight_and_exits_0():
    proc, port = start_slow_app(drain_s=20)
    try:
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(httpx.get, f"http://127.0.0.1:{port}/slow?s=2.5", timeout=30)
            time.sleep(0.7)
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert wait_refused(port), "the listening socket stayed open after SIGTERM"
            assert proc.poll() is None  # still draining
            r = in_flight.result()
        assert r.status_code == 200 and r.json() == {"slept": 2.5}
        assert proc.wait(timeout=20) == 0
        assert time.monotonic() - t0 < 10
    finally:
        if proc.poll() is None:
            proc.kill()


def test_the_drain_deadline_cancels_what_is_left_and_still_exits_0():
    proc, port = start_slow_app(drain_s=1)
    try:
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(httpx.get, f"http://127.0.0.1:{port}/slow?s=60", timeout=30)
            time.sleep(0.7)
            t0 = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 0
            assert time.monotonic() - t0 < 6  # 1 s drain, not the request's 60 s
            with pytest.raises(httpx.HTTPError):
                in_flight.result().raise_for_status()
        assert "timeout graceful shutdown exceeded" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()


# ---------------------------------------------------------------------------------------------
# the whisper server's deadline and admission, on a fake engine


class SlowEngine:
    """Stands in for ``WhisperEngine``: ``transcribe`` takes ``seconds``, reporting progress every 50 ms."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.finished: list[str] = []

    def transcribe(self, samples, options, progress=None):
        t0 = time.monotonic()
        try:
            while time.monotonic() - t0 < self.seconds:
                time.sleep(0.05)
                if progress:
                    progress(time.monotonic() - t0)
        except BaseException:
            self.finished.append("stopped")
            raise
        self.finished.append("done")
        d = len(samples) / SAMPLE_RATE
        return Transcript("hello", (Segment(0, 0.0, d, " hello"),), "en", d)

    def describe(self) -> dict:
        return {"engine": "slow-fake"}

    def close(self) -> None:
        pass


def whisper_app(engine, **overrides):
    from jax_models.whisper_app import create_app
    from server.kit.settings import WhisperSettings

    return create_app(WhisperSettings(model="fake", warmup=False, **overrides), engine=engine)


def form(seconds: float = 1.0) -> dict:
    return {
        "files": {"file": ("a.wav", to_wav_bytes(np.zeros(int(seconds * SAMPLE_RATE), np.float32)))},
        "data": {"model": "whisper-1"},
    }


async def test_whisper_request_timeout_is_504_at_once_and_stops_the_engine_work():
    import av  # noqa: F401  (imported by the first request otherwise, inside the timed window)

    import jax_models.engine  # noqa: F401

    engine = SlowEngine(5.0)
    app = whisper_app(engine, request_timeout_s=0.3)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://w") as http:
        t0 = time.monotonic()
        r = await http.post("/v1/audio/transcriptions", **form())
        assert time.monotonic() - t0 < 2.0  # not the engine's 5 s
        assert r.status_code == 504 and r.headers["retry-after"] == "5"
        assert r.json()["error"]["code"] == "timeout" and "0.3 s" in r.json()["error"]["message"]
        for _ in range(40):  # the worker thread gives up at its next progress report
            if engine.finished:
                break
            await asyncio.sleep(0.05)
        assert engine.finished == ["stopped"]
        engine.seconds = 0.1
        r = await http.post("/v1/audio/transcriptions", **form())
        assert r.status_code == 200 and r.json()["text"] == "hello"


async def test_whisper_server_over_capacity_is_429_with_retry_after():
    app = whisper_app(SlowEngine(1.0), max_concurrent=1, max_queue=0)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://w") as http:
        first = asyncio.create_task(http.post("/v1/audio/transcriptions", **form()))
        await asyncio.sleep(0.3)
        second = await http.post("/v1/audio/transcriptions", **form())
        assert second.status_code == 429 and second.headers["retry-after"] == "1"
        assert second.json()["error"]["type"] == "rate_limit_error"
        assert (await first).status_code == 200


# ---------------------------------------------------------------------------------------------
# a slow backend behind the router


class ThreadedServer:
    """An ASGI app under uvicorn in a background thread on a free port (a backend the router calls over HTTP)."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", timeout_graceful_shutdown=1)
        )
        self.thread = threading.Thread(target=self.server.run, name="fake-backend", daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def slow_whisper(control: dict):
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def transcribe(request):
        await request.form()
        await asyncio.sleep(control["delay"])
        return JSONResponse(
            {
                "task": "transcribe",
                "language": "en",
                "duration": 1.0,
                "text": "fine",
                "segments": [
                    {
                        "id": 0,
                        "seek": 0,
                        "start": 0.0,
                        "end": 1.0,
                        "text": " fine",
                        "tokens": [1],
                        "temperature": 0.0,
                        "avg_logprob": -0.1,
                        "compression_ratio": 1.0,
                        "no_speech_prob": 0.0,
                    }
                ],
            }
        )

    async def ready(request):
        return JSONResponse({"ready": True, "detail": "ready"})

    async def models(request):
        return JSONResponse({"object": "list", "data": [{"id": "whisper-1"}]})

    return Starlette(
        routes=[
            Route("/v1/audio/transcriptions", transcribe, methods=["POST"]),
            Route("/ready", ready),
            Route("/v1/models", models),
        ]
    )


async def test_a_slow_backend_times_out_with_a_clear_504_and_leaks_nothing():
    from server.kit.settings import RouterSettings
    from server.router.app import create_app
    from tests.test_router import EnergyVad

    control = {"delay": 5.0}
    tone = (0.3 * np.sin(2 * np.pi * 300 * np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE)).astype(np.float32)
    files = {"file": ("a.wav", to_wav_bytes(tone))}
    with ThreadedServer(slow_whisper(control)) as url:
        settings = RouterSettings(whisper_url=url, sidecar_url="http://127.0.0.1:9", whisper_timeout_s=0.5)
        app = create_app(settings, vad=EnergyVad())
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r") as http:

            async def call():
                return await http.post("/v1/audio/transcriptions", data={"model": "whisper-1"}, files=files)

            control["delay"] = 0.0
            # warm at the same concurrency: anyio's worker threads and the connection pool grow to it once
            assert [r.status_code for r in await asyncio.gather(*(call() for _ in range(6)))] == [200] * 6
            threads, tasks = threading.active_count(), len(asyncio.all_tasks())
            for _ in range(2):  # twice: anything left behind would add up
                control["delay"] = 5.0
                t0 = time.monotonic()
                answers = await asyncio.gather(*(call() for _ in range(6)))
                assert time.monotonic() - t0 < 4.0
                for r in answers:
                    assert r.status_code == 504, r.text
                    err = r.json()["error"]
                    assert err["code"] == "timeout" and "whisper server did not answer in time" in err["message"]
                    assert "0.5 s" in err["message"] and r.headers["retry-after"] == "5"
                control["delay"] = 0.0
                assert (await call()).json()["text"] == "fine"  # the client's slots were all given back
            await asyncio.sleep(0.2)
            assert len(asyncio.all_tasks()) <= tasks
            assert threading.active_count() <= threads


# ---------------------------------------------------------------------------------------------
# real processes: the whisper server drains and restarts under a running router


DRAIN_S = 600
"""The servers' drain limit (``*_SHUTDOWN_TIMEOUT_S``) in the process test: a liveness bound. A drain
ends when the request in flight does; past the limit uvicorn cancels it and answers 500 itself, which
is what the test saw when the long request took more than the old 60 s on a loaded machine."""


def whisper_process(model_dir: Path, port: int, cache_dir: Path, log: Path) -> subprocess.Popen:
    """The tiny-model whisper server; its stderr goes to ``log`` (an unread pipe would stall its
    logging once full)."""
    return start_whisper_server(
        model_dir,
        port,
        cache_dir=cache_dir,
        batch_size=2,
        warmup=False,
        env={"CHORUS_WHISPER_MAX_NEW_TOKENS": "32", "CHORUS_WHISPER_SHUTDOWN_TIMEOUT_S": str(DRAIN_S)},
        stderr=log.open("ab"),
    )


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:]


def transcribe(url: str, data: bytes, timeout: float = DRAIN_S) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/audio/transcriptions",
        data={"model": "whisper-1", "response_format": "json"},
        files={"file": ("a.wav", data)},
        timeout=timeout,
    )


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)


def test_whisper_server_drains_on_sigterm_and_the_router_recovers_from_its_restart(
    tiny_whisper_dir, tiny_xla_cache, speech_samples, tmp_path
):
    cache_dir = tiny_xla_cache  # both whisper server processes load the tiny engine's executables
    w_port, r_port = free_port(), free_port()
    w_url, r_url = f"http://127.0.0.1:{w_port}", f"http://127.0.0.1:{r_port}"
    short = to_wav_bytes(speech_samples)
    # ~3.7 min (7 MB): many windows, a few seconds of work on the tiny model even with batching (the
    # in-flight wait below is a third of how long it took, so the request is still running when signalled)
    long = to_wav_bytes(np.tile(speech_samples, 40))
    w_log, r_log = tmp_path / "whisper.log", tmp_path / "router.log"
    whisper = whisper_process(tiny_whisper_dir, w_port, cache_dir, w_log)
    env = {
        **os.environ,
        "CHORUS_CACHE_DIR": str(cache_dir),
        "CHORUS_ROUTER_READY_POLL_S": "0.5",
        "CHORUS_ROUTER_SHUTDOWN_TIMEOUT_S": str(DRAIN_S),
    }
    router = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "server.cli",
            "serve",
            "router",
            "--port",
            str(r_port),
            "--whisper-url",
            w_url,
            "--sidecar-url",
            "http://127.0.0.1:9",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=r_log.open("ab"),
    )
    try:
        wait_http(f"{w_url}/ready", whisper)
        wait_http(f"{r_url}/health", router, timeout_s=120)
        assert transcribe(r_url, short).status_code == 200
        t0 = time.monotonic()
        assert transcribe(w_url, long).status_code == 200  # compiled every shape the long request needs
        in_flight_wait = min(1.0, (time.monotonic() - t0) / 3)  # well inside the long request's duration

        # SIGTERM with a request in flight: refused at once, the request finishes, exit 0
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(transcribe, w_url, long)
            time.sleep(in_flight_wait)
            assert not in_flight.done()
            whisper.send_signal(signal.SIGTERM)
            assert wait_refused(w_port), "the whisper server kept accepting connections after SIGTERM"
            r = in_flight.result()
        assert r.status_code == 200 and isinstance(r.json()["text"], str), (r.text, tail(w_log))
        assert whisper.wait(timeout=DRAIN_S) == 0, tail(w_log)

        # the router, still running, says the backend is down
        r = transcribe(r_url, short)
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        assert r.json()["error"]["code"] == "backend_unavailable"

        # the whisper server comes back on the same port: the same router process serves again
        whisper = whisper_process(tiny_whisper_dir, w_port, cache_dir, w_log)
        wait_http(f"{w_url}/ready", whisper)
        r = transcribe(r_url, short)
        assert r.status_code == 200, r.text
        assert router.poll() is None
        for _ in range(40):  # and its readiness poll sees the backend again
            if httpx.get(f"{r_url}/v1/backends").json()["whisper"]["ready"]:
                break
            time.sleep(0.25)
        else:
            pytest.fail("the router never saw the restarted whisper server as ready")

        # the router drains too
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(transcribe, r_url, long)
            time.sleep(in_flight_wait)
            assert not in_flight.done()
            router.send_signal(signal.SIGTERM)
            assert wait_refused(r_port)
            r = in_flight.result()
        assert r.status_code == 200, (r.text, tail(r_log))
        assert router.wait(timeout=DRAIN_S) == 0, tail(r_log)
        whisper.send_signal(signal.SIGTERM)
        assert whisper.wait(timeout=DRAIN_S) == 0, tail(w_log)
    finally:
        stop(router)
        stop(whisper)
