"""Server processes for the benchmarks and the tests: free ports, waiting for an answer, stopping, and
reading a server's Prometheus ``/metrics``.

One copy of what ``bench.soak``, ``bench.throughput`` and the process tests (tests/test_reliability.py,
test_router_e2e.py, test_launcher.py, test_bench_smoke.py) each wrote for themselves. The launcher
(``chorus up``) takes its ports from the command line and needs none of this.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import IO

import httpx


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on at ``host`` now (the OS picks it; another process may still take
    it before the caller binds it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


REPO = Path(__file__).resolve().parents[1]


def start_whisper_server(
    model: str | Path,
    port: int,
    *,
    cache_dir: str | Path,
    batch_size: int | None = None,
    warmup: bool = True,
    compile_all_first: bool = False,
    args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    stdout: int | IO | None = subprocess.DEVNULL,
    stderr: int | IO | None = subprocess.DEVNULL,
    text: bool = False,
) -> subprocess.Popen:
    """``chorus serve whisper --model MODEL --port PORT`` as a child process of this Python, run from the
    repository root.

    Args:
        model: a model name (``base``) or a Hugging Face checkpoint directory.
        port: the port on 127.0.0.1.
        cache_dir: ``CHORUS_CACHE_DIR`` (imported models and the XLA compile cache).
        batch_size: ``--batch-size`` (the server's default when ``None``).
        warmup: ``False`` adds ``--no-warmup`` (shapes compile on first use).
        compile_all_first: ``--compile-all-first`` (every executable before ``/ready``).
        args: further command-line arguments (``["--api-key", "secret"]``).
        env: further environment variables (``CHORUS_WHISPER_*`` settings) over ``os.environ``.
        stdout, stderr, text: as for ``subprocess.Popen``.
    """
    argv = [sys.executable, "-m", "server.cli", "serve", "whisper", "--model", str(model), "--port", str(port)]
    if batch_size:
        argv += ["--batch-size", str(batch_size)]
    if not warmup:
        argv.append("--no-warmup")
    if compile_all_first:
        argv.append("--compile-all-first")
    full_env = {**os.environ, "CHORUS_CACHE_DIR": str(cache_dir), **(env or {})}
    return subprocess.Popen([*argv, *args], cwd=REPO, env=full_env, stdout=stdout, stderr=stderr, text=text)


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
