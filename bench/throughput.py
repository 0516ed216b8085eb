"""``chorus bench throughput``: load a running server with the OpenAI SDK at several concurrencies.

For each concurrency ``c``: a few warm-up requests (not measured), then ``c`` workers send the
audio files round-robin, each starting its next request when its previous one returns, until
``duration`` seconds have passed; requests in flight then finish and count. The window's wall time
runs from the first request sent to the last response received. Meanwhile the server process's
RSS (its whole process tree) and, where present, GPU memory are sampled.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench import report
from bench.audio_sets import AudioItem, describe
from bench.machine import MemorySampler, cpu_busy_s, machine_info, pid_listening_on, tree_cpu_s
from bench.metrics import RequestRecord, english_spelling_map, fmt, summarize, word_error_rate
from bench.plots import throughput_figure


@dataclass(frozen=True)
class Target:
    """A server to load: ``label`` in tables, ``url`` (``http://host:port``, no ``/v1``), ``pid`` to watch."""

    label: str
    url: str
    pid: int | None = None

    @staticmethod
    def parse(spec: str, pid: int | None = None) -> Target:
        """``"http://h:p"`` or ``"label=http://h:p"``; the pid is looked up by port when not given."""
        label, _, url = spec.partition("=") if "=" in spec.split("://")[0] else ("", "", spec)
        url = url.rstrip("/").removesuffix("/v1")
        return Target(label or url, url, pid if pid is not None else pid_listening_on(url))


def _text(response) -> str:
    if isinstance(response, str):
        return response
    return getattr(response, "text", "") or ""


async def wait_ready(url: str, timeout_s: float) -> None:
    """Poll ``GET {url}/ready`` (then ``/health``) until 200.

    Raises:
        TimeoutError: not ready within ``timeout_s`` seconds.
    """
    import httpx

    deadline = time.monotonic() + timeout_s
    last = "no answer"
    async with httpx.AsyncClient(timeout=5.0) as http:
        while time.monotonic() < deadline:
            for path in ("/ready", "/health"):
                try:
                    r = await http.get(url + path)
                except httpx.HTTPError as exc:
                    last = f"{type(exc).__name__}: {exc}"
                    break
                if r.status_code == 200:
                    return
                last = f"{path} answered {r.status_code}"
                if r.status_code != 404:
                    break
            await asyncio.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout_s:g} s ({last})")


def server_command(pid: int | None) -> str | None:
    """The command line of the server process (``chorus serve whisper …``), or ``None``."""
    import shlex

    import psutil

    if pid is None:
        return None
    try:
        argv = psutil.Process(pid).cmdline()
    except psutil.Error:
        return None
    for i, arg in enumerate(argv):  # drop the interpreter: ".../python .../bin/chorus serve …" → "chorus serve …"
        if arg.endswith("/chorus") or arg == "chorus" or arg == "server.cli":
            return shlex.join(["chorus", *argv[i + 1 :]])
    return shlex.join(argv)


async def server_info(url: str, api_key: str) -> dict | None:
    """What the server says about itself: ``GET /v1/models`` (Chorus adds its engine's settings)."""
    import httpx

    try:
        async with httpx.AsyncClient(timeout=10.0) as http:
            r = await http.get(url + "/v1/models", headers={"Authorization": f"Bearer {api_key}"})
            return r.json() if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


