"""Each ``chorus bench`` subcommand end to end for a few seconds on the tiny random Whisper.

The numbers are meaningless (random weights, capped tokens); what is checked is that every figure
in the record is computed from the raw measurements stored beside it, and that the files appear.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.procs import free_port, start_whisper_server, stop_process
from jax_models import compile_cache
from server.cli import main
from torch_models.synth import espeak_available

pytestmark = pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed (make sysdeps)")
REPO = Path(__file__).resolve().parents[1]


def invoke(args: list[str]) -> None:
    result = CliRunner().invoke(main, ["bench", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output


def load(results: Path, name: str) -> dict:
    out = results / name
    assert (out / "table.md").is_file() and (out / "plot.png").stat().st_size > 1000
    assert f"{name}/table.md" in (results / "README.md").read_text()
    return json.loads((out / "result.json").read_text())


def check_engine_rows(record: dict) -> None:
    """Every summary row is what its worker's raw records give."""
    for raw, row in zip(record["results"], record["summary"]):
        assert raw.get("error") is None, raw.get("stderr_tail")
        recs = raw["records"]
        assert recs and row["audio_s"] == pytest.approx(sum(r["audio_s"] for r in recs))
        concurrent = raw.get("concurrency", 1) > 1
        wall = raw["timed_wall_s"] if concurrent else sum(r["latency_s"] for r in recs)
        assert row["rtfx"] == pytest.approx(sum(r["audio_s"] for r in recs) / wall)
        assert row["load_s"] > 0 and row["warmup_s"] > 0
        assert row["peak_rss_mib"] >= row["rss_after_load_mib"] > 50
        assert 0 <= row["wer"] and row["cpu_own_cores"] > 0


@pytest.fixture(scope="module")
def tiny_ct2_dir(tiny_whisper_dir, tmp_path_factory) -> Path:
    """The tiny model converted to CTranslate2 (same weights) with its tokenizer, for faster-whisper."""
    from ctranslate2.converters import TransformersConverter

    out = tmp_path_factory.mktemp("tiny-ct2") / "model"
    TransformersConverter(str(tiny_whisper_dir)).convert(str(out), force=True)
    for name in ("tokenizer.json", "preprocessor_config.json"):
        shutil.copy(tiny_whisper_dir / name, out / name)
    return out


@pytest.fixture(scope="module")
def tiny_server(tiny_whisper_dir, tiny_xla_cache):
    """``chorus serve whisper`` on the tiny model, no warm-up, on a free local port (the settings
    of every tiny server in the suite, ``conftest.TINY_*``: one set of executables in the session's
    compile cache)."""
    port = free_port()
    proc = start_whisper_server(
        tiny_whisper_dir,
        port,
        cache_dir=tiny_xla_cache,
        batch_size=2,
        warmup=False,
        env={"CHORUS_WHISPER_MAX_NEW_TOKENS": "32"},
    )
    yield f"http://127.0.0.1:{port}", proc
    stop_process(proc, timeout_s=20)


def test_throughput_against_live_server(tiny_server, cache_dir, tmp_path):
    url, proc = tiny_server
    invoke(
        [
            "throughput",
            "--url",
            url,
            "--audio",
            "espeak:5",
            "--concurrency",
            "1,2",
            "--duration",
            "2",
            "--warmup-requests",
            "2",
            "--ready-timeout",
            "600",
            "--cache-dir",
            str(cache_dir),
            "--results-dir",
            str(tmp_path),
            "--name",
            "tp",
        ]
    )
    record = load(tmp_path, "tp")
    assert record["command"].split()[0] == "chorus" and record["machine"]["cpu_logical_cores"] >= 1
    assert [r["concurrency"] for r in record["summary"]] == [1, 2]
    for row in record["results"]:
        ok = [r for r in row["records"] if r["ok"]]
        assert row["errors"] == 0 and len(ok) == row["requests"] >= 1
        assert row["rtfx"] == pytest.approx(sum(r["audio_s"] for r in ok) / row["wall_s"])
        assert row["wall_s"] >= 2.0  # the load window runs its full duration
        assert row["pid"] == proc.pid  # found by its listening port
        assert row["peak_rss_mib"] > 100 and row["cpu_own_cores"] > 0
        assert row["server"]["data"][0]["chorus"]["batch_buckets"] == [1, 2]
        assert row["server_command"].startswith("chorus serve whisper --model ")
    table = (tmp_path / "tp" / "table.md").read_text()
    invoke(["render", str(tmp_path / "tp")])
    assert (tmp_path / "tp" / "table.md").read_text() == table


def test_quant_one_setting(tiny_whisper_dir, cache_dir, tmp_path):
    invoke(
        [
            "quant",
            "--model",
            str(tiny_whisper_dir),
            "--settings",
            "fp32",
            "--audio",
            "espeak:5",
            "--max-new-tokens",
            "8",
            "--batch-size",
            "1",
            "--max-seconds",
            "5",
            "--cache-dir",
            str(cache_dir),
            "--results-dir",
            str(tmp_path),
            "--name",
            "q",
        ]
    )
    record = load(tmp_path, "q")
    check_engine_rows(record)
    row = record["summary"][0]
    assert row["label"] == "fp32" and row["disagreement"] == 0.0  # fp32 against itself
    # a cold compile: EasyDeL's import would otherwise point JAX at ejkernel's shared persistent cache
    assert "chorus-bench-xla-" in record["results"][0]["jax_compilation_cache_dir"]
    assert "| fp32 |" in (tmp_path / "q" / "table.md").read_text()


