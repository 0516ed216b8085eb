"""Run one engine over an audio set in a fresh process, so engines never share cores or memory.

The parent calls :func:`run_isolated`, which starts ``python -m bench.worker JOB.json OUT.json``
and waits; the child loads the engine (timed), warms it up on a short clip (timed, excluded from
the measurements), transcribes every item one after another (each timed), and writes the raw
measurements and transcripts to ``OUT.json``. Its progress bar goes to the parent's stderr.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import numpy as np

from bench.audio_sets import AudioItem
from bench.engines import EngineSpec, make_runner
from bench.machine import cpu_busy_s, rss_bytes, tree_cpu_s, usable_cores
from server.core.audio import SAMPLE_RATE, decode_audio

WARMUP_MAX_S = 10.0  # the warm-up clip: the start of the shortest item, at most this long (seconds)


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run_job(job: dict) -> dict:
    """Child side: load, warm up and time one engine over the job's items (see the module docstring).

    Args:
        job: ``engine`` (:meth:`EngineSpec.to_json`), ``items`` (:meth:`AudioItem.to_json` list),
            ``language``, ``repeats`` (passes over the items), ``max_seconds`` (stop starting new
            items once this much transcription wall time was spent; ``None`` = no limit),
            ``threads``, ``concurrency`` (files transcribed at once from as many threads;
            default 1, one after another).

    Returns:
        ``engine``, ``load_s``, ``warmup_s`` (seconds), ``rss_before_load_mib``,
        ``rss_after_load_mib``, ``peak_rss_mib`` (MiB, the peak over the whole process life),
        ``records`` (``[{item, repeat, audio_s, latency_s, text}]``, latencies in seconds),
        ``truncated`` (the time limit cut the run short), ``threads``, ``concurrency``,
        ``timed_wall_s`` (wall time of the timed transcriptions, first start to last end), ``load_average_start`` and
        ``load_average_end`` (the machine's 1/5/15-minute load averages), ``cpu_own_cores`` and
        ``cpu_other_cores`` (CPU time used by this process and by every other process during the
        timed transcriptions, divided by their wall time: cores busy on average; other work
        competing for the CPU shows in the second; both counted on the process's usable cores only,
        ``cpu_affinity``, so a pinned run is not charged for work on the other cores), ``error`` (``None``).
    """
    from tqdm import tqdm

    spec = EngineSpec.from_json(job["engine"])
    items = [AudioItem.from_json(d) for d in job["items"]]
    audio = [decode_audio(it.path.read_bytes()) for it in items]
    shortest = min(range(len(items)), key=lambda i: items[i].duration_s)
    warm_clip = audio[shortest][: int(WARMUP_MAX_S * SAMPLE_RATE)]
    cores = usable_cores()
    threads = int(job.get("threads") or len(cores))  # a run pinned to 1 core gets 1 CTranslate2/torch thread
    runner = make_runner(spec, job.get("language"), threads)
    out: dict = {"engine": spec.to_json(), "threads": threads, "error": None, "load_average_start": os.getloadavg()}
    out["cpu_affinity"] = cores
    out["rss_before_load_mib"] = rss_bytes(os.getpid(), children=False) / 2**20
    t0 = time.perf_counter()
    runner.load()
    out["load_s"] = time.perf_counter() - t0
    out["rss_after_load_mib"] = rss_bytes(os.getpid(), children=False) / 2**20
    out["jax_compilation_cache_dir"] = getattr(runner, "compilation_cache_dir", None)
    t0 = time.perf_counter()
    runner.warmup(warm_clip)
    out["warmup_s"] = time.perf_counter() - t0
    records: list[dict] = []
    max_s = job.get("max_seconds")
    spent = 0.0
    truncated = False
    total = sum(it.duration_s for it in items) * int(job.get("repeats", 1))
    busy0, own0 = cpu_busy_s(cores), tree_cpu_s(os.getpid())
    timed0 = time.perf_counter()
    concurrency = int(job.get("concurrency") or 1)
    lock = threading.Lock()
    with tqdm(total=round(total, 1), unit="audio s", desc=spec.label, file=sys.stderr, leave=True) as bar:

        def one(rep: int, i: int) -> None:
            nonlocal spent, truncated
            with lock:
                if max_s is not None and spent >= max_s and records:
                    truncated = True
                    return
            t = time.perf_counter()
            text = runner.transcribe(np.ascontiguousarray(audio[i]))
            dt = time.perf_counter() - t
            with lock:
                spent += dt
                records.append(
                    {"item": i, "repeat": rep, "audio_s": items[i].duration_s, "latency_s": dt, "text": text}
                )
                done = sum(r["audio_s"] for r in records)
                bar.n = round(min(done, total), 1)
                bar.set_postfix(rtfx=f"{done / (time.perf_counter() - timed0):.2f}")  # refreshes the bar

        work = [(rep, i) for rep in range(int(job.get("repeats", 1))) for i in range(len(items))]
        if concurrency == 1:
            for rep, i in work:
                one(rep, i)
                if truncated:
                    break
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(concurrency) as pool:
                for fut in [pool.submit(one, rep, i) for rep, i in work]:
                    fut.result()
        records.sort(key=lambda r: (r["repeat"], r["item"]))
    elapsed = time.perf_counter() - timed0
    busy1, own1 = cpu_busy_s(cores), tree_cpu_s(os.getpid())
    out["timed_wall_s"] = elapsed
    out["concurrency"] = concurrency
    out["cpu_own_cores"] = (own1 - own0) / elapsed
    out["cpu_other_cores"] = max(0.0, (busy1 - busy0) - (own1 - own0)) / elapsed
    runner.close()
    out["records"] = records
    out["truncated"] = truncated
    out["peak_rss_mib"] = _peak_rss_mib()
    out["load_average_end"] = os.getloadavg()
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.worker JOB.json OUT.json``: run :func:`run_job`, write its result (or the error)."""
    job_path, out_path = (argv or sys.argv[1:])[:2]
    job = json.loads(Path(job_path).read_text())
    try:
        result = run_job(job)
        code = 0
    except Exception as exc:  # reported to the parent as this engine's error, not a crash of the bench
        traceback.print_exc()
        result = {"engine": job.get("engine"), "error": f"{type(exc).__name__}: {exc}"}
        code = 1
    Path(out_path).write_text(json.dumps(result))
    return code


def _tee(stream, sink, tail: list[bytes], limit: int = 8192) -> None:
    for chunk in iter(lambda: stream.read1(4096) if hasattr(stream, "read1") else stream.read(4096), b""):
        try:
            sink.write(chunk.decode(errors="replace"))
            sink.flush()
        except (ValueError, OSError):  # the sink closed (e.g. a test runner's capture)
            pass
        tail.append(chunk)
        while sum(len(c) for c in tail) > limit and len(tail) > 1:
            tail.pop(0)


def run_isolated(job: dict, *, timeout_s: float = 3600.0, env: dict | None = None) -> dict:
    """Parent side: run ``job`` (see :func:`run_job`) in a fresh Python process and return its result.

    Args:
        job: the job description (JSON-serialisable).
        timeout_s: kill the child after this many seconds.
        env: extra environment variables for the child.

    Returns:
        The child's result, plus ``wall_s`` (seconds the child process lived, start-up included);
        on failure ``error`` holds the reason and ``stderr_tail`` the last lines the child printed.
    """
    with tempfile.TemporaryDirectory(prefix="chorus-bench-") as tmp:
        job_path, out_path = Path(tmp) / "job.json", Path(tmp) / "out.json"
        job_path.write_text(json.dumps(job))
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.worker", str(job_path), str(out_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=str(Path(__file__).resolve().parents[1]),
            env={**os.environ, **(env or {})},
        )
        tail: list[bytes] = []
        reader = threading.Thread(target=_tee, args=(proc.stderr, sys.stderr, tail), daemon=True)
        reader.start()
        timed_out = False
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            proc.kill()
            proc.wait()
        reader.join(timeout=10)
        wall = time.perf_counter() - t0
        stderr_tail = b"".join(tail).decode(errors="replace")[-4000:]
        if out_path.is_file():
            result = json.loads(out_path.read_text())
        else:
            why = f"timed out ({timeout_s:g} s)" if timed_out else f"exited with code {proc.returncode}"
            result = {"engine": job.get("engine"), "error": f"worker {why} after {wall:.0f} s"}
        result["wall_s"] = wall
        if result.get("error"):
            result["stderr_tail"] = stderr_tail
        return result