async def run_level(
    client,
    payloads: list[tuple[AudioItem, bytes]],
    *,
    concurrency: int,
    duration_s: float,
    warmup_requests: int,
    request_kwargs: dict,
    max_requests: int | None = None,
    pid: int | None = None,
    desc: str = "",
) -> dict:
    """Measure one concurrency level against one server.

    Args:
        client: an ``openai.AsyncOpenAI`` for the server.
        payloads: ``(item, file bytes)`` sent round-robin.
        concurrency: requests in flight at once.
        duration_s: seconds during which new requests are started.
        warmup_requests: requests sent first, ``concurrency`` at a time, and not measured.
        request_kwargs: ``model``, ``response_format``, ``language`` … for ``transcriptions.create``.
        max_requests: stop starting requests after this many (``None``: only the duration limits).
        pid: the server process whose memory is sampled.
        desc: progress bar label.

    Returns:
        :func:`bench.metrics.summarize` of the window plus ``concurrency``, ``warmup_s``,
        ``peak_rss_mib``, ``peak_gpu_mib``, ``cpu_own_cores`` / ``cpu_other_cores`` (cores busy on
        average in the server's process tree / in every other process, this client included; ``None``
        without a pid), ``error_samples`` (up to 5 messages) and ``records``
        (``[{item, audio_s, latency_s, ok, error, text}]``, seconds).
    """
    from tqdm import tqdm

    async def one(i: int) -> RequestRecord:
        item, data = payloads[i % len(payloads)]
        t = time.perf_counter()
        try:
            resp = await client.audio.transcriptions.create(file=(item.name, data), **request_kwargs)
            return RequestRecord(item.duration_s, time.perf_counter() - t, item=i % len(payloads), text=_text(resp))
        except Exception as exc:  # every failure is a measured error, never a crash of the run
            return RequestRecord(
                item.duration_s,
                time.perf_counter() - t,
                ok=False,
                error=f"{type(exc).__name__}: {exc}"[:300],
                item=i % len(payloads),
            )

    t0 = time.perf_counter()
    for start in range(0, warmup_requests, concurrency):
        await asyncio.gather(*(one(i) for i in range(start, min(start + concurrency, warmup_requests))))
    warmup_s = time.perf_counter() - t0

    counter = itertools.count()
    records: list[RequestRecord] = []
    bar = tqdm(total=round(duration_s), unit="s", desc=desc, file=sys.stderr, leave=True)

    async def worker(start: float) -> None:
        while time.perf_counter() - start < duration_s:
            n = next(counter)
            if max_requests is not None and n >= max_requests:
                return
            rec = await one(n)
            records.append(rec)
            ok = [r for r in records if r.ok]
            bar.set_postfix(
                ok=len(ok),
                errors=len(records) - len(ok),
                rtfx=f"{sum(r.audio_s for r in ok) / (time.perf_counter() - start):.2f}",
            )

    async def ticker(start: float) -> None:
        while True:
            bar.n = min(round(time.perf_counter() - start), round(duration_s))
            bar.refresh()
            await asyncio.sleep(0.5)

    with MemorySampler(pid) as memory:
        busy0, server0 = cpu_busy_s(), tree_cpu_s(pid)
        start = time.perf_counter()
        tick = asyncio.create_task(ticker(start))
        try:
            await asyncio.gather(*(worker(start) for _ in range(concurrency)))
        finally:
            tick.cancel()
        wall = time.perf_counter() - start
        busy1, server1 = cpu_busy_s(), tree_cpu_s(pid)
    server_cores = None if server0 is None or server1 is None else (server1 - server0) / wall
    other_cores = max(0.0, (busy1 - busy0) - (server1 - server0)) / wall if server_cores is not None else None
    bar.n = round(duration_s)
    bar.close()
    stats = summarize(records, wall)
    return {
        "concurrency": concurrency,
        **stats,
        "warmup_s": warmup_s,
        "warmup_requests": warmup_requests,
        "peak_rss_mib": memory.peak_rss_mib,
        "peak_gpu_mib": memory.peak_gpu_mib,
        "cpu_own_cores": server_cores,
        "cpu_other_cores": other_cores,
        "error_samples": list(dict.fromkeys(r.error for r in records if not r.ok))[:5],
        "records": [r.__dict__ for r in records],
    }


