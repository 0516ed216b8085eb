"""Unit tests of the benchmark arithmetic and bookkeeping (no model, no server)."""

from __future__ import annotations

import json
import math
import random
import re
import time
from pathlib import Path

import numpy as np
import pytest

from bench.audio_sets import AudioItem, directory_items, espeak_item, resolve_audio
from bench.metrics import (
    RequestRecord,
    english_spelling_map,
    percentile,
    rtfx,
    summarize,
    text_normalizer,
    word_error_rate,
)
from bench.quant import QuantSetting
from bench.report import engine_summary, invocation, markdown_table, update_index
from bench.throughput import Target
from server.core.audio import SAMPLE_RATE, decode_audio, to_wav_bytes
from torch_models.synth import espeak_available


def test_rtfx_is_audio_over_wall():
    rng = random.Random(1)
    for _ in range(20):
        audio, wall = rng.uniform(1, 1000), rng.uniform(0.1, 100)
        assert rtfx(audio, wall) == pytest.approx(audio / wall)
        assert rtfx(audio, wall) * wall == pytest.approx(audio)
    assert math.isnan(rtfx(10.0, 0.0))


def test_percentile_interpolates_linearly_between_ranks():
    values = [40.0, 10.0, 50.0, 30.0, 20.0]  # sorted: rank r of q is 4 * q / 100
    assert percentile(values, 10) == pytest.approx(14.0)  # rank 0.4: 10 + 0.4 * (20 - 10)
    assert percentile(values, 95) == pytest.approx(48.0)  # rank 3.8
    assert percentile([7.5], 99) == 7.5


def test_percentile_edges():
    assert math.isnan(percentile([], 50))
    values = [3.0, 1.0, 2.0]
    assert percentile(values, 0) == min(values) and percentile(values, 100) == max(values)
    assert percentile(values, 50) == sorted(values)[1]
    with pytest.raises(ValueError):
        percentile(values, 101)


def test_summarize_counts_only_successes_in_throughput():
    rng = np.random.default_rng(7)
    records = [
        RequestRecord(float(a), float(lat), ok=bool(ok), error=None if ok else "APIError: boom")
        for a, lat, ok in zip(rng.uniform(1, 30, 50), rng.uniform(0.1, 5, 50), rng.random(50) > 0.2)
    ]
    wall = 40.0
    out = summarize(records, wall)
    ok = [r for r in records if r.ok]
    lat = [r.latency_s for r in ok]
    assert out["requests"] == len(records)
    assert out["errors"] == len(records) - len(ok)
    assert out["audio_s"] == pytest.approx(sum(r.audio_s for r in ok))
    assert out["rtfx"] == pytest.approx(sum(r.audio_s for r in ok) / wall)
    assert out["requests_per_s"] == pytest.approx(len(ok) / wall)
    for q in (50, 95, 99):
        assert out[f"latency_p{q}_s"] == pytest.approx(float(np.percentile(lat, q)))
    assert out["latency_max_s"] == max(lat)
    empty = summarize([RequestRecord(5.0, 1.0, ok=False)], 1.0)
    assert empty["rtfx"] == 0 and math.isnan(empty["latency_p50_s"])


def _edit(words: list[str], rng: random.Random, subs: int, dels: int, ins: int) -> list[str]:
    """Apply exactly ``subs`` substitutions, ``dels`` deletions and ``ins`` insertions of made-up words."""
    out = list(words)
    positions = rng.sample(range(len(out)), subs + dels)
    for i in positions[:subs]:
        out[i] = f"zzsub{i}"
    for i in sorted(positions[subs:], reverse=True):
        del out[i]
    for k in range(ins):
        out.insert(rng.randrange(len(out) + 1), f"zzins{k}")
    return out


