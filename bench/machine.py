"""What a result was measured on: machine, CPU/GPU, package versions, git commit; and memory sampling."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import threading
import time
from collections.abc import Collection
from importlib import metadata
from pathlib import Path
from urllib.parse import urlparse

PACKAGES = (
    "chorus",
    "jax",
    "jaxlib",
    "easydel",
    "flax",
    "transformers",
    "torch",
    "ctranslate2",
    "faster-whisper",
    "openai",
    "numpy",
    "jiwer",
)
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "0.0.0.0", "::1", "::"})


def cpu_model() -> str:
    """The CPU's marketing name from ``/proc/cpuinfo`` (Linux), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


SIMD_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni", "amx_bf16", "amx_int8", "amx_tile")
"""The CPU feature flags that decide GEMM speed (besides every ``avx512*`` flag), as /proc/cpuinfo spells them."""


def cpu_flags() -> list[str]:
    """This CPU's SIMD feature flags that matter for matrix products (``SIMD_FLAGS`` and every
    ``avx512*``), sorted; ``[]`` where /proc/cpuinfo has no flags (not Linux x86)."""
    from jax_models.compile_cache import cpu_description

    flags = cpu_description().rsplit(" | ", 1)[-1].split()
    return sorted(f for f in flags if f in SIMD_FLAGS or f.startswith("avx512"))


def gpus() -> list[dict]:
    """``[{name, memory_total_mib}]`` from ``nvidia-smi``; ``[]`` without an NVIDIA GPU."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    rows = [line.rsplit(",", 1) for line in out.strip().splitlines() if "," in line]
    return [{"name": name.strip(), "memory_total_mib": float(mem)} for name, mem in rows]


def gpu_memory_used_mib() -> float | None:
    """Memory in use summed over NVIDIA GPUs (MiB), or ``None`` without ``nvidia-smi``."""
    if not shutil.which("nvidia-smi"):
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
        return sum(float(x) for x in out.split())
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def versions() -> dict[str, str | None]:
    """Installed versions of the packages a benchmark depends on, and of espeak-ng (``None`` when absent)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["espeak-ng"] = espeak_version()
    return out


def espeak_version() -> str | None:
    """``espeak-ng --version``'s version number (it generates the synthetic audio sets), or ``None``."""
    if not shutil.which("espeak-ng"):
        return None
    try:
        text = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    parts = text.split()
    return parts[3] if len(parts) > 3 and parts[:3] == ["eSpeak", "NG", "text-to-speech:"] else text.strip() or None


def git_commit() -> str | None:
    """``<sha>`` of the checkout this package runs from, ``<sha>-dirty`` with local changes."""
    repo = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}-dirty" if dirty else sha


def machine_info() -> dict:
    """The machine a result comes from: OS, CPU model and cores, memory (GiB), GPUs, versions, commit."""
    import psutil

    return {
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cpu_logical_cores": os.cpu_count(),
        "cpu_physical_cores": psutil.cpu_count(logical=False),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "gpus": gpus(),
        "versions": versions(),
        "git_commit": git_commit(),
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def device_label() -> str:
    """``gpu`` when an NVIDIA GPU is present, else ``cpu`` (used in default result names)."""
    return "gpu" if gpus() else "cpu"


def pid_listening_on(url: str) -> int | None:
    """The id of the local process listening on ``url``'s port, or ``None`` (remote host, or not found).

    Uses ``psutil.net_connections``, which sees other users' processes only with privileges.
    """
    import psutil

    parsed = urlparse(url)
    if parsed.hostname not in LOCAL_HOSTS and parsed.hostname != platform.node():
        return None
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        conns = psutil.net_connections(kind="inet")
    except (psutil.AccessDenied, OSError):
        return None
    for conn in conns:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            return conn.pid
    return None


def rss_bytes(pid: int, *, children: bool = True) -> int:
    """Resident memory of process ``pid`` and (with ``children``) all its descendants (bytes); 0 once it
    is gone."""
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)] if children else [proc]
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def usable_cores() -> list[int]:
    """The CPU ids this process may run on (``taskset``/cgroup pinning), ascending."""
    return sorted(os.sched_getaffinity(0))


def cpu_busy_s(cores: Collection[int] | None = None) -> float:
    """CPU seconds all processes have spent busy (user, nice, system, irq) since boot, summed over
    ``cores`` (CPU ids; every core when ``None``).

    With the cores a pinned run may use (``usable_cores``), a run pinned to core 1 (``taskset -c 1``)
    counts as "other" work only what competed with it on core 1, not a job pinned to core 0.
    """
    import psutil

    def busy(t) -> float:
        return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)

    if cores is None:
        return busy(psutil.cpu_times())
    wanted = set(cores)
    return sum(busy(t) for c, t in enumerate(psutil.cpu_times(percpu=True)) if c in wanted)


