"""Server processes for the benchmarks and the tests: free ports, waiting for an answer, stopping, and
reading a server's Prometheus ``/metrics``.

One copy of what ``bench.soak``, ``bench.throughput`` and the process tests (tests/test_reliability.py,
test_router_e2e.py, test_launcher.py, test_bench_smoke.py) each wrote for themselves. The launcher
(``chorus up``) takes its ports from the command line and needs none of this.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Callable, Collection

import httpx


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on at ``host`` now (the OS picks it; another process may still take
    it before the caller binds it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_http(
    url: str,
    proc: subprocess.Popen | None = None,
    timeout_s: float = 240.0,
    ok: Collection[int] | Callable[[httpx.Response], bool] = (200,),
    poll_s: float = 0.3,
) -> httpx.Response:
    """Poll ``GET url`` until it answers as wanted; return that answer.

    Args:
        url: the full URL (``http://127.0.0.1:PORT/ready``).
        proc: the server's process: waiting stops with an error as soon as it exits.
        timeout_s: give up after this many seconds.
        ok: the statuses that count, or a test of the response.
        poll_s: seconds between tries.

    Raises:
        RuntimeError: ``proc`` exited first (the message ends with its stderr when that is a pipe).
        TimeoutError: no wanted answer within ``timeout_s`` (the message gives the last one).
    """
    wanted = ok if callable(ok) else (lambda r: r.status_code in ok)
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = proc.stderr.read()[-3000:] if proc.stderr else ""
            raise RuntimeError(f"process exited with {proc.returncode} while waiting for {url}: {tail}")
        try:
            r = httpx.get(url, timeout=2)
            if wanted(r):
                return r
            last = f"{r.status_code} {r.text[:200]}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(poll_s)
    raise TimeoutError(f"{url} not ready after {timeout_s:g} s ({last})")


def stop_process(proc: subprocess.Popen, timeout_s: float = 60.0) -> tuple[int | None, float]:
    """SIGTERM ``proc`` and wait for it to drain and exit; SIGKILL it after ``timeout_s`` seconds.

    Returns:
        ``(exit code, seconds it took)``; the code is ``None`` when it had to be killed.
    """
    t0 = time.monotonic()
    if proc.poll() is not None:
        return proc.returncode, 0.0
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        code = None
    return code, time.monotonic() - t0


def metric_samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """The samples called ``name`` (``chorus_requests_total``) in Prometheus exposition ``text``.

    Parsed by ``prometheus_client.parser``; each sample is ``(labels, value)``.

    Raises:
        ValueError: ``text`` is not the Prometheus text format.
    """
    from prometheus_client.parser import text_string_to_metric_families

    return [
        (dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]
