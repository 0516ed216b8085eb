"""``chorus bench soak``: saturating load on a whisper server for N minutes, good and bad requests mixed.

``concurrency`` clients keep the server busy with good speech (espeak-ng clips with their scripts)
for the whole window, each sending its next request when its previous one is answered; beside them
``bad_clients`` clients cycle through the bad-input corpus (``bench.bad_inputs``: each entry with the
status it must get) the same way, so hostile input arrives all the time while the engine is
saturated. A request answered 429 waits ``Retry-After`` and is sent again, as a client should.
Meanwhile the server process's RSS, threads and open files are sampled.

A good request is **lost** when it never got its 200 (an error, a timeout, a 5xx) or its transcript
is missing or further than ``max_wer`` (word error rate) from its reference: the script of the clip
(``reference="script"``), or what the same server said for that clip alone before the load
(``reference="baseline"``, for models whose words mean nothing, like the tests' random one).

The run passes when no request got an unexpected 5xx, nothing was lost, and the server's RSS grew
less than 10 % between the start and the end of the measured window (after ``warmup_s``).
"""

from __future__ import annotations

import asyncio
import itertools
import math
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench import report
from bench.audio_sets import AudioItem, describe
from bench.bad_inputs import BadInput, bad_inputs
from bench.machine import MemorySampler, machine_info
from bench.metrics import english_spelling_map, fmt, percentile, word_error_rate
from bench.plots import soak_figure
from bench.procs import free_port, metric_samples, start_whisper_server, stop_process

MAX_GROWTH = 0.10
"""Largest RSS growth over the measured window for a pass (a fraction: 0.10 = 10 %)."""


# --------------------------------------------------------------------------------------------- server