def tree_cpu_s(pid: int | None) -> float | None:
    """CPU seconds (user + system) used so far by process ``pid`` and its live descendants and their
    reaped children; ``None`` without a pid or once the process is gone."""
    import psutil

    if pid is None:
        return None
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return None
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            pass
    return total


class MemorySampler:
    """Samples a process tree in a thread: its RSS and NVIDIA GPU memory, keeping the peaks, and
    with ``trace=True`` every sample with the process's threads and open files.

    ``with MemorySampler(pid) as m: ...`` (or ``m.start()`` … ``m.stop()``) then ``m.peak_rss_mib``,
    ``m.peak_gpu_mib`` and ``m.samples``: ``{"t_s", "rss_mib", "threads", "fds"}`` with ``t_s`` seconds
    since ``start``. With ``pid=None`` nothing is sampled and the peaks stay ``None``; a sample taken
    once the process is gone is left out.

    Args:
        pid: the process to watch (its children are included in the RSS).
        interval_s: seconds between samples.
        gpu: also sample GPU memory (``nvidia-smi``, at most once a second); ``None``: when it is installed.
        trace: keep every sample in ``samples`` (the soak's memory series), not only the peaks.
    """

    def __init__(
        self, pid: int | None, interval_s: float = 0.2, *, gpu: bool | None = None, trace: bool = False
    ) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.trace = trace
        self.samples: list[dict] = []
        self.peak_rss_bytes: int | None = None
        self.peak_gpu_mib: float | None = None
        self._gpu = shutil.which("nvidia-smi") is not None if gpu is None else gpu
        self._t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-memory", daemon=True)

    @property
    def peak_rss_mib(self) -> float | None:
        """Largest RSS seen (MiB), ``None`` when nothing was sampled."""
        return None if self.peak_rss_bytes is None else self.peak_rss_bytes / 2**20

    def sample(self) -> None:
        """Take one sample now."""
        import psutil

        if self.pid is None:
            return
        rss = rss_bytes(self.pid)
        if rss:
            self.peak_rss_bytes = max(self.peak_rss_bytes or 0, rss)
            if self.trace:
                try:
                    proc = psutil.Process(self.pid)
                    threads, fds = proc.num_threads(), proc.num_fds()
                except psutil.Error:
                    threads = fds = None
                self.samples.append(
                    {
                        "t_s": round(time.monotonic() - self._t0, 3),
                        "rss_mib": round(rss / 2**20, 2),
                        "threads": threads,
                        "fds": fds,
                    }
                )
        if self._gpu:
            used = gpu_memory_used_mib()
            if used is not None:
                self.peak_gpu_mib = max(self.peak_gpu_mib or 0.0, used)

    def _loop(self) -> None:
        next_gpu = 0.0
        while not self._stop.wait(self.interval_s):
            gpu, self._gpu = self._gpu, self._gpu and time.monotonic() >= next_gpu
            self.sample()
            if self._gpu:
                next_gpu = time.monotonic() + 1.0  # nvidia-smi is slow: at most once a second
            self._gpu = gpu

    def start(self) -> MemorySampler:
        """Take the first sample and start the thread (the clock of ``t_s`` starts here)."""
        self._t0 = time.monotonic()
        self.sample()
        if self.pid is not None:
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread and take the last sample."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        self.sample()

    def __enter__(self) -> MemorySampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def busy_cores(window_s: float = 3.0) -> float:
    """Cores busy on average over the next ``window_s`` seconds, all processes together."""
    before = cpu_busy_s()
    time.sleep(window_s)
    return (cpu_busy_s() - before) / window_s


def wait_for_idle(max_cores: float, timeout_s: float = 600.0, window_s: float = 3.0, log=None) -> tuple[float, float]:
    """Wait until the machine's other work stays under ``max_cores`` busy cores (measured over ``window_s``).

    For shared machines: starting an engine while someone else's job holds the cores measures
    the contention, not the engine.

    Args:
        max_cores: busy cores (summed over processes) considered quiet.
        timeout_s: give up waiting after this many seconds and go on.
        window_s: measurement window (seconds).
        log: called with a message while waiting (e.g. ``print``).

    Returns:
        ``(seconds waited, busy cores in the last window)``.
    """
    t0 = time.monotonic()
    busy = busy_cores(window_s)
    while busy > max_cores and time.monotonic() - t0 < timeout_s:
        if log:
            log(
                f"waiting for a quiet machine: {busy:.2f} cores busy > {max_cores:g} "
                f"({time.monotonic() - t0:.0f}/{timeout_s:.0f} s)"
            )
        time.sleep(max(0.0, 10.0 - window_s))
        busy = busy_cores(window_s)
    return time.monotonic() - t0, busy