def table(rows: list[dict]) -> str:
    """The throughput Markdown table: one row per (server, concurrency)."""
    headers = [
        "server",
        "concurrency",
        "RTFx",
        "req/s",
        "p50 s",
        "p95 s",
        "p99 s",
        "requests",
        "errors",
        "WER %",
        "peak RSS MiB",
        "peak GPU MiB",
        "CPU cores server / other",
    ]
    out = [
        [
            r["label"],
            str(r["concurrency"]),
            fmt(r["rtfx"]),
            fmt(r["requests_per_s"]),
            fmt(r["latency_p50_s"]),
            fmt(r["latency_p95_s"]),
            fmt(r["latency_p99_s"]),
            str(r["requests"]),
            str(r["errors"]),
            fmt(r.get("wer"), 1, percent=True),
            fmt(r.get("peak_rss_mib"), 0),
            fmt(r.get("peak_gpu_mib"), 0),
            report.cores_text(r),
        ]
        for r in rows
    ]
    return report.markdown_table(headers, out, "llrrrrrrrrrrr")


async def _run(
    targets,
    payloads,
    *,
    concurrencies,
    duration_s,
    warmup_requests,
    request_kwargs,
    api_key,
    timeout_s,
    ready_timeout_s,
    max_requests,
) -> list[dict]:
    import httpx
    from openai import AsyncOpenAI

    rows = []
    for target in targets:
        await wait_ready(target.url, ready_timeout_s)
        if target.pid is None:  # a server started just before the bench listens only now
            target = Target(target.label, target.url, pid_listening_on(target.url))
        server = await server_info(target.url, api_key)
        limits = httpx.Limits(max_connections=max(concurrencies) + 4, max_keepalive_connections=max(concurrencies) + 4)
        http = httpx.AsyncClient(limits=limits, timeout=timeout_s)
        client = AsyncOpenAI(base_url=target.url + "/v1", api_key=api_key, http_client=http, max_retries=0)
        try:
            for c in concurrencies:
                level = await run_level(
                    client,
                    payloads,
                    concurrency=c,
                    duration_s=duration_s,
                    warmup_requests=warmup_requests,
                    request_kwargs=request_kwargs,
                    max_requests=max_requests,
                    pid=target.pid,
                    desc=f"{target.label} c={c}",
                )
                rows.append(
                    {
                        "label": target.label,
                        "url": target.url,
                        "pid": target.pid,
                        "server": server,
                        "server_command": server_command(target.pid),
                        **level,
                    }
                )
        finally:
            await http.aclose()
    return rows


LEVEL_FIELDS = (
    "label",
    "url",
    "pid",
    "concurrency",
    "warmup_s",
    "warmup_requests",
    "peak_rss_mib",
    "peak_gpu_mib",
    "cpu_own_cores",
    "cpu_other_cores",
    "error_samples",
)


def summarize_level(level: dict, items: list[AudioItem], normalizer: str) -> dict:
    """One table row from one measured level's raw request records (see :func:`run_level`).

    Returns:
        The level's identifying and memory/CPU fields, :func:`bench.metrics.summarize` of its records
        over its ``wall_s``, and ``wer`` (fraction) / ``wer_detail`` over successful responses to files
        with references.
    """
    records = [RequestRecord(**r) for r in level["records"]]
    scored = [r for r in records if r.ok and items[r.item].reference is not None]
    wer = word_error_rate([items[r.item].reference for r in scored], [r.text for r in scored], normalizer)
    return {
        **{k: level.get(k) for k in LEVEL_FIELDS},
        **summarize(records, level["wall_s"]),
        "wer": wer["wer"],
        "wer_detail": wer,
    }


