"""Start-up: ready before the large batches compile, requests served meanwhile, and a compile
cache keyed by the CPU (issue 15). No timed assertions: the background compilation is held at a
gate while the checks run."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading

import httpx
import numpy as np
import pytest

from jax_models import compile_cache
from tests.conftest import TINY_MAX_NEW_TOKENS, make_client

CPUINFO = """processor\t: 0
vendor_id\t: {vendor}
model name\t: {model}
flags\t\t: {flags}

processor\t: 1
vendor_id\t: {vendor}
model name\t: {model}
flags\t\t: {flags}
"""
AVX2 = "fpu sse sse2 avx avx2 fma f16c"
AVX512 = AVX2 + " avx512f avx512bw avx512vl avx512_vnni"


def cpuinfo(flags: str, model: str = "Intel(R) Xeon(R) CPU @ 2.80GHz", vendor: str = "GenuineIntel") -> str:
    return CPUINFO.format(flags=flags, model=model, vendor=vendor)


def test_compile_cache_directory_is_keyed_by_cpu_features(tmp_path):
    avx2 = compile_cache.cache_dir_for(tmp_path, cpuinfo(AVX2), "x86_64")
    avx512 = compile_cache.cache_dir_for(tmp_path, cpuinfo(AVX512), "x86_64")
    assert avx2 != avx512
    assert avx2.parent == avx512.parent == tmp_path / "xla"
    # same CPU: same directory, whatever the order of its flags or the number of processors listed
    shuffled = cpuinfo(" ".join(reversed(AVX2.split()))).split("\n\n")[0]
    assert compile_cache.cache_dir_for(tmp_path, shuffled, "x86_64") == avx2
    assert compile_cache.cache_dir_for(tmp_path, cpuinfo(AVX2), "x86_64") == avx2
    # another model with the same flags, or another architecture, is another directory
    assert compile_cache.cache_dir_for(tmp_path, cpuinfo(AVX2, model="AMD EPYC"), "x86_64") != avx2
    assert compile_cache.cache_dir_for(tmp_path, cpuinfo(AVX2), "aarch64") != avx2


def test_enable_points_jax_at_this_cpus_directory(tmp_path):
    """In a child process: JAX keeps its cache directory for the life of a process."""
    script = f"""
import jax
from pathlib import Path
from jax_models import compile_cache
path = compile_cache.enable(Path({str(tmp_path)!r}))
assert path == compile_cache.cache_dir_for(Path({str(tmp_path)!r}))
assert jax.config.jax_compilation_cache_dir == str(path)
assert (path / "CPU.txt").read_text().strip() == compile_cache.cpu_description()
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.jit(lambda x: x * 3 + 1)(jax.numpy.ones(3)).block_until_ready()
print(path)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    path = compile_cache.cache_dir_for(tmp_path)
    assert out.stdout.strip().splitlines()[-1] == str(path)
    assert any(f.name.startswith("jit_") for f in path.iterdir())  # the executable landed in this CPU's directory
    assert not any(f.name.startswith("jit_") for f in (tmp_path / "xla").iterdir())


XLA_LINE = (
    "E1130 12:00:00.000000 1 cpu_aot_loader.cc:220] Loading XLA:CPU AOT result. Target machine feature "
    "{feature} is not  supported on the host machine. Machine type used for XLA:CPU compilation doesn't "
    "match the machine type for execution. Compile machine features: [+avx512f,{feature}] vs host machine "
    "features: [avx512f]. This could lead to execution errors such as SIGILL."
)


PJRT_LINE = (
    "W1201 09:07:46.254883   15376 pjrt_executable.cc:642] Assume version compatibility. "
    "PjRt-IFRT does not track XLA executable versions."
)