def test_word_error_rate_counts_constructed_edits():
    rng = random.Random(3)
    vocab = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima".split()
    refs, hyps, expected_errors, n_words = [], [], 0, 0
    for _ in range(8):
        words = [rng.choice(vocab) for _ in range(rng.randint(8, 20))]
        s, d, i = rng.randint(0, 2), rng.randint(0, 2), rng.randint(0, 2)
        refs.append(" ".join(words))
        hyps.append(" ".join(_edit(words, rng, s, d, i)))
        expected_errors += s + d + i
        n_words += len(words)
    out = word_error_rate(refs, hyps, "none")
    assert out["reference_words"] == n_words
    assert out["substitutions"] + out["deletions"] + out["insertions"] == expected_errors
    assert out["wer"] == pytest.approx(expected_errors / n_words)
    import jiwer

    assert out["wer"] == pytest.approx(jiwer.wer(refs, hyps))  # corpus WER, as jiwer computes it


def test_word_error_rate_normalizes_and_skips_empty_references():
    norm = text_normalizer("english")
    refs = ["Hello, World! It's 5 o'clock.", "", "THE CHILD ALMOST HURT THE SMALL DOG"]
    hyps = ["hello world it is five o'clock", "anything", "The child almost hurt the small dog."]
    out = word_error_rate(refs, hyps, "english")
    assert out["skipped"] == 1 and out["pairs"] == 2
    assert norm(refs[0]) == norm(hyps[0])  # contraction, number and punctuation rules
    assert out["wer"] == 0.0
    missing = word_error_rate(["red green blue"], [""], "english")
    assert missing["deletions"] == 3 and missing["wer"] == 1.0
    assert math.isnan(word_error_rate([], [])["wer"])
    with pytest.raises(ValueError):
        word_error_rate(["a"], [])


def test_english_normalizer_uses_whisper_spelling_map():
    mapping, source = english_spelling_map()
    if not mapping:
        pytest.skip("no package with Whisper's english.json is installed")
    british, american = next(iter(mapping.items()))
    assert text_normalizer("english")(british) == american
    assert source.endswith("english.json")
    assert text_normalizer("basic")("Hello, World!").split() == ["hello", "world"]


def test_quant_setting_parse():
    assert QuantSetting.parse("fp32") == QuantSetting("fp32", "float32", "none")
    assert QuantSetting.parse("int8") == QuantSetting("int8", "float32", "int8")
    assert QuantSetting.parse("bf16-nf4") == QuantSetting("bf16-nf4", "bfloat16", "nf4")
    for bad in ("int9", "fp32-bf16", "int8-nf4", ""):
        with pytest.raises(ValueError):
            QuantSetting.parse(bad)


def test_target_parse_and_invocation():
    t = Target.parse("chorus=http://127.0.0.1:1/v1/", pid=42)
    assert (t.label, t.url, t.pid) == ("chorus", "http://127.0.0.1:1", 42)
    assert Target.parse("http://example.invalid:8001").label == "http://example.invalid:8001"
    argv = ["/x/bin/chorus", "bench", "peers", "--audio", "my dir/a.wav"]
    assert invocation(argv) == "chorus bench peers --audio 'my dir/a.wav'"


def test_markdown_table_shape():
    table = markdown_table(["a", "b", "c"], [["x", "1", "2"], ["y", "3", "4"]])
    lines = table.splitlines()
    assert len(lines) == 4 and all(line.count("|") == 4 for line in lines)
    assert lines[1] == "| --- | ---: | ---: |"


def test_engine_summary_recomputes_from_records():
    items = [AudioItem(Path("a.wav"), 10.0, "one two three four"), AudioItem(Path("b.wav"), 30.0, None)]
    records = [
        {"item": 0, "repeat": 0, "audio_s": 10.0, "latency_s": 2.0, "text": "one two three for"},
        {"item": 1, "repeat": 0, "audio_s": 30.0, "latency_s": 5.0, "text": "whatever"},
        {"item": 0, "repeat": 1, "audio_s": 10.0, "latency_s": 3.0, "text": "one two three four"},
    ]
    result = {
        "engine": {"label": "x"},
        "load_s": 1.0,
        "warmup_s": 2.0,
        "rss_after_load_mib": 100.0,
        "peak_rss_mib": 200.0,
        "records": records,
        "error": None,
    }
    base = {
        "records": [
            {"item": 0, "repeat": 0, "text": "one two three four"},
            {"item": 1, "repeat": 0, "text": "whatever"},
        ]
    }
    row = engine_summary(result, items, "none", baseline=base)
    assert row["rtfx"] == pytest.approx(sum(r["audio_s"] for r in records) / sum(r["latency_s"] for r in records))
    assert row["latency_p50_s"] == pytest.approx(float(np.percentile([2.0, 5.0, 3.0], 50)))
    assert row["wer"] == pytest.approx(1 / 4)  # item 0, first repeat, one substitution; item 1 has no ref
    assert row["disagreement"] == pytest.approx(1 / 5)  # 1 substitution over the baseline's 5 words
    failed = engine_summary({"engine": {"label": "y"}, "error": "boom"}, items, "none")
    assert failed["error"] == "boom" and math.isnan(failed["rtfx"])


