"""``chorus bench quant``: Chorus's dtype/quantization settings side by side, speed against accuracy.

Each setting loads ``WhisperEngine`` in its own process (load and warm-up compile timed), runs the
same audio one file at a time, and is scored against the references (WER) and against the
``fp32`` transcripts (how much quantization changes the output).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bench import report
from bench.audio_sets import AudioItem, describe
from bench.engines import EngineSpec
from bench.machine import machine_info
from bench.metrics import english_spelling_map, fmt
from bench.plots import tradeoff_figure
from bench.worker import run_engines

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
QUANTIZATIONS = ("int8", "nf4", "affine4", "mxfp8")


@dataclass(frozen=True)
class QuantSetting:
    """A named engine setting: ``fp32``, ``bf16``, ``fp16``, ``int8`` (int8 weights times int8
    activations on the functional backend, ``functional.Int8Linear``; the rest fp32), ``bf16-int8``
    (the same with bf16 around the products), EasyDeL's ``nf4`` …, any ``[<dtype>-]<quantization>``."""

    name: str
    dtype: str
    quantization: str

    @staticmethod
    def parse(name: str) -> QuantSetting:
        """``"bf16-nf4"`` → ``QuantSetting("bf16-nf4", "bfloat16", "nf4")``.

        Raises:
            ValueError: an unknown dtype or quantization, or more than one of either.
        """
        dtype, quant = None, None
        for token in name.lower().replace("+", "-").split("-"):
            if token in DTYPES and dtype is None:
                dtype = DTYPES[token]
            elif token in QUANTIZATIONS and quant is None:
                quant = token
            else:
                raise ValueError(
                    f"bad setting {name!r}: use [<{'|'.join(DTYPES)}>-]<{'|'.join(QUANTIZATIONS)}> or a dtype alone"
                )
        if dtype is None and quant is None:
            raise ValueError(f"empty setting {name!r}")
        return QuantSetting(name, dtype or "float32", quant or "none")


def table(rows: list[dict], baseline_label: str | None) -> str:
    """The quantization Markdown table, speed also as a ratio to the ``fp32`` setting."""
    base = next((r["rtfx"] for r in rows if r["label"] == baseline_label), None)
    headers = [
        "setting",
        "RTFx",
        "× fp32",
        "WER %",
        "≠ fp32 %",
        "p50 s/file",
        "p95 s/file",
        "load s",
        "warm-up s",
        "RSS after load MiB",
        "peak RSS MiB",
        "CPU cores own / other",
    ]
    out = []
    for r in rows:
        if r.get("error"):
            out.append([r["label"], "failed", *["—"] * 10])
            continue
        out.append(
            [
                r["label"],
                fmt(r["rtfx"]),
                report.ratio_text(r["rtfx"], base) if base else "—",
                fmt(r["wer"], 1, percent=True),
                fmt(r.get("disagreement"), 1, percent=True),
                fmt(r["latency_p50_s"]),
                fmt(r["latency_p95_s"]),
                fmt(r["load_s"], 1),
                fmt(r["warmup_s"], 1),
                fmt(r["rss_after_load_mib"], 0),
                fmt(r["peak_rss_mib"], 0),
                report.cores_text(r),
            ]
        )
    return report.markdown_table(headers, out)


