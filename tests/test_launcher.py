"""``chorus up``'s launcher: what it starts, readiness, supervision and clean stops (with stand-in servers)."""

from __future__ import annotations

import os
import signal
import sys
import time

from bench.procs import free_port
from server.launcher import Launcher, Service, UpOptions, plan_services

STANDIN = """
import http.server, sys, time
ready_after = time.time() + float(sys.argv[2])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = time.time() > ready_after
        self.send_response(200 if ok else 503)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"detail": "%s"}' % (b"ready" if ok else b"warming up"))
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def standin(name: str, delay: float = 0.0) -> Service:
    port = free_port()
    return Service(name, (sys.executable, "-c", STANDIN, str(port), str(delay)), f"http://127.0.0.1:{port}")


def test_plan_services_defaults_and_remote_backends():
    services = plan_services(UpOptions(model="base", batch_size=4, api_keys=("k1",)), python="py")
    assert [s.name for s in services] == ["whisper", "sidecar", "router"]
    whisper, sidecar, router = services
    assert whisper.argv[:4] == ("py", "-m", "server.cli", "serve")
    assert "--model" in whisper.argv and "base" in whisper.argv and "--port" in whisper.argv
    assert whisper.argv[whisper.argv.index("--port") + 1] == "8001"
    assert sidecar.argv[sidecar.argv.index("--port") + 1] == "8002"
    assert router.argv[router.argv.index("--whisper-url") + 1] == "http://127.0.0.1:8001"
    assert router.argv[router.argv.index("--sidecar-url") + 1] == "http://127.0.0.1:8002"
    assert router.url == "http://127.0.0.1:8000" and router.env["CHORUS_ROUTER_BACKEND_API_KEY"] == "k1"
    remote = plan_services(UpOptions(host="0.0.0.0", whisper_url="http://gpu1:9001", sidecar_url="http://gpu2:9002"))
    assert [s.name for s in remote] == ["router"]
    argv = remote[0].argv
    assert argv[argv.index("--whisper-url") + 1] == "http://gpu1:9001"
    assert remote[0].url == "http://127.0.0.1:8000"
    assert "--no-warmup" in plan_services(UpOptions(warmup=False))[0].argv


def test_waits_for_ready_then_stops_everything_when_one_dies():
    messages: list[str] = []
    launcher = Launcher(
        [standin("whisper", 1.0), standin("sidecar"), standin("router", 0.5)], echo=messages.append, grace_s=5
    )
    launcher.start()
    try:
        t0 = time.monotonic()
        assert launcher.wait_ready(timeout_s=30, poll_s=0.1)
        assert time.monotonic() - t0 >= 0.9  # waited for the slow one
        assert any("whisper: warming up" in m for m in messages)
        os.kill(launcher.procs["sidecar"].pid, signal.SIGKILL)
        assert launcher.supervise(poll_s=0.05) != 0
        assert any("sidecar exited" in m for m in messages)
    finally:
        launcher.stop()
    assert all(p.poll() is not None for p in launcher.procs.values())


def test_a_stop_request_ends_supervision_cleanly():
    launcher = Launcher([standin("router")], echo=lambda m: None, grace_s=5)
    launcher.start()
    try:
        assert launcher.wait_ready(timeout_s=30, poll_s=0.1)
        launcher.request_stop()
        assert launcher.supervise(poll_s=0.05) == 0
    finally:
        launcher.stop()
    assert launcher.procs["router"].poll() is not None


def test_a_server_that_dies_at_start_fails_readiness():
    messages: list[str] = []
    bad = Service("whisper", (sys.executable, "-c", "raise SystemExit(3)"), f"http://127.0.0.1:{free_port()}")
    launcher = Launcher([bad], echo=messages.append)
    launcher.start()
    try:
        assert not launcher.wait_ready(timeout_s=30, poll_s=0.1)
        assert any("exited with code 3" in m for m in messages)
    finally:
        launcher.stop()