def test_update_index_lists_latest_per_kind(tmp_path):
    for name, kind, created in [
        ("cpu-peers-a", "peers", "2025-01-01T00:00:00"),
        ("cpu-peers-b", "peers", "2025-02-01T00:00:00"),
        ("cpu-quant-a", "quant", "2025-01-15T00:00:00"),
    ]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "result.json").write_text(
            json.dumps(
                {
                    "kind": kind,
                    "created": created,
                    "command": f"chorus bench {kind} --name {name}",
                    "machine": {"cpu": "CPU", "cpu_logical_cores": 2, "memory_gib": 1},
                }
            )
        )
    text = update_index(tmp_path).read_text()
    latest = text.split("## All results")[0]
    assert "cpu-peers-b/table.md" in latest and "cpu-peers-a" not in latest and "cpu-quant-a" in latest
    for name in ("cpu-peers-a", "cpu-peers-b", "cpu-quant-a"):
        assert f"`chorus bench {name.split('-')[1]} --name {name}`" in text


def test_directory_items_reads_references(tmp_path):
    tone = (0.1 * np.sin(np.arange(SAMPLE_RATE) * 0.05)).astype(np.float32)
    (tmp_path / "a.wav").write_bytes(to_wav_bytes(tone))
    (tmp_path / "a.txt").write_text("  hello there \n")
    (tmp_path / "b.wav").write_bytes(to_wav_bytes(tone[: SAMPLE_RATE // 2]))
    (tmp_path / "notes.md").write_text("ignored")
    items = directory_items(tmp_path)
    assert [i.name for i in items] == ["a.wav", "b.wav"]
    assert items[0].reference == "hello there" and items[1].reference is None
    assert items[0].duration_s == pytest.approx(1.0) and items[1].duration_s == pytest.approx(0.5)
    assert resolve_audio([str(tmp_path / "a.wav"), str(tmp_path)], tmp_path) == items  # no duplicates
    with pytest.raises(FileNotFoundError):
        resolve_audio([str(tmp_path / "missing.wav")], tmp_path)
    with pytest.raises(ValueError):
        resolve_audio(["espeak:five"], tmp_path)


@pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed")
def test_espeak_item_has_exact_length_and_transcript(tmp_path):
    item = espeak_item(6, tmp_path)
    assert item.duration_s == pytest.approx(6.0, abs=1 / SAMPLE_RATE)
    assert item.reference and item.reference.endswith(".")
    assert item.path.with_suffix(".txt").read_text().strip() == item.reference
    mtime = item.path.stat().st_mtime_ns
    again = espeak_item(6, tmp_path)
    assert again == item and item.path.stat().st_mtime_ns == mtime  # cached, not regenerated


def test_machine_sampling_of_this_process():
    import os

    from bench.machine import MemorySampler, busy_cores, machine_info, tree_cpu_s, wait_for_idle
    from bench.report import machine_line

    with MemorySampler(os.getpid(), interval_s=0.01) as memory:
        block = np.ones(16 * 2**20 // 8)  # 16 MiB touched while sampling
        block.sum()
    assert memory.peak_rss_mib is not None and memory.peak_rss_mib > 16
    assert memory.samples == []  # peaks only
    with MemorySampler(os.getpid(), interval_s=0.01, gpu=False, trace=True) as traced:
        time.sleep(0.1)
    times = [s["t_s"] for s in traced.samples]
    assert len(times) >= 3 and times == sorted(times)
    assert all(s["rss_mib"] > 16 and s["threads"] >= 2 and s["fds"] > 0 for s in traced.samples)  # + the sampler
    with MemorySampler(None) as nothing:
        pass
    assert nothing.peak_rss_mib is None
    assert tree_cpu_s(os.getpid()) > 0 and tree_cpu_s(None) is None
    assert 0 <= busy_cores(0.05) <= (os.cpu_count() or 1) + 0.5
    waited, busy = wait_for_idle(max_cores=1e6, timeout_s=5, window_s=0.05)
    assert waited < 5 and busy >= 0
    info = machine_info()
    assert info["cpu_logical_cores"] == os.cpu_count() and info["versions"]["jiwer"]
    # the SIMD flags GEMM speed depends on, as /proc/cpuinfo lists them (CI's x86 CPUs have avx2 at least)
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    listed = set(next((ln.split(":", 1)[1].split() for ln in cpuinfo.splitlines() if ln.startswith("flags")), []))
    assert info["cpu_flags"] == sorted(info["cpu_flags"]) and set(info["cpu_flags"]) <= listed
    assert {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8"} & listed <= set(info["cpu_flags"])
    assert f"flags {' '.join(info['cpu_flags'])}" in machine_line(info) or not info["cpu_flags"]


def test_joined_real_clips_have_exact_length_and_joined_references(tmp_path, monkeypatch):
    """``real:`` joins the referenced clips (in turn, silence between) into files of the asked
    length with their transcripts joined; ``meeting:`` joins the ``.rttm`` clips without text."""
    data = tmp_path / "data"
    data.mkdir()
    tone = (0.1 * np.sin(np.arange(SAMPLE_RATE) * 0.05)).astype(np.float32)
    for stem, seconds, text in (("a", 1.0, "one two"), ("b", 2.0, "three"), ("m", 3.0, None)):
        (data / f"{stem}.wav").write_bytes(to_wav_bytes(np.resize(tone, int(seconds * SAMPLE_RATE))))
        if text:
            (data / f"{stem}.txt").write_text(text)
    (data / "m.rttm").write_text("SPEAKER m 1 0.0 3.0 <NA> <NA> A <NA> <NA>\n")
    monkeypatch.setenv("CHORUS_SHARED_DATA", str(data))
    real = resolve_audio(["real:7,4"], tmp_path)
    assert [round(i.duration_s, 3) for i in real] == [7.0, 4.0]
    # 7 s starts at clip 7 % 2 = 1 (b): b, a, b = 2 + .5 + 1 + .5 + 2 = 6 s, then a needs 1.5 s more: skipped
    assert real[0].reference == "three one two three"
    assert real[1].reference == "one two three"  # 4 s starts at a: a, b = 3.5 s
    samples = decode_audio(real[1].path.read_bytes())
    assert np.abs(samples[int(1.1 * SAMPLE_RATE) : int(1.4 * SAMPLE_RATE)]).max() == 0  # the gap
    assert np.abs(samples[int(3.6 * SAMPLE_RATE) :]).max() == 0  # padded to the length
    meeting = resolve_audio(["meeting:5"], tmp_path)
    assert meeting[0].reference is None and meeting[0].duration_s == pytest.approx(5.0)
    assert np.abs(decode_audio(meeting[0].path.read_bytes())[: 3 * SAMPLE_RATE]).max() > 0
    assert resolve_audio(["real:7"], tmp_path) == real[:1]  # cached
    with pytest.raises(ValueError):
        resolve_audio(["real:0.5"], tmp_path)  # no clip fits


@pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed")
def test_repeated_workload_says_one_paragraph_over_and_over(tmp_path):
    from bench.audio_sets import PARAGRAPH, WORKLOADS

    (item,) = resolve_audio(["espeak-repeat:40"], tmp_path)
    assert item.duration_s == pytest.approx(40.0, abs=1 / SAMPLE_RATE)
    said = [s.strip() for s in re.findall(r"[^.]+\.", item.reference)]
    assert set(said) == set(PARAGRAPH) and len(said) > len(PARAGRAPH)  # the whole paragraph, more than once
    assert all(name in WORKLOADS for name in ("varied", "repeated", "real", "meeting", "repeated-small"))


def test_read_reference_reads_every_uem_segment_and_der_scores_inside_them(tmp_path):
    from bench.eval_der import der, read_reference

    wav = tmp_path / "m.wav"
    with pytest.raises(FileNotFoundError):
        read_reference(wav)
    (tmp_path / "m.rttm").write_text(
        "SPEAKER m 1 5.000 2.000 <NA> <NA> B <NA> <NA>\nSPEAKER m 1 0.500 3.000 <NA> <NA> A <NA> <NA>\n"
    )
    (tmp_path / "m.uem").write_text("m 1 0.000 4.000\nm 1 6.000 10.000\n")
    turns, uem = read_reference(wav)
    assert [(t.start, t.end, t.speaker) for t in turns] == [(0.5, 3.5, "A"), (5.0, 7.0, "B")]
    assert [(s.start, s.end) for s in uem] == [(0.0, 4.0), (6.0, 10.0)]
    score = der(turns, turns[:1], uem=uem)  # B never found: only its second inside the UEM (6-7 s) counts
    assert score["total"] == pytest.approx(4.0) and score["missed"] == pytest.approx(0.25)


def test_xla_dot_times_three_dtypes(tmp_path, capsys):
    from bench import xla_dot

    xla_dot.main(["--repeats", "1", "--rounds", "1", "--out", str(tmp_path)])
    record = json.loads((tmp_path / "result.json").read_text())
    assert set(record["best"]) == {"float32", "bfloat16", "int8"} and record["best"]["float32"]["x_float32"] == 1.0
    assert all(len(v) == 1 and v[0] > 0 for v in record["seconds"].values())
    assert "GOP/s" in capsys.readouterr().out and record["machine"]["cpu_flags"] is not None
    table = (tmp_path / "table.md").read_text()
    assert record["kind"] == "xla-dot" and "python -m bench.xla_dot --repeats 1" in table
    assert "| int8 |" in table and "Audio:" not in table


def test_xla_dot_torch_rows_are_timed_beside_xla(tmp_path):
    """``--torch``: PyTorch's float32 and dynamic int8 rows in the same rounds; the int8 row is a real
    quantized product (its result within int8 error of the float32 one)."""
    import torch

    from bench import xla_dot

    xla_dot.main(["--repeats", "1", "--rounds", "1", "--torch", "--out", str(tmp_path)])
    record = json.loads((tmp_path / "result.json").read_text())
    engine = torch.backends.quantized.engine
    assert set(record["best"]) == {"float32", "bfloat16", "int8", "torch float32", f"torch int8 dynamic ({engine})"}
    assert "--torch" in record["command"] and all(v[0] > 0 for v in record["seconds"].values())
    a, b = xla_dot.operands()
    rows = xla_dot._torch_cases(a, b)
    exact = (torch.from_numpy(a) @ torch.from_numpy(b)).numpy()
    got = rows[f"torch int8 dynamic ({engine})"]().numpy()
    err = np.abs(got - exact).max() / np.abs(exact).max()
    assert 0 < err < 0.05  # quantized (not the float product), and close to it


@pytest.mark.parametrize("params", [{}, {"without_timestamps": True, "temperature_fallback": False}])
def test_chorus_runner_decodes_with_the_specs_options(params):
    """The Chorus runner hands the spec's ``without_timestamps`` and ``temperature_fallback``
    (``chorus-…-greedy`` rows) to the engine; both default to the engine's defaults."""
    from bench.engines import ChorusRunner, EngineSpec
    from jax_models.engine import TranscribeOptions

    seen = []

    class Engine:
        def transcribe(self, samples, options):
            seen.append(options)
            return type("T", (), {"text": "hello"})()

    runner = ChorusRunner(EngineSpec("chorus", "chorus", "model", params), "en", threads=1)
    runner.engine = Engine()
    assert runner.transcribe(np.zeros(16000, np.float32)) == "hello"
    expected = TranscribeOptions(
        language="en",
        without_timestamps=params.get("without_timestamps", False),
        temperature_fallback=params.get("temperature_fallback", True),
    )
    assert seen == [expected]
