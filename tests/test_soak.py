"""``chorus bench soak``: its arithmetic on made-up records, then a 12-second run on the tiny model."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from bench.soak import memory_growth, score, summarize_soak
from server.cli import main
from torch_models.synth import espeak_available


def samples(values, step=1.0):
    return [{"t_s": i * step, "rss_mib": v, "threads": 10, "fds": 5} for i, v in enumerate(values)]


def test_memory_growth_ignores_warm_up_and_compares_the_window_ends():
    flat = samples([100] * 5 + [500] * 100)  # the jump happens during warm-up
    m = memory_growth(flat, warmup_s=5)
    assert m["start_mib"] == m["end_mib"] == 500 and m["growth"] == 0 and m["samples"] == 100
    rising = samples([1000 + i for i in range(101)])  # +10 % over the window, steadily
    m = memory_growth(rising, warmup_s=0)
    assert m["growth"] == pytest.approx(1095.5 / 1004.5 - 1, rel=1e-9)  # medians of the first and last tenth
    assert m["slope_mib_per_h"] == pytest.approx(3600.0) and m["max_mib"] == 1100
    assert math.isnan(memory_growth(samples([1.0]), 0)["growth"])


def record(kind, name, status, expected=200, text="", **kw):
    return {
        "kind": kind,
        "name": name,
        "status": status,
        "expected": expected,
        "text": text,
        "t_s": 0.0,
        "latency_s": 1.0,
        "attempts": 1,
        "audio_s": 5.0,
        **kw,
    }


def test_score_and_summary_count_5xx_lost_and_unexpected():
    refs = {"a.wav": "the birch canoe slid on the smooth planks"}
    records = [
        record("good", "a.wav", 200, text="The birch canoe slid on the smooth planks."),
        record("good", "a.wav", 200, text="the birch canoe slid on smooth planks", attempts=3),  # 1 deletion: 12.5 %
        record("good", "a.wav", 200, text="something else entirely"),  # lost: far from the reference
        record("good", "a.wav", 503, error="busy"),  # lost: never answered 200
        record("good", "a.wav", None, error="ReadTimeout"),  # lost: transport error
        record("bad", "empty-file", 400, expected=400),
        record("bad", "huge-prompt", 500, expected=400),  # unexpected 5xx
        record("bad", "json-body", 400, expected=415),  # unexpected, not 5xx
    ]
    score(records, refs, max_wer=0.3, normalizer="english")
    assert [r.get("lost") for r in records[:5]] == [False, False, True, True, True]
    assert records[1]["wer"] == pytest.approx(0.125)
    s = summarize_soak(records, samples([100] * 20), wall_s=10.0, warmup_s=0)
    assert (s["requests"], s["good"], s["bad"]) == (8, 5, 3)
    assert s["server_errors"] == 2 and s["unexpected_5xx"] == 2  # the good 503 and the bad 500
    assert s["lost"] == 3 and s["transport_errors"] == 1 and s["retries_429"] == 2
    assert s["unexpected"] == 4 and s["unexpected_by_name"] == {"a.wav": 2, "huge-prompt": 1, "json-body": 1}
    assert s["good_per_s"] == pytest.approx(0.3) and s["audio_per_s"] == pytest.approx(1.5)
    assert s["status_counts"] == {"200": 3, "400": 2, "500": 1, "503": 1, "None": 1}
    assert s["memory"]["growth"] == 0 and s["passed"] is False
    clean = [r for r in records if not r.get("lost") and not r["unexpected"]]
    assert summarize_soak(clean, samples([100] * 20), wall_s=10.0, warmup_s=0)["passed"] is True
    assert summarize_soak(clean, samples([100] * 10 + [120] * 10), wall_s=10.0, warmup_s=0)["passed"] is False


@pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed")
def test_soak_smoke_on_the_tiny_model(tiny_whisper_dir, tiny_xla_cache, tmp_path):
    """The real command for 12 s: starts the server, mixes in the whole corpus' first entries, stops
    the server (exit 0), and writes a result whose figures are its raw records'."""
    args = [
        "bench",
        "soak",
        "--minutes",
        "0.2",
        "--model",
        str(tiny_whisper_dir),
        "--reference",
        "baseline",
        "--max-new-tokens",
        "32",
        "--batch-size",
        "2",
        "--concurrency",
        "3",
        "--bad-clients",
        "2",
        "--max-concurrent",
        "2",
        "--max-queue",
        "1",
        "--audio",
        "espeak:3,5",
        "--max-upload-mb",
        "2",
        "--warmup-minutes",
        "0.05",
        "--sample-s",
        "0.5",
        "--results-dir",
        str(tmp_path),
        "--cache-dir",
        str(tiny_xla_cache),  # the tiny engine's executables: the server loads them
        "--name",
        "smoke",
    ]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    out = tmp_path / "smoke"
    assert result.exit_code == 0, result.output + (out / "server.log").read_text()[-3000:]
    rec = json.loads((out / "result.json").read_text())
    s = rec["summary"]
    assert s["passed"] and s["unexpected_5xx"] == 0 and s["lost"] == 0 and s["unexpected"] == 0
    # how many requests fit in 12 s depends on the machine (a loaded one sent only 4 bad ones, each
    # waiting out 429s): at least one per client of each kind, every one answered as expected
    assert s["requests"] == len(rec["records"]) and s["bad"] >= 2 and s["good"] >= 3
    assert s["retries_429"] > 0  # 5 clients against 2 + 1 places: 429s happened and were waited out
    answered = sum(r["attempts"] for r in rec["records"] if r["status"] is not None)
    assert sum(rec["server_counts"].values()) == answered  # the server saw every request the client sent
    assert rec["settings"]["server_exit"]["code"] == 0
    assert len(rec["samples"]) >= 10 and s["memory"]["samples"] > 5
    assert (out / "plot.png").stat().st_size > 10_000 and "**PASS**" in (out / "table.md").read_text()
    assert "smoke/table.md" in (tmp_path / "README.md").read_text()
