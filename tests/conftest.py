"""Shared fixtures: tiny and real Whisper models, apps, and OpenAI clients over ASGI."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.speech import espeak
from torch_models.synth import espeak_available

SENTENCE = "The quick brown fox jumps over the lazy dog. I would like a cup of hot coffee, please."


TINY_BATCH_SIZE, TINY_MAX_NEW_TOKENS = 2, 32
"""The engine settings of ``tiny_engine`` and of every tiny-model whisper server a test starts as a
process (``CHORUS_CACHE_DIR=cache_dir``): with one model and one set of settings, an executable one
server process (or ``tiny_engine`` in this process, see ``xla_cache``) compiled is loaded from
``cache_dir``'s XLA cache by the next, instead of each test compiling its own max_new_tokens/batch
variant."""


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One Chorus cache for the test run (imported models, XLA cache, bench's files), shared by the
    pytest-xdist workers (a worker's base temp dir is ``<run>/popen-gwN``): an executable one worker
    compiled is loaded by the other, and the large weights exist once. Each worker importing its own
    Whisper base (~290 MB of float32 safetensors) and joining its own CTranslate2 ``model.bin``
    (~145 MB) took a run to 1.4 GB of temporary files, and a CI machine ran out of disk. Imports into
    it hold :func:`cache_lock`."""
    base = tmp_path_factory.getbasetemp()
    path = (base.parent if "PYTEST_XDIST_WORKER" in os.environ else base) / "chorus-cache"
    path.mkdir(exist_ok=True)
    return path


@contextmanager
def cache_lock(cache_dir: Path) -> Iterator[None]:
    """Hold ``cache_dir``'s file lock (across the pytest-xdist workers) while importing into it."""
    from filelock import FileLock

    with FileLock(str(cache_dir / ".lock")):
        yield


@pytest.fixture(scope="session", autouse=True)
def xla_cache(cache_dir) -> Path:
    """JAX's persistent compile cache for this pytest process: ``cache_dir``'s, every executable kept.

    The in-process engines (``tiny_engine``) compile the same executables, with the same cache keys,
    as every tiny-model server process the suite starts with ``CHORUS_CACHE_DIR=cache_dir`` and the
    ``TINY_*`` settings: those servers load them instead of compiling (a warm start in 19 s instead
    of 106 s, 18 of 18 cache hits, on one loaded core). ``min_compile_time_s=0``: a tiny model's
    executables compile in under the 1 s a server keeps. It also sets ``COMPILE_FUNC_DIR``, so an
    EasyDeL import in this process (ejkernel re-points JAX's cache there) stays in ``cache_dir``
    instead of ``~/.cache/ejkernel-cache``.
    """
    from jax_models import compile_cache

    # no stderr filter: on an AVX-512 host it would put fd 2 of this process, under pytest's own
    # capture, behind a pipe for the rest of the session
    return compile_cache.enable(cache_dir, min_compile_time_s=0, filter_warnings=False)


@pytest.fixture(scope="session")
def base_model_dir(cache_dir) -> Path:
    """The embedded Whisper base, imported from its CTranslate2 files into HF format once per run."""
    from jax_models.ct2_import import resolve_model

    with cache_lock(cache_dir):
        return Path(resolve_model("base", cache_dir, progress=False))


@pytest.fixture(scope="session")
def ct2_base_dir(cache_dir) -> Path:
    """The embedded base as one CTranslate2 directory (``model.bin`` + assets), as faster-whisper
    loads it: ``bench.peers.resolve_weights``'s, joined once per run in ``cache_dir``."""
    from bench.peers import resolve_weights

    with cache_lock(cache_dir):
        return Path(resolve_weights("base", cache_dir).ct2_dir)


@pytest.fixture(scope="session")
def tiny_whisper_dir(tmp_path_factory) -> Path:
    """A randomly initialised 1-layer Whisper (d_model 64) with base's tokenizer and configs.

    Only the embedded base's vocabulary and configs are read (``write_configs``), not its weights:
    the tiny-model tests do not pay for importing the real model.
    """
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from jax_models.ct2_import import WhisperDims, embedded_ct2_dirs, write_configs

    out = tmp_path_factory.mktemp("tiny-whisper")
    dims = WhisperDims(
        n_mels=80,
        d_model=64,
        encoder_layers=1,
        decoder_layers=1,
        encoder_heads=2,
        decoder_heads=2,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        vocab_size=51865,
        max_source_positions=1500,
        max_target_positions=448,
    )
    write_configs(embedded_ct2_dirs("base"), out, dims)
    torch.manual_seed(0)
    WhisperForConditionalGeneration(WhisperConfig.from_pretrained(out)).save_pretrained(out)
    write_configs(embedded_ct2_dirs("base"), out, dims)  # save_pretrained wrote a bare generation config
    return out


