"""JAX's persistent compile cache, one directory per CPU, and XLA's spurious AOT-loader warning.

XLA:CPU compiles for the host it runs on (its LLVM target features: AVX-512, VNNI, AMX …), but
JAX's cache key for a CPU backend holds ``platform_version == "cpu"`` and no CPU features
(jax 0.9.2 ``cache_key._hash_platform``). A cache directory shared between machines (a copied
``~/.cache``, a network home, a container image built elsewhere) therefore hands one CPU's
executables to another, and XLA only logs that this "could lead to execution errors such as
SIGILL" before running them (``xla/service/cpu/cpu_aot_loader.cc``). :func:`cache_dir_for` keys
the directory by a digest of the CPU model and feature flags, so a different CPU compiles afresh.

The same loader check also fires for executables this very machine compiled: on a host with
AVX-512, XLA adds the LLVM tuning pseudo-features ``+prefer-no-gather`` and ``+prefer-no-scatter``
to the compile-side target features (``xla/backends/cpu/codegen``), and compares them with
``llvm::sys::getHostCPUFeatures()``, which never reports tuning flags, so every cache load logs a
3 KB ``LOG(ERROR)`` (42 of them at start-up on an AVX-512 Xeon). :func:`filter_spurious_xla_warnings`
drops exactly those lines from the process's stderr; any other feature mismatch still shows.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import platform
import re
import threading
from pathlib import Path

SPURIOUS_FEATURES = (b"+prefer-no-gather", b"+prefer-no-scatter")
"""LLVM tuning flags XLA:CPU adds for AVX-512 hosts; the host feature list never holds them."""
_AOT_WARNING = b"Loading XLA:CPU AOT result. Target machine feature "
# jaxlib 0.9.2 logs this WARNING (pjrt_executable.cc:642) at every executable loaded from the cache
_VERSION_NOTICE = b"] Assume version compatibility. PjRt-IFRT does not track XLA executable versions."


def cpu_description(cpuinfo: str | None = None, machine: str | None = None) -> str:
    """``"<machine> | <model name> | <sorted feature flags>"`` of this host (or of ``cpuinfo``).

    Args:
        cpuinfo: the text of ``/proc/cpuinfo``; read from the host when None. On systems without
            it, ``platform.processor()`` stands in for the model and the flags are empty.
        machine: ``platform.machine()`` when None (``x86_64``, ``aarch64`` …).
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():  # the first processor's block is enough
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip().lower(), value.strip())
    model = fields.get("model name") or fields.get("cpu model") or fields.get("uarch") or platform.processor()
    flags = fields.get("flags") or fields.get("features") or fields.get("isa") or ""
    return f"{machine or platform.machine()} | {model} | {' '.join(sorted(set(flags.split())))}"


def cache_dir_for(cache_dir: Path, cpuinfo: str | None = None, machine: str | None = None) -> Path:
    """``cache_dir/xla/<machine>-<digest>``: the compile cache of this CPU (model and flags).

    Two hosts share a directory only when their CPU model and every feature flag agree, so an
    executable is never loaded on a CPU it was not compiled for. ``CPU.txt`` inside names the CPU.

    Args:
        cache_dir: Chorus's cache directory (``WhisperSettings.cache_dir``).
        cpuinfo, machine: see :func:`cpu_description` (tests pass fake ones).
    """
    description = cpu_description(cpuinfo, machine)
    digest = hashlib.sha256(description.encode()).hexdigest()[:16]
    arch = re.sub(r"[^A-Za-z0-9_]", "", description.split(" | ", 1)[0]) or "cpu"
    return Path(cache_dir) / "xla" / f"{arch}-{digest}"


def enable(cache_dir: Path, min_compile_time_s: float = 0.2, *, filter_warnings: bool = True) -> Path:
    """Point JAX's persistent compile cache (and ejkernel's) at this CPU's directory.

    Call before EasyDeL is imported: ejkernel 0.0.x (under easydel 0.3.0) points JAX's cache at
    its own ``COMPILE_FUNC_DIR`` (default ``~/.cache/ejkernel-cache``) at every ``ejit``, so the
    directory is handed to it through that variable as well. The spurious loader lines (AVX-512
    hosts: 3 KB per executable; every host: PjRt's version notice) are filtered
    (:func:`filter_spurious_xla_warnings`) unless ``filter_warnings``
    is false (pytest, whose own capture of fd 2 the filter's pipe would sit behind).

    Returns:
        The directory used.
    """
    import jax

    path = cache_dir_for(cache_dir)
    path.mkdir(parents=True, exist_ok=True)
    note = path / "CPU.txt"
    if not note.exists():
        note.write_text(cpu_description() + "\n")
    os.environ["COMPILE_FUNC_DIR"] = str(path)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_time_s)
    if filter_warnings:
        filter_spurious_xla_warnings()
    return path


def is_spurious(line: bytes) -> bool:
    """True for XLA's AOT-loader warning about a tuning pseudo-feature (:data:`SPURIOUS_FEATURES`),
    and for PjRt's one-line notice at every executable loaded from the persistent cache
    (:data:`_VERSION_NOTICE`; the cache's key already holds the jax/jaxlib version)."""
    if _VERSION_NOTICE in line:
        return True
    at = line.find(_AOT_WARNING)
    if at < 0:
        return False
    feature = line[at + len(_AOT_WARNING) :].split(b" ", 1)[0]
    return feature in SPURIOUS_FEATURES


_filter_lock = threading.Lock()
_filter_installed = False


def filter_spurious_xla_warnings() -> None:
    """Drop :func:`is_spurious` lines from this process's stderr (file descriptor 2), once.

    XLA logs from C++ straight to fd 2, so Python's ``logging`` cannot filter it: fd 2 becomes a
    pipe read by a daemon thread that copies every other line to the original stderr. At exit
    fd 2 is restored and the thread drained, so a last traceback is not lost.
    Workaround for jaxlib 0.9.2 (XLA's ``cpu_aot_loader.cc`` ``LOG(ERROR)``, b/477590953).
    """
    global _filter_installed
    with _filter_lock:
        if _filter_installed:
            return
        _filter_installed = True
    original = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        pending = b""
        while True:
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            out = b"".join(line + b"\n" for line in lines if not is_spurious(line))
            if out:
                os.write(original, out)
        if pending and not is_spurious(pending):
            os.write(original, pending)
        os.close(read_end)

    thread = threading.Thread(target=pump, name="chorus-stderr-filter", daemon=True)
    thread.start()

    def restore() -> None:
        import sys

        for stream in (sys.stderr, sys.__stderr__):
            try:
                stream.flush()
            except Exception:
                pass
        os.dup2(original, 2)  # closes the pipe's last write end: the pump sees EOF
        thread.join(timeout=5)

    atexit.register(restore)