def start_whisper(
    model: str,
    port: int,
    *,
    cache_dir: Path,
    log_path: Path,
    batch_size: int | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen:
    """``chorus serve whisper --model MODEL --port PORT --compile-all-first`` as a child process, its log
    in ``log_path``. Every executable is compiled before ``/ready``, so the soak's memory window sees the
    serving process, not the background compilation (which grew RSS 13 % in a 12 s soak).

    Args:
        env: extra ``CHORUS_WHISPER_*`` settings (limits, max new tokens).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    return start_whisper_server(
        model,
        port,
        cache_dir=cache_dir,
        batch_size=batch_size,
        compile_all_first=True,
        env=env,
        stdout=log_path.open("w"),
        stderr=subprocess.STDOUT,
    )


async def metrics_counts(url: str, api_key: str) -> dict[str, float]:
    """``chorus_requests_total`` of the transcription route by status, from the server's ``/metrics``."""
    import httpx

    counts: dict[str, float] = {}
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            text = (await http.get(f"{url}/metrics", headers={"Authorization": f"Bearer {api_key}"})).text
    except httpx.HTTPError:
        return counts
    for labels, value in metric_samples(text, "chorus_requests_total"):
        if labels.get("route") == "/v1/audio/transcriptions":
            counts[labels["status"]] = counts.get(labels["status"], 0.0) + value
    return counts


# --------------------------------------------------------------------------------------------- load


@dataclass(frozen=True)
class Good:
    """A good request: an audio file, its bytes, and the reference its transcript is checked against."""

    item: AudioItem
    data: bytes
    reference: str


async def run_load(
    url: str,
    goods: list[Good],
    bads: list[BadInput],
    *,
    concurrency: int,
    duration_s: float,
    bad_clients: int,
    api_key: str,
    timeout_s: float,
    language: str | None,
    progress=None,
) -> list[dict]:
    """Closed-loop load for ``duration_s`` seconds; requests in flight at the end finish and count.

    ``concurrency`` clients send ``goods`` round-robin, ``bad_clients`` clients send ``bads`` round-robin.

    Returns:
        One record per request: ``t_s`` (sent, seconds since the start), ``kind`` (good | bad),
        ``name``, ``expected`` (status), ``status`` (final; None on a transport error), ``latency_s``
        (first send → final answer), ``attempts`` (sends, 429 retries included), ``text`` (good, 200),
        ``error`` (transport error or error body excerpt), ``audio_s`` (good).
    """
    import httpx

    good_cycle, bad_cycle = itertools.cycle(range(len(goods))), itertools.cycle(range(len(bads)))
    records: list[dict] = []
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    headers = {"Authorization": f"Bearer {api_key}"}
    start = time.monotonic()
    hard_stop = start + duration_s + timeout_s

    async def good_request(http: httpx.AsyncClient, g: Good) -> dict:
        fields = {"model": "whisper-1", "response_format": "json", **({"language": language} if language else {})}
        rec = {"kind": "good", "name": g.item.name, "expected": 200, "audio_s": g.item.duration_s}
        for attempt in itertools.count(1):
            rec["attempts"] = attempt
            try:
                r = await http.post("/v1/audio/transcriptions", data=fields, files={"file": (g.item.name, g.data)})
            except httpx.HTTPError as exc:
                rec.update(status=None, error=f"{type(exc).__name__}: {exc}"[:300])
                return rec
            if r.status_code == 429 and time.monotonic() < hard_stop:
                await asyncio.sleep(float(r.headers.get("retry-after", "1")))
                continue
            rec["status"] = r.status_code
            if r.status_code == 200:
                rec["text"] = r.json().get("text", "")
            else:
                rec["error"] = r.text[:300]
            return rec
        raise AssertionError("unreachable")

    async def bad_request(http: httpx.AsyncClient, b: BadInput) -> dict:
        rec = {"kind": "bad", "name": b.name, "expected": b.status}
        for attempt in itertools.count(1):
            rec["attempts"] = attempt
            try:
                r = await http.post("/v1/audio/transcriptions", **b.httpx_kwargs())
            except httpx.HTTPError as exc:
                rec.update(status=None, error=f"{type(exc).__name__}: {exc}"[:300])
                return rec
            if r.status_code == 429 and b.status != 429 and time.monotonic() < hard_stop:
                await asyncio.sleep(float(r.headers.get("retry-after", "1")))
                continue
            rec["status"] = r.status_code
            if r.status_code >= 400:
                rec["error"] = r.text[:300]
            return rec
        raise AssertionError("unreachable")

    async def worker(http: httpx.AsyncClient, bad: bool) -> None:
        while time.monotonic() - start < duration_s:
            t = time.monotonic()
            if bad:
                rec = await bad_request(http, bads[next(bad_cycle)])
            else:
                rec = await good_request(http, goods[next(good_cycle)])
            rec["t_s"] = round(t - start, 3)
            rec["latency_s"] = round(time.monotonic() - t, 4)
            records.append(rec)
            if progress:
                progress(records, time.monotonic() - start)

    async with httpx.AsyncClient(base_url=url, timeout=timeout_s, limits=limits, headers=headers) as http:
        await asyncio.gather(
            *(worker(http, False) for _ in range(concurrency)),
            *(worker(http, True) for _ in range(bad_clients if bads else 0)),
        )
    return records


async def baseline_texts(
    url: str, goods: list[Good], *, api_key: str, language: str | None, timeout_s: float
) -> list[str]:
    """Each good clip transcribed alone, one after another (the ``baseline`` references)."""
    import httpx

    fields = {"model": "whisper-1", "response_format": "json", **({"language": language} if language else {})}
    out = []
    async with httpx.AsyncClient(
        base_url=url, timeout=timeout_s, headers={"Authorization": f"Bearer {api_key}"}
    ) as http:
        for g in goods:
            r = await http.post("/v1/audio/transcriptions", data=fields, files={"file": (g.item.name, g.data)})
            r.raise_for_status()
            out.append(r.json()["text"])
    return out


# --------------------------------------------------------------------------------------------- analysis


def memory_growth(samples: list[dict], warmup_s: float) -> dict:
    """RSS growth over the measured window: median of its first tenth against median of its last tenth.

    Args:
        samples: ``{"t_s", "rss_mib"}`` in time order.
        warmup_s: samples before this time are not measured (model load, compilation, first allocations).

    Returns:
        ``start_mib``, ``end_mib``, ``max_mib``, ``growth`` (``end / start - 1``), ``slope_mib_per_h``
        (least-squares over the window), ``samples`` (in the window); ``nan`` values without samples.
    """
    window = [s for s in samples if s["t_s"] >= warmup_s and s.get("rss_mib")]
    if len(window) < 2:
        return {
            "start_mib": math.nan,
            "end_mib": math.nan,
            "max_mib": math.nan,
            "growth": math.nan,
            "slope_mib_per_h": math.nan,
            "samples": len(window),
        }
    k = max(1, len(window) // 10)
    start = statistics.median(s["rss_mib"] for s in window[:k])
    end = statistics.median(s["rss_mib"] for s in window[-k:])
    ts = [s["t_s"] for s in window]
    ys = [s["rss_mib"] for s in window]
    mt, my = sum(ts) / len(ts), sum(ys) / len(ys)
    var = sum((t - mt) ** 2 for t in ts)
    slope = sum((t - mt) * (y - my) for t, y in zip(ts, ys)) / var if var else 0.0
    return {
        "start_mib": start,
        "end_mib": end,
        "max_mib": max(ys),
        "growth": end / start - 1,
        "slope_mib_per_h": slope * 3600,
        "samples": len(window),
    }


def score(records: list[dict], references: dict[str, str], *, max_wer: float, normalizer: str) -> None:
    """Add ``wer`` and ``lost`` to every good record, ``unexpected`` to every record (in place).

    A good record is lost when its final status is not 200, its text is empty although the reference
    is not, or its WER against ``references[name]`` exceeds ``max_wer``. Any record is unexpected
    when its status differs from the one expected (a transport error included).
    """
    for rec in records:
        rec["unexpected"] = rec.get("status") != rec["expected"]
        if rec["kind"] != "good":
            continue
        ref = references[rec["name"]]
        if rec.get("status") != 200:
            rec["wer"], rec["lost"] = None, True
            continue
        text = rec.get("text") or ""
        wer = word_error_rate([ref], [text], normalizer)["wer"] if ref.strip() else (0.0 if not text.strip() else 1.0)
        rec["wer"] = None if math.isnan(wer) else round(wer, 4)
        rec["lost"] = (not text.strip() and bool(ref.strip())) or (rec["wer"] is not None and rec["wer"] > max_wer)


def summarize_soak(records: list[dict], samples: list[dict], *, wall_s: float, warmup_s: float) -> dict:
    """The soak's figures from its scored records (see :func:`score`) and process samples.

    Returns:
        Counts (``requests``, ``good``, ``bad``, ``status_counts``, ``server_errors`` (5xx),
        ``unexpected_5xx``, ``transport_errors``, ``unexpected`` and ``unexpected_by_name``,
        ``lost``, ``retries_429``), throughput (``good_per_s``, ``audio_per_s``), good latency
        percentiles (s), WER (``wer_mean``, ``wer_max``), ``memory`` (:func:`memory_growth`),
        ``threads`` and ``fds`` at the window's start and end, and ``passed``.
    """
    good = [r for r in records if r["kind"] == "good"]
    bad = [r for r in records if r["kind"] == "bad"]
    status_counts: dict[str, int] = {}
    for r in records:
        key = str(r.get("status"))
        status_counts[key] = status_counts.get(key, 0) + 1
    five = [r for r in records if (r.get("status") or 0) >= 500]
    unexpected = [r for r in records if r["unexpected"]]
    by_name: dict[str, int] = {}
    for r in unexpected:
        by_name[r["name"]] = by_name.get(r["name"], 0) + 1
    ok_good = [r for r in good if r.get("status") == 200]
    lat = [r["latency_s"] for r in ok_good]
    wers = [r["wer"] for r in ok_good if r.get("wer") is not None]
    memory = memory_growth(samples, warmup_s)
    window = [s for s in samples if s["t_s"] >= warmup_s]
    lost = sum(1 for r in good if r["lost"])
    summary = {
        "requests": len(records),
        "good": len(good),
        "bad": len(bad),
        "status_counts": dict(sorted(status_counts.items())),
        "server_errors": len(five),
        "unexpected_5xx": sum(1 for r in five if r["expected"] < 500),
        "transport_errors": sum(1 for r in records if r.get("status") is None),
        "unexpected": len(unexpected),
        "unexpected_by_name": dict(sorted(by_name.items())),
        "lost": lost,
        "retries_429": sum(r.get("attempts", 1) - 1 for r in records),
        "wall_s": wall_s,
        "good_per_s": len(ok_good) / wall_s if wall_s > 0 else math.nan,
        "audio_per_s": sum(r["audio_s"] for r in ok_good) / wall_s if wall_s > 0 else math.nan,
        "latency_p50_s": percentile(lat, 50),
        "latency_p95_s": percentile(lat, 95),
        "latency_max_s": max(lat) if lat else math.nan,
        "wer_mean": sum(wers) / len(wers) if wers else math.nan,
        "wer_max": max(wers) if wers else math.nan,
        "memory": memory,
        "threads": [window[0]["threads"], window[-1]["threads"]] if window else None,
        "fds": [window[0]["fds"], window[-1]["fds"]] if window else None,
    }
    growth = memory["growth"]
    summary["passed"] = (
        summary["unexpected_5xx"] == 0
        and lost == 0
        and len(ok_good) > 0
        and not math.isnan(growth)
        and growth < MAX_GROWTH
    )
    return summary


# --------------------------------------------------------------------------------------------- report


def table(s: dict, settings: dict) -> str:
    """The soak's Markdown table (one figure per row)."""
    m = s["memory"]
    rows = [
        ("verdict", "**PASS**" if s["passed"] else "**FAIL**"),
        (
            "load",
            f"{settings['minutes']:g} min, {settings['concurrency']} clients of good speech, "
            f"{settings['bad_clients']} of bad input",
        ),
        ("requests (good / bad)", f"{s['requests']} ({s['good']} / {s['bad']})"),
        ("answers by status", ", ".join(f"{k}: {v}" for k, v in s["status_counts"].items())),
        ("unexpected 5xx", str(s["unexpected_5xx"])),
        ("transport errors", str(s["transport_errors"])),
        ("lost good results", f"{s['lost']} (WER bound {settings['max_wer']:g} against the {settings['reference']})"),
        ("unexpected statuses", str(s["unexpected"]) + (f" ({s['unexpected_by_name']})" if s["unexpected"] else "")),
        ("429 retries", str(s["retries_429"])),
        ("good answers / s", fmt(s["good_per_s"])),
        ("audio s answered / s", fmt(s["audio_per_s"])),
        (
            "good latency p50 / p95 / max (s)",
            f"{fmt(s['latency_p50_s'])} / {fmt(s['latency_p95_s'])} / {fmt(s['latency_max_s'])}",
        ),
        ("WER mean / max (good, %)", f"{fmt(s['wer_mean'], 1, percent=True)} / {fmt(s['wer_max'], 1, percent=True)}"),
        (
            "RSS window start → end (MiB)",
            f"{fmt(m['start_mib'], 0)} → {fmt(m['end_mib'], 0)} (max {fmt(m['max_mib'], 0)})",
        ),
        (
            "RSS growth after warm-up",
            f"{fmt(m['growth'], 1, percent=True)} % (limit {MAX_GROWTH * 100:.0f} %); "
            f"trend {fmt(m['slope_mib_per_h'], 0)} MiB/h",
        ),
        (
            "server threads / open files (window start → end)",
            f"{s['threads'][0]} → {s['threads'][1]} / {s['fds'][0]} → {s['fds'][1]}" if s["threads"] else "—",
        ),
        (
            "server exit after SIGTERM",
            "—"
            if settings.get("server_exit") is None
            else f"code {settings['server_exit']['code']} in {settings['server_exit']['seconds']:.1f} s",
        ),
    ]
    return report.markdown_table(["figure", "value"], rows, "ll")


def render(record: dict, out_dir: Path) -> None:
    """Score the raw records, summarize, and write ``result.json``, ``table.md``, ``plot.png``."""
    settings = record["settings"]
    references = record["references"]
    score(record["records"], references, max_wer=settings["max_wer"], normalizer=settings["normalizer"])
    summary = summarize_soak(
        record["records"], record["samples"], wall_s=record["wall_s"], warmup_s=settings["warmup_s"]
    )
    record["summary"] = summary
    server = record.get("server_counts")
    notes = [
        f"- Warm-up: the first {settings['warmup_s']:g} s of load are not measured for memory; RSS is the "
        f"server's process tree, sampled every {settings['sample_s']:g} s; growth compares the medians of the "
        "first and last tenth of the window.",
        "- Good requests: espeak-ng clips (`response_format=json`, language forced), each transcript scored "
        f"against the {settings['reference']} ({'the clip’s script' if settings['reference'] == 'script' else 'the server’s own answer for the clip alone, before the load'}); "
        "a 429 is waited out (`Retry-After`) and sent again.",
        "- Bad requests, round-robin with the status each must get: "
        + ", ".join(f"`{n}` {s}" for n, s in settings["corpus"].items())
        + ".",
    ]
    if server is not None:
        notes.append(
            f"- The server's own count of answers on the route during the run: {server} "
            f"(client: {sum(r.get('attempts', 1) for r in record['records'] if r.get('status') is not None)} "
            "answers received, 429 retries included)."
        )
    if settings.get("server_command"):
        notes.append(f"- Server: `{settings['server_command']}` with {settings.get('server_env') or 'its defaults'}.")
    if summary["unexpected"]:
        samples = list(
            dict.fromkeys(
                f"{r['name']}: {r.get('status')} {r.get('error') or ''}"[:200]
                for r in record["records"]
                if r["unexpected"]
            )
        )[:5]
        notes.append("- Unexpected answers (first 5): " + "; ".join(samples))
    fig = soak_figure(
        record["samples"],
        record["records"],
        settings["warmup_s"],
        summary["memory"],
        f"Soak, {record['machine'].get('cpu')}",
    )
    report.write_result(out_dir, record, table(summary, settings), fig, notes)


# --------------------------------------------------------------------------------------------- run


def run_soak(
    *,
    minutes: float,
    items: list[AudioItem],
    out_dir: Path,
    name: str,
    command: str,
    cache_dir: Path,
    url: str | None = None,
    pid: int | None = None,
    model: str = "base",
    batch_size: int | None = None,
    max_new_tokens: int | None = None,
    concurrency: int = 8,
    bad_clients: int = 2,
    max_concurrent: int | None = None,
    max_queue: int | None = None,
    reference: str = "script",
    max_wer: float = 0.3,
    warmup_s: float | None = None,
    sample_s: float = 2.0,
    max_audio_s: float = 600.0,
    max_upload_mb: float = 25.0,
    language: str | None = "en",
    api_key: str = "sk-chorus-bench",
    timeout_s: float = 600.0,
    ready_timeout_s: float = 900.0,
    normalizer: str = "english",
    echo=print,
) -> dict:
    """Start (or target) a whisper server, load it for ``minutes``, and write the result directory.

    Args:
        minutes: length of the load (minutes; requests in flight at the end finish and count).
        items: good audio (espeak-ng clips with references, ``reference="script"`` needs them).
        out_dir, name, command: where to write, the result's name, the command recorded.
        cache_dir: Chorus's cache (the started server's models and XLA cache).
        url: a running server to load instead of starting one (``http://host:port``); its limits must
            be ``max_audio_s`` / ``max_upload_mb`` for the bad inputs' expected answers to hold.
        pid: that server's process, for memory (found by port when local).
        model, batch_size, max_new_tokens: the started server's settings.
        concurrency: clients sending good speech at once.
        bad_clients: clients sending the bad-input corpus at once, beside them.
        max_concurrent, max_queue: the started server's admission limits (small ones make it answer 429,
            which the clients wait out); its defaults when None.
        reference: ``script`` or ``baseline`` (see the module docstring).
        max_wer: a good transcript further than this from its reference is lost.
        warmup_s: seconds of load not measured for memory (default: 10 % of the run, at least 60 s,
            at most half the run).
        sample_s: seconds between process samples.
        max_audio_s, max_upload_mb: the started server's limits (and the corpus's expectations).
        language: forced on good requests (``None``: detected).
        api_key: bearer token sent.
        timeout_s: per request (s).
        ready_timeout_s: how long to wait for the server's ``/ready`` (s).
        normalizer: text normalizer before WER.
        echo: progress lines.

    Returns:
        The JSON record written (``summary["passed"]`` is the verdict).
    """
    from bench.machine import pid_listening_on
    from bench.throughput import server_command, wait_ready
    from server.core.audio import decode_audio

    duration_s = minutes * 60.0
    if warmup_s is None:
        warmup_s = min(max(60.0, 0.1 * duration_s), 0.5 * duration_s)
    proc = None
    server_env = {"CHORUS_WHISPER_MAX_AUDIO_S": str(max_audio_s), "CHORUS_WHISPER_MAX_UPLOAD_MB": str(max_upload_mb)}
    for key, value in (
        ("MAX_NEW_TOKENS", max_new_tokens),
        ("MAX_CONCURRENT", max_concurrent),
        ("MAX_QUEUE", max_queue),
    ):
        if value is not None:
            server_env[f"CHORUS_WHISPER_{key}"] = str(value)
    if url is None:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = start_whisper(
            model, port, cache_dir=cache_dir, log_path=out_dir / "server.log", batch_size=batch_size, env=server_env
        )
        pid = proc.pid
        echo(f"started the whisper server (pid {pid}) at {url}; log in {out_dir / 'server.log'}")
    url = url.rstrip("/").removesuffix("/v1")
    server_exit = None
    try:
        asyncio.run(wait_ready(url, ready_timeout_s))
        pid = pid or pid_listening_on(url)
        goods_raw = [(it, it.path.read_bytes()) for it in items]
        speech = decode_audio(goods_raw[0][1])[: 5 * 16000]
        corpus = bad_inputs(speech, max_audio_s=max_audio_s, max_upload_mb=max_upload_mb)
        if reference == "baseline":
            echo("baseline: each clip alone")
            texts = asyncio.run(
                baseline_texts(
                    url,
                    [Good(it, d, "") for it, d in goods_raw],
                    api_key=api_key,
                    language=language,
                    timeout_s=timeout_s,
                )
            )
        else:
            missing = [it.name for it in items if not it.reference]
            if missing:
                raise ValueError(f"no reference transcript for {missing}: use espeak audio or --reference baseline")
            texts = [it.reference for it in items]
        goods = [Good(it, d, t) for (it, d), t in zip(goods_raw, texts)]
        before = asyncio.run(metrics_counts(url, api_key))
        trace = MemorySampler(pid, sample_s, gpu=False, trace=True)
        from tqdm import tqdm

        bar = tqdm(total=round(duration_s), unit="s", desc="soak", file=sys.stderr)

        def progress(records: list[dict], elapsed: float) -> None:
            bar.n = min(round(elapsed), round(duration_s))
            five = sum(1 for r in records if (r.get("status") or 0) >= 500)
            rss = trace.samples[-1]["rss_mib"] if trace.samples else 0
            bar.set_postfix(requests=len(records), five_xx=five, rss_mib=f"{rss:.0f}")

        machine = machine_info()
        trace.start()
        t0 = time.monotonic()
        try:
            records = asyncio.run(
                run_load(
                    url,
                    goods,
                    corpus,
                    concurrency=concurrency,
                    duration_s=duration_s,
                    bad_clients=bad_clients,
                    api_key=api_key,
                    timeout_s=timeout_s,
                    language=language,
                    progress=progress,
                )
            )
        finally:
            wall_s = time.monotonic() - t0
            trace.stop()
            bar.close()
        after = asyncio.run(metrics_counts(url, api_key))
        command_line = server_command(pid)
    finally:
        if proc is not None:
            code, seconds = stop_process(proc)
            server_exit = {"code": code, "seconds": round(seconds, 2)}
            echo(f"server stopped: exit code {code} after {seconds:.1f} s")
    record = {
        "kind": "soak",
        "name": name,
        "created": report.now_iso(),
        "command": command,
        "machine": machine,
        "settings": {
            "minutes": minutes,
            "url": url,
            "model": model if proc is not None else None,
            "batch_size": batch_size,
            "max_new_tokens": max_new_tokens,
            "concurrency": concurrency,
            "bad_clients": bad_clients,
            "max_concurrent": max_concurrent,
            "max_queue": max_queue,
            "reference": reference,
            "max_wer": max_wer,
            "warmup_s": warmup_s,
            "sample_s": sample_s,
            "max_audio_s": max_audio_s,
            "max_upload_mb": max_upload_mb,
            "language": language,
            "timeout_s": timeout_s,
            "normalizer": normalizer,
            "spelling_map": english_spelling_map()[1],
            "corpus": {b.name: b.status for b in corpus},
            "server_command": command_line,
            "server_env": server_env if proc is not None else None,
            "server_exit": server_exit,
        },
        "audio": describe(items),
        "references": {g.item.name: g.reference for g in goods},
        "wall_s": wall_s,
        "server_counts": {k: after.get(k, 0) - before.get(k, 0) for k in sorted(set(after) | set(before))}
        if after
        else None,
        "samples": trace.samples,
        "records": records,
    }
    render(record, out_dir)
    return record