if __name__ == "__main__":
    sys.exit(main())


def run_engines(
    specs: list[EngineSpec],
    items: list[AudioItem],
    *,
    language: str | None,
    repeats: int = 1,
    max_seconds: float | None = None,
    threads: int | None = None,
    concurrency: int = 1,
    timeout_s: float = 3600.0,
    wait_idle_cores: float | None = None,
    wait_idle_max_s: float = 600.0,
) -> list[dict]:
    """Run each engine in its own process, one after another, on the same items.

    Args:
        specs: the engines, in order.
        items: the audio set.
        language: forced language (``None``: each engine detects it).
        repeats: passes over the items per engine.
        max_seconds: per engine, stop starting new files after this much transcription time (s).
        threads: CPU threads for CTranslate2/PyTorch (default: all cores).
        concurrency: files transcribed at once (threads in the worker).
        timeout_s: per engine process (seconds).
        wait_idle_cores: before each engine, wait until fewer cores than this are busy (shared machines).
        wait_idle_max_s: the longest such wait (seconds) before going on regardless.

    Returns:
        One worker result per spec (see :func:`run_job`), each with ``started`` (Unix time, s) and,
        with ``wait_idle_cores``, ``idle_wait_s`` and ``idle_busy_cores`` (cores busy just before it).
    """
    from bench.machine import wait_for_idle

    results = []
    for n, spec in enumerate(specs, 1):
        waited = None
        if wait_idle_cores is not None:
            waited = wait_for_idle(
                wait_idle_cores, wait_idle_max_s, log=lambda m: print(m, file=sys.stderr, flush=True)
            )
        print(f"[{n}/{len(specs)}] {spec.label}: {spec.kind} on {spec.model}", file=sys.stderr, flush=True)
        job = {
            "engine": spec.to_json(),
            "items": [it.to_json() for it in items],
            "language": language,
            "repeats": repeats,
            "max_seconds": max_seconds,
            "threads": threads,
            "concurrency": concurrency,
        }
        started = time.time()
        result = run_isolated(job, timeout_s=timeout_s)
        result["started"] = started
        if waited is not None:
            result["idle_wait_s"], result["idle_busy_cores"] = waited
        if result.get("error"):
            print(f"[{n}/{len(specs)}] {spec.label} failed: {result['error']}", file=sys.stderr, flush=True)
        results.append(result)
    return results