def test_spurious_aot_warning_is_filtered_from_stderr_and_nothing_else():
    """XLA writes to fd 2 from C++: a child process writes lines there the same way."""
    script = f"""
import os, sys
from jax_models.compile_cache import filter_spurious_xla_warnings
filter_spurious_xla_warnings()
line = {XLA_LINE!r}
os.write(2, (line.format(feature="+prefer-no-gather") + "\\n").encode())
os.write(2, b"kept before\\n" + (line.format(feature="+prefer-no-scatter") + "\\n").encode())
os.write(2, (line.format(feature="+avx512fp16") + "\\n").encode())
os.write(2, {PJRT_LINE!r}.encode() + b"\\nW1201 pjrt_executable.cc:99] another warning\\n")
print("python stderr", file=sys.stderr)
raise SystemExit("last words")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    lines = out.stderr.splitlines()
    assert "kept before" in lines and "python stderr" in lines and lines[-1] == "last words"
    assert not any("prefer-no-gather" in ln or "prefer-no-scatter" in ln for ln in lines)
    assert sum("+avx512fp16 is not" in ln for ln in lines) == 1  # a real mismatch still shows
    assert "Assume version compatibility" not in out.stderr and "another warning" in out.stderr
    assert out.returncode == 1


@pytest.fixture
def gated_engine(tiny_whisper_dir):
    """A tiny engine (buckets 1 and 2) whose compilation of batches above 1 waits at a gate.

    Two buckets are enough: the larger one is what the gate holds back (a third, 4, only added
    executables to compile, ~1/3 of this test's time)."""
    from jax_models.engine import WhisperEngine

    engine = WhisperEngine(str(tiny_whisper_dir), batch_size=2, max_new_tokens=32)
    gate, held = threading.Event(), threading.Event()
    compile_one = engine._compile

    def gated(shape):
        if shape.batch > 1:
            held.set()
            gate.wait(timeout=900)
        return compile_one(shape)

    engine._compile = gated
    engine.decode_batches = []

    def recording(fn, rows):
        def call(state, x, *args):
            engine.decode_batches.append(rows(x))
            return fn(state, x, *args)

        call.lower = fn.lower  # warm-up compiles through it
        return call

    engine._decode = recording(engine._decode, lambda enc: int(enc.shape[0]))
    # continuous batching: a block of the slots' rows
    engine._slot_run = recording(engine._slot_run, lambda slots: int(slots.step.shape[0]))
    yield engine, gate, held
    gate.set()
    engine.close()


def count_compiles():
    """A list that grows by one per XLA compilation in this process (jax.monitoring)."""
    import jax

    events: list[str] = []

    def listener(event: str, duration: float, **kwargs) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            events.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    return events, lambda: jax.monitoring.unregister_event_duration_listener(listener)


async def wait_ready(http: httpx.AsyncClient, limit_s: float = 900) -> None:
    """Poll /ready (a liveness bound, not a performance claim)."""
    for _ in range(int(limit_s / 0.2)):
        r = await http.get("/ready")
        if r.status_code == 200:
            return
        assert "failed" not in r.text, r.text
        await asyncio.sleep(0.2)
    pytest.fail("the whisper server never became ready")


async def test_ready_before_large_batches_compile_and_requests_are_served_meanwhile(
    gated_engine, tiny_engine, tiny_whisper_dir, cache_dir, speech_samples
):
    from jax_models.engine import CompiledShape, TranscribeOptions, compile_plan
    from jax_models.whisper_app import create_app
    from server.core.audio import decode_audio, to_wav_bytes
    from server.kit.settings import WhisperSettings

    engine, gate, held = gated_engine
    # warm-up on, in the background; the random model's windows all fail Whisper's thresholds, so no
    # temperature fallback (6 decodes a window): the batches run are what is checked
    settings = WhisperSettings(model=str(tiny_whisper_dir), cache_dir=cache_dir, temperature_fallback=False)
    assert settings.warmup and settings.background_compile
    app = create_app(settings, engine=engine)
    wav = to_wav_bytes(speech_samples)
    sent = decode_audio(wav)  # what the server will decode (16-bit)
    options = TranscribeOptions(language="en", without_timestamps=True, temperature_fallback=False)
    expected = tiny_engine.transcribe(sent, options).text
    async with app.router.lifespan_context(app):
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
        await wait_ready(http)
        assert held.is_set() and not engine.compiled_all.is_set()
        assert engine.batch_buckets == (1, 2)
        assert engine.continuous
        assert CompiledShape("slots", 2) not in engine._compiled
        assert CompiledShape("slots", 1) in engine._compiled

        long = np.concatenate([sent, np.zeros(16000 * 25, np.float32)] * 4)  # 5 windows, submitted at once
        compiles, stop_counting = count_compiles()
        try:
            client = make_client(app)
            results = await asyncio.gather(
                *[
                    client.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav), language="en")
                    for _ in range(3)
                ]
            )
            during = await asyncio.to_thread(engine.transcribe, long, options)
        finally:
            stop_counting()
        assert [r.text for r in results] == [expected] * 3
        assert during.text == tiny_engine.transcribe(long, options).text
        assert engine.decode_batches and set(engine.decode_batches) == {1}  # only compiled sizes ran
        assert compiles == []  # and nothing compiled inside a request

        gate.set()
        await asyncio.to_thread(engine.compiled_all.wait, 900)
        ready, later = compile_plan(engine.batch_buckets, continuous=True)
        assert [shape for shape, _ in engine.compile_log] == ready + later  # one line per executable
        assert all(seconds > 0 for _, seconds in engine.compile_log)

        # now the windows run in batches of the largest bucket
        engine.decode_batches.clear()
        after = await asyncio.to_thread(engine.transcribe, long, options)
        assert after.text == during.text and 2 in engine.decode_batches
        await http.aclose()


def test_whisper_server_loads_without_easydel_or_transformers(tiny_whisper_dir, tiny_xla_cache):
    """``chorus serve whisper``'s imports and ``load_engine`` with the default (unquantized)
    settings pick the functional backend and, in a fresh process, import neither EasyDeL nor
    transformers, whose imports were most of a warm start (bench/NOTES.md "Cold start"); a
    request with word timestamps imports neither either."""
    script = f"""
import sys
import numpy as np
import server.cli
from jax_models.engine import TranscribeOptions
from jax_models.whisper_app import create_app, load_engine
from server.kit.settings import WhisperSettings
engine = load_engine(WhisperSettings(model={str(tiny_whisper_dir)!r}, cache_dir={str(tiny_xla_cache)!r}, batch_size=1,
                                     max_new_tokens={TINY_MAX_NEW_TOKENS}))
engine.transcribe(np.full(16000, 0.01, np.float32), TranscribeOptions(language="en", word_timestamps=True))
engine.close()
print(engine.backend, *sorted(m for m in ("easydel", "transformers", "flax") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "functional", out.stdout