def render(record: dict, out_dir: Path) -> None:
    """Summarize a throughput record's raw results into ``record["summary"]`` and write the result files."""
    settings = record["settings"]
    items = [AudioItem.from_json(d) for d in record["audio"]["items"]]
    rows = [summarize_level(level, items, settings["normalizer"]) for level in record["results"]]
    record["summary"] = rows
    notes = [
        f"- {r['label']} c={r['concurrency']} errors: {'; '.join(r['error_samples'])}" for r in rows if r["errors"]
    ]
    notes.append(
        f"- Each level: warm-up requests (not measured), then {settings['duration_s']:g} s of closed-loop load "
        "(each of the c clients sends its next file when the previous answer arrives; requests in flight at "
        "the end finish and count). RTFx = audio seconds answered / wall seconds; latency per request. "
        "Peak RSS: the server's process tree, sampled every 0.2 s. CPU cores: cores busy on average in the "
        "server's process tree and in all other processes (this load generator included)."
    )
    commands = dict.fromkeys(
        f"{level['label']}: `{level['server_command']}`" for level in record["results"] if level.get("server_command")
    )
    notes += [f"- Server {c}" for c in commands]
    if any(r["pid"] is None for r in rows):
        notes.append("- Peak RSS is missing for servers whose process was not found (remote, or pass --pid).")
    fig = throughput_figure(rows, f"Throughput on {record['machine']['cpu']}")
    report.write_result(out_dir, record, table(rows), fig, notes)


def run_throughput(
    *,
    urls: list[str],
    items: list[AudioItem],
    concurrencies: list[int],
    duration_s: float,
    out_dir: Path,
    name: str,
    command: str,
    model: str = "whisper-1",
    response_format: str = "json",
    language: str | None = "en",
    warmup_requests: int | None = None,
    api_key: str = "sk-chorus-bench",
    pid: int | None = None,
    timeout_s: float = 600.0,
    ready_timeout_s: float = 600.0,
    max_requests: int | None = None,
    normalizer: str = "english",
) -> dict:
    """Load each server at each concurrency and write ``result.json``, ``table.md``, ``plot.png``.

    Args:
        urls: servers (``http://host:port`` or ``label=http://host:port``).
        items: the audio files sent, round-robin.
        concurrencies: levels to measure, e.g. ``[1, 4, 8, 16]``.
        duration_s: seconds of load per level (requests in flight at the end still finish and count).
        out_dir, name, command: where to write, the result's name, the command line recorded.
        model, response_format, language: the request's fields (``language`` ``None``: not sent).
        warmup_requests: unmeasured requests before each level (default: the concurrency, at least 2).
        api_key: bearer token sent.
        pid: the server process to watch (only with one URL; otherwise found by port).
        timeout_s: per request (s).
        ready_timeout_s: how long to wait for ``/ready`` (s).
        max_requests: per level, stop starting requests after this many.
        normalizer: WER normalizer for responses of files with references.

    Returns:
        The JSON record written.
    """
    targets = [Target.parse(u, pid if len(urls) == 1 else None) for u in urls]
    payloads = [(it, it.path.read_bytes()) for it in items]
    request_kwargs = {"model": model, "response_format": response_format}
    if language:
        request_kwargs["language"] = language
    machine = machine_info()
    rows = asyncio.run(
        _run(
            targets,
            payloads,
            concurrencies=concurrencies,
            duration_s=duration_s,
            warmup_requests=warmup_requests if warmup_requests is not None else max(2, max(concurrencies)),
            request_kwargs=request_kwargs,
            api_key=api_key,
            timeout_s=timeout_s,
            ready_timeout_s=ready_timeout_s,
            max_requests=max_requests,
        )
    )
    record = {
        "kind": "throughput",
        "name": name,
        "created": report.now_iso(),
        "command": command,
        "machine": machine,
        "settings": {
            "urls": urls,
            "concurrency": concurrencies,
            "duration_s": duration_s,
            "model": model,
            "response_format": response_format,
            "language": language,
            "warmup_requests": warmup_requests,
            "timeout_s": timeout_s,
            "max_requests": max_requests,
            "normalizer": normalizer,
            "spelling_map": english_spelling_map()[1],
        },
        "audio": describe(items),
        "results": rows,
    }
    render(record, out_dir)
    return record
