"""``chorus up``: the whisper server, the sidecar and the router as three processes on one machine.

Each server is started as ``python -m server.cli serve <name> …`` in its own process group, the
launcher waits until every ``/ready`` answers 200 (printing progress), then watches them: when one
exits, or on Ctrl-C / SIGTERM, the others are stopped: the router first, then the backends, each
with SIGTERM (the server drains its requests in flight, ``shutdown_timeout_s``, 30 s by default) and
SIGKILL after a grace period (45 s).
A backend given by URL (``--whisper-url``, ``--sidecar-url``) is not started here: it runs elsewhere.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import httpx


@dataclass(frozen=True)
class Service:
    """One server to start: its name, command line, extra environment, and its base URL."""

    name: str
    argv: tuple[str, ...]
    url: str
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class UpOptions:
    """What ``chorus up`` starts (see ``plan_services``)."""

    host: str = "127.0.0.1"
    router_port: int = 8000
    whisper_port: int = 8001
    sidecar_port: int = 8002
    whisper_url: str | None = None  # run elsewhere: not started here
    sidecar_url: str | None = None
    model: str | None = None
    batch_size: int | None = None
    diarizer: str | None = None
    warmup: bool = True
    api_keys: tuple[str, ...] = ()
    log_level: str | None = None


def _local_url(host: str, port: int) -> str:
    connect = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
    return f"http://{connect}:{port}"


def plan_services(o: UpOptions, python: str = sys.executable) -> list[Service]:
    """The processes to start, backends first; the router is told where the backends are."""
    base = (python, "-m", "server.cli", "serve")
    common: list[str] = []
    for key in o.api_keys:
        common += ["--api-key", key]
    services = []
    whisper_url = o.whisper_url or _local_url(o.host, o.whisper_port)
    sidecar_url = o.sidecar_url or _local_url(o.host, o.sidecar_port)
    if o.whisper_url is None:
        argv = [*base, "whisper", "--host", o.host, "--port", str(o.whisper_port), *common]
        if o.model:
            argv += ["--model", o.model]
        if o.batch_size:
            argv += ["--batch-size", str(o.batch_size)]
        if not o.warmup:
            argv.append("--no-warmup")
        services.append(Service("whisper", tuple(argv), whisper_url))
    if o.sidecar_url is None:
        argv = [*base, "sidecar", "--host", o.host, "--port", str(o.sidecar_port), *common]
        if o.diarizer:
            argv += ["--diarizer", o.diarizer]
        if not o.warmup:
            argv.append("--no-warmup")
        services.append(Service("sidecar", tuple(argv), sidecar_url))
    argv = [
        *base,
        "router",
        "--host",
        o.host,
        "--port",
        str(o.router_port),
        "--whisper-url",
        whisper_url,
        "--sidecar-url",
        sidecar_url,
        *common,
    ]
    env = {}
    if o.api_keys:  # the backends require a key too: the router sends the first one
        env["CHORUS_ROUTER_BACKEND_API_KEY"] = o.api_keys[0]
    services.append(Service("router", tuple(argv), _local_url(o.host, o.router_port), env))
    if o.log_level:
        services = [
            Service(
                s.name,
                s.argv,
                s.url,
                {**s.env, "CHORUS_LOG_LEVEL": o.log_level, f"CHORUS_{s.name.upper()}_LOG_LEVEL": o.log_level},
            )
            for s in services
        ]
    return services


class Launcher:
    """Starts ``services``, waits for readiness, supervises, and stops them all."""

    def __init__(
        self, services: Sequence[Service], *, echo: Callable[[str], None] = print, grace_s: float = 45.0
    ) -> None:
        self.services = list(services)
        self.echo = echo
        self.grace_s = grace_s
        self.procs: dict[str, subprocess.Popen] = {}
        self._stopping = False

    def start(self) -> None:
        for s in self.services:
            env = {**os.environ, **s.env}
            self.procs[s.name] = subprocess.Popen(list(s.argv), env=env, start_new_session=True)
            self.echo(f"started {s.name} (pid {self.procs[s.name].pid}) at {s.url}")

    def exited(self) -> list[tuple[str, int]]:
        """``(name, returncode)`` of every process that has stopped."""
        return [(n, p.returncode) for n, p in self.procs.items() if p.poll() is not None]

    def wait_ready(self, timeout_s: float = 900.0, poll_s: float = 0.5) -> bool:
        """Poll every ``/ready`` until all are 200 (True), a process dies or the time is up (False)."""
        pending = {s.name: s.url for s in self.services}
        last: dict[str, str] = {}
        deadline = time.monotonic() + timeout_s
        with httpx.Client(timeout=2.0) as http:
            while pending and time.monotonic() < deadline and not self._stopping:
                if self.exited():
                    name, code = self.exited()[0]
                    self.echo(f"{name} exited with code {code} before it was ready")
                    return False
                for name, url in list(pending.items()):
                    try:
                        r = http.get(f"{url}/ready")
                        detail = r.json().get("detail", str(r.status_code))
                        ok = r.status_code == 200
                    except (httpx.HTTPError, ValueError) as exc:
                        ok, detail = False, type(exc).__name__
                    if ok:
                        self.echo(f"{name} ready at {url}")
                        del pending[name]
                    elif last.get(name) != detail:
                        self.echo(f"{name}: {detail}")
                        last[name] = detail
                time.sleep(poll_s)
        if pending and not self._stopping:
            self.echo(f"not ready after {timeout_s:g} s: {', '.join(pending)}")
        return not pending

    def supervise(self, poll_s: float = 0.5) -> int:
        """Block until a process exits or a stop was requested; returns the exit code for the CLI."""
        while not self._stopping:
            dead = self.exited()
            if dead:
                name, code = dead[0]
                self.echo(f"{name} exited with code {code}; stopping the others")
                return code or 1
            time.sleep(poll_s)
        return 0

    def request_stop(self, *_: object) -> None:
        self._stopping = True

    def stop(self) -> None:
        """Stop the router first, then the backends: SIGTERM each stage's live process groups, wait up
        to ``grace_s`` for them to drain and exit, SIGKILL what is left.

        The router goes first so the requests it is draining can still reach the backends.
        """
        names = list(self.procs)
        stages = [[n for n in names if n == "router"], [n for n in reversed(names) if n != "router"]]
        for stage in stages:
            live = [n for n in stage if self.procs[n].poll() is None]
            for name in live:
                self.echo(f"stopping {name}")
                _signal_group(self.procs[name], signal.SIGTERM)
            deadline = time.monotonic() + self.grace_s
            for name in stage:
                p = self.procs[name]
                try:
                    p.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    self.echo(f"{name} did not stop in {self.grace_s:g} s; killing it")
                    _signal_group(p, signal.SIGKILL)
                    p.wait(timeout=5)

    def run(self, ready_timeout_s: float = 900.0) -> int:
        """start → wait_ready → supervise → stop, with SIGINT/SIGTERM handled."""
        old = {sig: signal.signal(sig, self.request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.start()
            if not self.wait_ready(ready_timeout_s) and not self._stopping:
                return 1
            if not self._stopping:
                router = next((s for s in self.services if s.name == "router"), None)
                self.echo(f"Chorus is up: {router.url if router else ''}/v1 (Ctrl-C to stop)")
            return self.supervise()
        finally:
            self.stop()
            for sig, handler in old.items():
                signal.signal(sig, handler)


def _signal_group(p: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(p.pid, sig)  # the server and anything it spawned (start_new_session=True)
    except (ProcessLookupError, PermissionError):
        try:
            p.send_signal(sig)
        except ProcessLookupError:
            pass