def test_peers_every_kind_same_weights(tiny_whisper_dir, tiny_ct2_dir, cache_dir, tmp_path):
    """Every engine kind once, two files at once (transformers and EasyDeL in this process). Rows
    that differ from a run row only in a parameter (``chorus-text``: ``without_timestamps``;
    ``chorus-int8``: ``quantization``; ``…-fixed``: ``continuous``; ``faster-whisper-batched-int8``:
    one worker, as the ``-w2`` row with two; the fp32 twins of the int8 CTranslate2 rows:
    ``compute_type``) are checked as specs, not run, to keep the suite short. ``--compile-cache``
    points the Chorus row at Chorus's XLA cache (``test_quant_one_setting`` covers the cold-compile
    default)."""
    from bench.peers import PEERS, Weights, peer_specs

    every, _ = peer_specs(
        list(PEERS),
        Weights(str(tiny_whisper_dir), str(tiny_ct2_dir), "tiny"),
        batch_size=1,
        max_new_tokens=8,
        compile_cache_dir=None,
    )
    assert len(every) == len(PEERS)  # `--engines all` builds a spec for every peer name
    spec = dict(zip(PEERS, every))
    assert [spec[n].params["without_timestamps"] for n in ("chorus", "chorus-text")] == [False, True]
    assert spec["chorus-text"].params == {**spec["chorus"].params, "without_timestamps": True}
    assert spec["chorus-int8"].params == {**spec["chorus"].params, "quantization": "int8"}
    assert spec["chorus-int8-text"].params == {**spec["chorus-text"].params, "quantization": "int8"}
    assert spec["chorus"].params["continuous"] is True and spec["chorus"].params["temperature_fallback"] is True
    for name in ("chorus", "chorus-text"):
        assert spec[f"{name}-greedy"].params == {**spec[name].params, "temperature_fallback": False}
    assert spec["chorus-int8-fixed"].params == {**spec["chorus-int8"].params, "continuous": False}
    assert spec["chorus-int8-text-fixed"].params == {**spec["chorus-int8-text"].params, "continuous": False}
    w1, w2 = spec["faster-whisper-batched-int8"], spec["faster-whisper-batched-int8-w2"]
    assert "num_workers" not in w1.params and {**w1.params, "num_workers": 2} == w2.params  # 1: the default
    engines = "chorus,faster-whisper-int8,faster-whisper-batched-int8-w2"
    invoke(
        [
            "peers",
            "--model",
            str(tiny_whisper_dir),
            "--ct2-dir",
            str(tiny_ct2_dir),
            "--engines",
            engines,
            "--audio",
            "espeak:5,6",
            "--max-new-tokens",
            "8",
            "--batch-size",
            "1",
            "--concurrency",
            "2",
            "--compile-cache",
            "--cache-dir",
            str(cache_dir),
            "--results-dir",
            str(tmp_path),
            "--name",
            "p",
        ]
    )
    record = load(tmp_path, "p")
    check_engine_rows(record)
    kinds = [e["kind"] for e in record["engines"]]
    assert kinds == ["chorus", "faster-whisper", "faster-whisper-batched"]
    assert record["engines"][2]["params"]["num_workers"] == 2
    assert record["results"][0]["jax_compilation_cache_dir"] == str(compile_cache.cache_dir_for(cache_dir))
    for result, row in zip(record["results"], record["summary"]):
        # two files at once: aggregate RTFx over the timed wall time, not over the summed latencies
        assert result["concurrency"] == 2 and len(result["records"]) == 2
        assert row["wall_s"] == result["timed_wall_s"] < sum(r["latency_s"] for r in result["records"]) + 1e-9
    table = (tmp_path / "p" / "table.md").read_text()
    chorus = record["summary"][0]["rtfx"]
    for row in record["summary"]:
        assert f"{row['rtfx'] / chorus:.2f}×" in table  # the ratio column is computed from the run
    invoke(["render", str(tmp_path / "p")])  # redrawn from the raw results alone: the same table
    assert (tmp_path / "p" / "table.md").read_text() == table

    # transformers and EasyDeL through the worker's own loop (load, warm-up, 2 files at once, the
    # measurements), in this process: as isolated processes they cost 13-25 s each of imports and
    # start-up on 2 cores, and the run above covers the process plumbing
    from bench.audio_sets import resolve_audio
    from bench.worker import run_job

    items = [it.to_json() for it in resolve_audio(["espeak:5,6"], cache_dir)]
    for name, kind in (("transformers-fp32", "transformers"), ("easydel-vwhisper", "easydel")):
        job = {"engine": spec[name].to_json(), "items": items, "language": "en", "concurrency": 2}
        raw = run_job(job)
        assert raw["error"] is None and raw["engine"]["kind"] == kind
        assert sorted(r["item"] for r in raw["records"]) == [0, 1]
        assert all(isinstance(r["text"], str) and r["latency_s"] > 0 for r in raw["records"])
        assert raw["load_s"] > 0 and raw["warmup_s"] > 0 and raw["concurrency"] == 2


@pytest.mark.slow
def test_base_weights_in_both_formats(base_model_dir, cache_dir):
    from bench.peers import resolve_weights
    from jax_models.ct2_import import embedded_ct2_dirs, locate_ct2_files
    from tests.conftest import cache_lock

    with cache_lock(cache_dir):  # the run's one copy (``ct2_base_dir`` may have joined it already)
        weights = resolve_weights("base", cache_dir)
    assert weights.hf_dir == str(base_model_dir)
    parts = locate_ct2_files(embedded_ct2_dirs("base")).parts
    model_bin = Path(weights.ct2_dir) / "model.bin"
    assert model_bin.stat().st_size == sum(p.stat().st_size for p in parts)
    mtime = model_bin.stat().st_mtime_ns
    assert resolve_weights("base", cache_dir).ct2_dir == weights.ct2_dir
    assert model_bin.stat().st_mtime_ns == mtime  # assembled once