def render(record: dict, out_dir: Path) -> None:
    """Summarize a quant record's raw results into ``record["summary"]`` and write the result files.

    Everything shown is computed here from ``record["results"]`` (the workers' raw measurements), so
    ``chorus bench render`` redraws a committed result without rerunning it.
    """
    settings = record["settings"]
    items = [AudioItem.from_json(d) for d in record["audio"]["items"]]
    base_label = record.get("baseline")
    base_result = next((r for r in record["results"] if (r.get("engine") or {}).get("label") == base_label), None)
    rows = [
        report.engine_summary(res, items, settings["normalizer"], baseline=base_result) for res in record["results"]
    ]
    record["summary"] = rows
    notes = [f"- {r['label']} failed: `{r['error']}`" for r in rows if r.get("error")]
    notes += [f"- {r['label']}: stopped after {r['files']} files (--max-seconds)" for r in rows if r.get("truncated")]
    notes.append(report.CPU_NOTE)
    notes.append(
        "- RTFx = audio seconds / transcription seconds, files one after another after the warm-up; "
        "warm-up = compiling every batch × prefix shape"
        + (" (persistent XLA cache on)" if settings["compile_cache"] else " (cold: no persistent XLA cache)")
        + " plus one short transcription. Load s includes importing EasyDeL/JAX. WER: corpus WER after "
        "Whisper's English normalizer; ≠ fp32: the same measure of each setting's transcripts against fp32's."
    )
    title = f"Chorus Whisper {Path(settings['model']).name}: dtype / quantization on {record['machine']['cpu']}"
    report.write_result(out_dir, record, table(rows, base_label), tradeoff_figure(rows, title, base_label), notes)


def run_quant(
    *,
    model: str,
    settings: list[str],
    items: list[AudioItem],
    cache_dir: Path,
    out_dir: Path,
    name: str,
    command: str,
    language: str | None = "en",
    batch_size: int = 4,
    max_new_tokens: int | None = None,
    repeats: int = 1,
    max_seconds: float | None = None,
    compile_cache: bool = False,
    normalizer: str = "english",
    timeout_s: float = 3600.0,
    wait_idle_cores: float | None = None,
) -> dict:
    """Run every setting and write ``result.json``, ``table.md`` and ``plot.png`` to ``out_dir``.

    Args:
        model: ``base``, ``small``, a CT2 or HF Whisper directory (``resolve_model``).
        settings: setting names (see :class:`QuantSetting`), e.g. ``["fp32", "bf16", "int8"]``.
        items: the audio set.
        cache_dir: Chorus's cache directory.
        out_dir, name, command: where to write, the result's name, the command line recorded.
        language: forced language code (``None``: detected).
        batch_size: the engine's largest batch of 30 s windows.
        max_new_tokens: cap on tokens per window (``None``: 224).
        repeats: passes over the audio per setting.
        max_seconds: per setting, stop starting files after this much transcription time (s).
        compile_cache: use the persistent XLA cache (warm-up then measures a cache hit, not a compile).
        normalizer: WER normalizer.
        wait_idle_cores: before each engine, wait (up to 10 min) until fewer cores than this are busy.
        timeout_s: per setting (s).

    Returns:
        The JSON record written.

    Raises:
        ValueError: a bad setting name.
    """
    from jax_models.ct2_import import resolve_model

    parsed = [QuantSetting.parse(s) for s in settings]
    hf_dir = resolve_model(model, cache_dir, progress=True)
    specs = [
        EngineSpec(
            s.name,
            "chorus",
            hf_dir,
            {
                "dtype": s.dtype,
                "quantization": s.quantization,
                "batch_size": batch_size,
                "max_new_tokens": max_new_tokens,
                "compile_cache_dir": str(cache_dir) if compile_cache else None,
            },
        )
        for s in parsed
    ]
    machine = machine_info()
    results = run_engines(
        specs,
        items,
        language=language,
        repeats=repeats,
        max_seconds=max_seconds,
        timeout_s=timeout_s,
        wait_idle_cores=wait_idle_cores,
    )
    record = {
        "kind": "quant",
        "name": name,
        "created": report.now_iso(),
        "command": command,
        "machine": machine,
        "settings": {
            "model": model,
            "hf_dir": hf_dir,
            "settings": [s.__dict__ for s in parsed],
            "language": language,
            "batch_size": batch_size,
            "max_new_tokens": max_new_tokens,
            "repeats": repeats,
            "max_seconds": max_seconds,
            "compile_cache": compile_cache,
            "normalizer": normalizer,
            "spelling_map": english_spelling_map()[1],
            "wait_idle_cores": wait_idle_cores,
        },
        "audio": describe(items),
        "engines": [s.to_json() for s in specs],
        "results": results,
        "baseline": next((s.name for s in parsed if s.dtype == "float32" and s.quantization == "none"), None),
    }
    render(record, out_dir)
    return record