@pytest.fixture(scope="session")
def tiny_v3_dir(tmp_path_factory) -> Path:
    """A random Whisper shaped like large-v3 / large-v3-turbo, tiny: 128 mel bins, vocabulary 51866
    with large-v3's special tokens (``<|yue|>`` at 50358 after ``<|su|>``, so ``<|translate|>`` …
    the timestamps sit one id higher than in base), a 4-layer decoder (turbo's), 1 encoder layer,
    d_model 64.

    The vocabulary and tokenizer are base's (the embedded CTranslate2 asset files, not its
    weights) with ``<|yue|>`` inserted, as openai/whisper's ``tokenizer.py`` and the Hugging Face
    large-v3 ``tokenizer.json`` number them; a stand-in CTranslate2 directory (an empty
    ``model.bin``, never read) goes through ``write_configs`` as an imported model would.
    """
    import json

    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from jax_models.ct2_import import WhisperDims, embedded_ct2_dirs, locate_ct2_files, write_configs

    assets = locate_ct2_files(embedded_ct2_dirs("base")).assets
    src = tmp_path_factory.mktemp("v3-ct2")
    vocab = json.loads(assets["vocabulary.json"].read_text(encoding="utf-8"))
    yue = vocab.index("<|su|>") + 1  # 50358
    shift = lambda i: i + 1 if i >= yue else i  # noqa: E731
    (src / "vocabulary.json").write_text(json.dumps(vocab[:yue] + ["<|yue|>"] + vocab[yue:]), encoding="utf-8")
    tok = json.loads(assets["tokenizer.json"].read_text(encoding="utf-8"))
    added = [{**a, "id": shift(a["id"])} for a in tok["added_tokens"]]
    su = next(a for a in added if a["content"] == "<|su|>")
    tok["added_tokens"] = sorted(added + [{**su, "id": yue, "content": "<|yue|>"}], key=lambda a: a["id"])
    for special in tok["post_processor"]["special_tokens"].values():
        special["ids"] = [shift(i) for i in special["ids"]]
    (src / "tokenizer.json").write_text(json.dumps(tok), encoding="utf-8")
    config = json.loads(assets["config.json"].read_text(encoding="utf-8"))
    config["lang_ids"] = [int(i) for i in config["lang_ids"]] + [yue]
    config["suppress_ids"] = [shift(int(i)) for i in config["suppress_ids"]]
    config["alignment_heads"] = [[2, 0], [3, 1]]
    (src / "config.json").write_text(json.dumps(config), encoding="utf-8")
    (src / "model.bin").write_bytes(b"")

    out = tmp_path_factory.mktemp("tiny-v3")
    dims = WhisperDims(
        n_mels=128,
        d_model=64,
        encoder_layers=1,
        decoder_layers=4,
        encoder_heads=2,
        decoder_heads=2,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        vocab_size=51866,
        max_source_positions=1500,
        max_target_positions=448,
    )
    write_configs(src, out, dims)
    torch.manual_seed(0)
    WhisperForConditionalGeneration(WhisperConfig.from_pretrained(out)).save_pretrained(out)
    write_configs(src, out, dims)  # save_pretrained wrote a bare generation config
    return out


@pytest.fixture(scope="session")
def tiny_v3_engine(tiny_v3_dir):
    """An engine on ``tiny_v3_dir`` (batch buckets 1 and 2, not warmed up: shapes compile on use)."""
    from jax_models.engine import WhisperEngine

    engine = WhisperEngine(str(tiny_v3_dir), batch_size=2, max_new_tokens=16)
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def tiny_engine(tiny_whisper_dir):
    """A warmed-up engine on the tiny model, batch buckets 1 and 2."""
    from jax_models.engine import WhisperEngine

    engine = WhisperEngine(str(tiny_whisper_dir), batch_size=TINY_BATCH_SIZE, max_new_tokens=TINY_MAX_NEW_TOKENS)
    engine.warmup()
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def tiny_xla_cache(tiny_engine, cache_dir) -> Path:
    """``cache_dir`` once its XLA cache holds every executable of the ``TINY_*`` settings.

    For tests that start tiny-model whisper servers (processes, Ray replicas) with
    ``CHORUS_CACHE_DIR``: the servers load what ``tiny_engine`` compiled in this process (see
    ``xla_cache``) instead of each compiling its own, also when the test file runs alone.
    """
    return cache_dir


@pytest.fixture(scope="session")
def base_engine(base_model_dir):
    """The real embedded base model (fp32, batch 1), warmed up."""
    from jax_models.engine import WhisperEngine

    engine = WhisperEngine(str(base_model_dir), batch_size=1)
    engine.warmup()
    yield engine
    engine.close()


def make_client(app):
    """An unmodified ``openai.AsyncOpenAI`` talking to ``app`` in-process over ASGI."""
    from openai import AsyncOpenAI

    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://chorus.test")
    return AsyncOpenAI(base_url="http://chorus.test/v1", api_key="sk-test", http_client=http, max_retries=0)


@pytest.fixture(scope="session")
def speech_wav(tmp_path_factory) -> Path:
    """``SENTENCE`` spoken by espeak-ng (22050 Hz WAV)."""
    if not espeak_available():
        pytest.skip("espeak-ng is not installed (make test installs it)")
    return espeak(SENTENCE, tmp_path_factory.mktemp("speech") / "sentence.wav")


@pytest.fixture(scope="session")
def speech_samples(speech_wav) -> np.ndarray:
    from server.core.audio import decode_audio

    return decode_audio(speech_wav.read_bytes())


@pytest.fixture(scope="session")
def imported_base(base_model_dir) -> Path:
    """The embedded Whisper base as a Hugging Face checkpoint dir (same import as ``base_model_dir``).

    Float32 safetensors, configs, tokenizer and feature extractor; ``path.parent.parent`` is the
    run's cache dir. Costs ~5 s the first time the run uses it.
    """
    return base_model_dir


FILE_ORDER = (
    # worker 1 starts here: compiles the tiny, large-v3-shaped and base engines (~240 s)
    "test_engine.py",
    # worker 2 meanwhile: no Whisper engine in these (~100 s), so the tiny and base executables are in
    # the shared XLA cache (``xla_cache``) when it needs them, loaded instead of compiled a second time
    "test_diarization_models.py",
    "test_sidecar_app.py",
    "test_ct2_import.py",
    "test_router.py",
    "test_phi4.py",
    "test_diarization_pipeline.py",
    "test_diarization.py",
    "test_diarization_nemo.py",
    "test_bench.py",
    "test_launcher.py",
    "test_sidecar_cli.py",
    "test_diarization_loss.py",
    "test_diarization_der_bench.py",
    # then the rest, longest first (wall seconds on a 2-core AMD EPYC, two workers, 2026-12-02)
    "test_ray_serve.py",  # 152
    "test_router_e2e.py",  # 106
    "test_bench_smoke.py",  # 97
    "test_reliability.py",  # 62
    "test_router_longform.py",  # 55
    "test_whisper_server.py",  # 54
    # the soak before two longer files: xdist hands a worker its next file when two tests of the
    # current one are left, and start-up's last test is its longest, so the soak queued behind it
    # ended the run 46 s after the other worker (2026-12-02)
    "test_soak.py",  # 35
    "test_router_contract.py",  # 46
    "test_startup.py",  # 37
    "test_bad_input.py",  # 38
    "test_openapi.py",  # 17
    "test_gpu_bench.py",  # 1
    "test_suite_order.py",
)
"""The order in which the test files run (``pytest_collection_modifyitems``; a file's own tests keep
their order). ``make test`` runs two pytest-xdist workers with ``--dist loadfile
--no-loadscope-reorder``: each worker takes the next file in this order when it has two tests or
fewer left. Both workers compiling the same tiny engine at the start (xdist's own order, most tests
first) cost ~20 s of CPU each run, a second cold base engine ~30 s; files not listed run last."""


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(FILE_ORDER)}
    items.sort(key=lambda item: rank.get(item.path.name, len(FILE_ORDER)))  # stable: in-file order kept


_CPU_LOG = os.environ.get("CHORUS_TEST_CPU_LOG")


if _CPU_LOG:

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(item, nextitem):
        """With ``CHORUS_TEST_CPU_LOG=FILE``: append each test's CPU seconds (set-up, call and
        teardown; this process and the processes it started) and wall seconds to FILE, one tab-separated
        line per test, to see where a CPU-bound run's time goes (issue 12)."""
        import time

        from bench.machine import tree_cpu_s  # this process, its reaped children and live descendants

        cpu0, wall0 = tree_cpu_s(os.getpid()) or 0.0, time.perf_counter()
        yield
        cpu, wall = (tree_cpu_s(os.getpid()) or 0.0) - cpu0, time.perf_counter() - wall0
        with open(_CPU_LOG, "a", encoding="utf-8") as f:
            f.write(f"{cpu:.1f}\t{wall:.1f}\t{os.environ.get('PYTEST_XDIST_WORKER', '-')}\t{item.nodeid}\n")
