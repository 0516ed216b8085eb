"""``chorus bench peers``: Chorus beside faster-whisper and transformers on the same weights and audio.

The Whisper weights are the same for everyone: Chorus and transformers load the Hugging Face
checkpoint imported from the CTranslate2 files that faster-whisper loads directly. Each engine
runs in its own process, one after another, over the same decoded audio, one file at a time.
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
from server.kit.settings import WhisperSettings

CHORUS = "chorus"
PEERS = (
    "chorus",
    "chorus-text",
    "chorus-greedy",
    "chorus-text-greedy",
    "chorus-int8",
    "chorus-int8-text",
    "chorus-int8-fixed",
    "chorus-int8-text-fixed",
    "faster-whisper-int8",
    "faster-whisper-fp32",
    "faster-whisper-batched-int8",
    "faster-whisper-batched-fp32",
    "faster-whisper-batched-int8-w2",
    "transformers-fp32",
    "easydel-vwhisper",
)
"""``easydel-vwhisper``: EasyDeL's stock ``vWhisperInference`` (fp32, greedy, text only, ``--batch-size``
chunks per call): what Chorus's own engine adds over its seed design. ``chorus-text``: Chorus decoding text only (``<|notimestamps|>``), as the whisper server does
for ``response_format`` ``json`` and ``text``, and as faster-whisper's batched pipeline does by
default (``without_timestamps=True``). ``chorus-int8…``: the engine with ``quantization="int8"`` (int8
weights and dynamically quantized int8 activations, CTranslate2's scheme: ``functional.Int8Linear``). ``…-w2``: two CTranslate2 workers (``num_workers=2``) with the threads split between them, so two
concurrent requests run in parallel (faster-whisper's advice for multi-threaded callers).
``…-fixed``: the engine without continuous batching (``continuous=False``: every batch runs as many
steps as its longest window), to measure what continuous batching adds. ``…-greedy``: without
temperature fallback (``--no-temperature-fallback``: each window's greedy decode kept), the work
faster-whisper's batched pipeline does, to separate what the fallback rule costs from the engine."""
DEFAULT_PEERS = (
    "chorus",
    "chorus-text",
    "faster-whisper-int8",
    "faster-whisper-fp32",
    "faster-whisper-batched-int8",
    "transformers-fp32",
)


@dataclass(frozen=True)
class Weights:
    """One model in both formats: ``hf_dir`` (Chorus, transformers) and ``ct2_dir`` (faster-whisper)."""

    hf_dir: str
    ct2_dir: str | None
    source: str


def _ct2_ready(dest: Path, parts: list[Path]) -> bool:
    model = dest / "model.bin"
    return model.is_file() and model.stat().st_size == sum(p.stat().st_size for p in parts)


def resolve_weights(model: str, cache_dir: Path, ct2_dir: str | None = None) -> Weights:
    """The same Whisper weights as a Hugging Face directory and as a CTranslate2 directory.

    Args:
        model: ``base``/``small`` (embedded CT2 packages: imported to HF once, and their
            ``model.bin`` parts joined once into ``<cache_dir>/bench/ct2/<name>``), a CT2
            directory, or an HF Whisper directory (then faster-whisper needs ``ct2_dir``).
        cache_dir: Chorus's cache directory.
        ct2_dir: a CTranslate2 directory to use for faster-whisper instead.

    Returns:
        :class:`Weights`; ``ct2_dir`` is ``None`` when no CT2 files are known for ``model``.
    """
    from jax_models.ct2_import import (
        EMBEDDED_MODELS,
        assemble_ct2_dir,
        embedded_ct2_dirs,
        locate_ct2_files,
        resolve_model,
    )

    hf = resolve_model(model, cache_dir, progress=True)
    name = model.removeprefix("embedded:")
    if ct2_dir:
        return Weights(hf, str(Path(ct2_dir).expanduser()), f"{model} + CT2 {ct2_dir}")
    if name in EMBEDDED_MODELS:
        dest = cache_dir / "bench" / "ct2" / name
        parts = list(locate_ct2_files(embedded_ct2_dirs(name)).parts)
        if not _ct2_ready(dest, parts):
            assemble_ct2_dir(name, dest)
        return Weights(hf, str(dest), f"embedded:{name}")
    path = Path(model).expanduser()
    if (path / "model.bin").is_file():
        return Weights(hf, str(path), str(path))
    return Weights(hf, None, str(path))


def peer_specs(
    names: list[str], weights: Weights, *, batch_size: int, max_new_tokens: int | None, compile_cache_dir: str | None
) -> tuple[list[EngineSpec], list[str]]:
    """Engine specs for the peer names (see :data:`PEERS`), and notes on those skipped.

    faster-whisper engines are skipped (with a note) when ``weights.ct2_dir`` is ``None``.

    Raises:
        ValueError: an unknown peer name.
    """
    specs, notes = [], []
    common = {"max_new_tokens": max_new_tokens}
    for name in names:
        if name not in PEERS:
            raise ValueError(f"unknown engine {name!r}; choose from {', '.join(PEERS)}")
        if name == CHORUS or name.startswith(CHORUS + "-"):
            workers = WhisperSettings.model_fields["engine_workers"].default  # as `chorus serve whisper` runs
            text_only = "-text" in name
            int8 = "-int8" in name
            fixed = name.endswith("-fixed")
            greedy = name.endswith("-greedy")
            specs.append(
                EngineSpec(
                    f"chorus {'int8' if int8 else 'fp32'}{' text-only' if text_only else ''}"
                    f" (batch {batch_size}, {workers} workers{', fixed batches' if fixed else ''}"
                    f"{', no fallback' if greedy else ''})",
                    "chorus",
                    weights.hf_dir,
                    {
                        "dtype": "float32",
                        "quantization": "int8" if int8 else "none",
                        "batch_size": batch_size,
                        "workers": workers,
                        "compile_cache_dir": compile_cache_dir,
                        "without_timestamps": text_only,
                        "continuous": not fixed,
                        "temperature_fallback": not greedy,
                        **common,
                    },
                )
            )
        elif name == "easydel-vwhisper":
            specs.append(
                EngineSpec(
                    f"easydel vWhisperInference fp32 (batch {batch_size})",
                    "easydel",
                    weights.hf_dir,
                    {"batch_size": batch_size, **common},
                )
            )
        elif name == "transformers-fp32":
            specs.append(
                EngineSpec("transformers fp32", "transformers", weights.hf_dir, {"dtype": "float32", **common})
            )
        else:
            if weights.ct2_dir is None:
                notes.append(f"{name} skipped: no CTranslate2 files for {weights.source} (pass --ct2-dir)")
                continue
            batched = "batched" in name
            workers = 2 if name.endswith("-w2") else 1
            name = name.removesuffix("-w2")
            ctype = "int8" if name.endswith("int8") else "float32"
            params = {"compute_type": ctype, **common}
            short = "int8" if ctype == "int8" else "fp32"
            label = f"faster-whisper {short}"
            if batched:
                params["batch_size"] = batch_size
                label = f"faster-whisper batched {short} (batch {batch_size})"
            if workers > 1:
                params["num_workers"] = workers
                label += f" ×{workers} workers"
            specs.append(
                EngineSpec(label, "faster-whisper-batched" if batched else "faster-whisper", weights.ct2_dir, params)
            )
    return specs, notes


def table(rows: list[dict], baseline_label: str | None) -> str:
    """The peers Markdown table: one row per engine, speed also as a ratio to Chorus."""
    base = next((r["rtfx"] for r in rows if r["label"] == baseline_label), None)
    headers = [
        "engine",
        "RTFx",
        "× Chorus",
        "WER %",
        "p50 s/file",
        "p95 s/file",
        "load s",
        "warm-up s",
        "RSS after load MiB",
        "peak RSS MiB",
        "audio s",
        "wall s",
        "CPU cores own / other",
    ]
    out = []
    for r in rows:
        if r.get("error"):
            out.append([r["label"], "failed", *["—"] * 11])
            continue
        out.append(
            [
                r["label"],
                fmt(r["rtfx"]),
                report.ratio_text(r["rtfx"], base) if base else "—",
                fmt(r["wer"], 1, percent=True),
                fmt(r["latency_p50_s"]),
                fmt(r["latency_p95_s"]),
                fmt(r["load_s"], 1),
                fmt(r["warmup_s"], 1),
                fmt(r["rss_after_load_mib"], 0),
                fmt(r["peak_rss_mib"], 0),
                fmt(r["audio_s"], 1),
                fmt(r["wall_s"], 1),
                report.cores_text(r),
            ]
        )
    return report.markdown_table(headers, out)


def render(record: dict, out_dir: Path) -> None:
    """Summarize a peers record's raw results into ``record["summary"]`` and write the result files.

    Everything shown is computed here from ``record["results"]`` (the workers' raw measurements), so
    ``chorus bench render`` redraws a committed result without rerunning it.
    """
    settings = record["settings"]
    items = [AudioItem.from_json(d) for d in record["audio"]["items"]]
    rows = [report.engine_summary(res, items, settings["normalizer"]) for res in record["results"]]
    record["summary"] = rows
    baseline = record.get("baseline")
    notes = [f"- {n}" for n in settings.get("skipped", [])]
    notes += [f"- {r['label']} failed: `{r['error']}`" for r in rows if r.get("error")]
    notes += [f"- {r['label']}: stopped after {r['files']} files (--max-seconds)" for r in rows if r.get("truncated")]
    notes.append(report.CPU_NOTE)
    concurrency = int(settings.get("concurrency") or 1)
    how = (
        "files one after another"
        if concurrency == 1
        else f"{concurrency} files at once from {concurrency} threads (aggregate: all audio over the wall time)"
    )
    notes.append(
        f"- RTFx = audio seconds / transcription seconds, {how}, after a warm-up "
        "(decoding the file is not timed); × Chorus = RTFx ÷ Chorus's RTFx (above 1 is faster than Chorus). "
        f"Decoding: greedy, language {settings['language'] or 'detected'}, temperature fallback "
        "(except Chorus rows marked no fallback, and faster-whisper's batched pipeline, which never falls back), "
        "no previous-text prompt; timestamps predicted except by faster-whisper's batched pipeline and Chorus "
        "text-only (text tokens only, `without_timestamps`). WER: corpus WER after Whisper's English normalizer. Load s includes "
        "importing the engine's library."
    )
    title = f"Whisper {Path(settings['model']).name} on {record['machine']['cpu']}: peers"
    report.write_result(out_dir, record, table(rows, baseline), tradeoff_figure(rows, title, baseline), notes)


def run_peers(
    *,
    model: str,
    names: list[str],
    items: list[AudioItem],
    cache_dir: Path,
    out_dir: Path,
    name: str,
    command: str,
    ct2_dir: str | None = None,
    language: str | None = "en",
    batch_size: int = 4,
    max_new_tokens: int | None = None,
    repeats: int = 1,
    max_seconds: float | None = None,
    threads: int | None = None,
    concurrency: int = 1,
    compile_cache: bool = False,
    normalizer: str = "english",
    timeout_s: float = 3600.0,
    wait_idle_cores: float | None = None,
) -> dict:
    """Run the peer comparison and write ``result.json``, ``table.md`` and ``plot.png`` to ``out_dir``.

    Args:
        model: the Whisper model (see :func:`resolve_weights`).
        names: peers to run (:data:`PEERS`), Chorus first by convention.
        items: the audio set.
        cache_dir: Chorus's cache directory.
        out_dir: result directory.
        name: result name.
        command: the command line, recorded verbatim.
        language: forced language code; ``None`` lets every engine detect it.
        batch_size: Chorus's largest batch and the batched pipeline's batch size (windows).
        max_new_tokens: tokens per window cap (``None``: each engine's default).
        repeats: passes over the audio per engine.
        max_seconds: per engine, stop starting files after this much transcription time (s).
        threads: CPU threads for CTranslate2/PyTorch.
        concurrency: files transcribed at once per engine (RTFx is then the aggregate: audio
            seconds over the wall time of all files).
        compile_cache: let Chorus use its persistent XLA cache (warm-up then measures a cache hit).
        normalizer: WER normalizer (``english``, ``basic``, ``none``).
        wait_idle_cores: before each engine, wait (up to 10 min) until fewer cores than this are busy.
        timeout_s: per engine process (s).

    Returns:
        The JSON record written.
    """
    weights = resolve_weights(model, cache_dir, ct2_dir)
    specs, notes = peer_specs(
        names,
        weights,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        compile_cache_dir=str(cache_dir) if compile_cache else None,
    )
    machine = machine_info()
    results = run_engines(
        specs,
        items,
        language=language,
        repeats=repeats,
        max_seconds=max_seconds,
        threads=threads,
        concurrency=concurrency,
        timeout_s=timeout_s,
        wait_idle_cores=wait_idle_cores,
    )
    record = {
        "kind": "peers",
        "name": name,
        "created": report.now_iso(),
        "command": command,
        "machine": machine,
        "settings": {
            "model": model,
            "hf_dir": weights.hf_dir,
            "ct2_dir": weights.ct2_dir,
            "engines": names,
            "language": language,
            "batch_size": batch_size,
            "max_new_tokens": max_new_tokens,
            "repeats": repeats,
            "max_seconds": max_seconds,
            "threads": threads,
            "concurrency": concurrency,
            "compile_cache": compile_cache,
            "normalizer": normalizer,
            "spelling_map": english_spelling_map()[1],
            "wait_idle_cores": wait_idle_cores,
            "skipped": notes,
        },
        "audio": describe(items),
        "engines": [s.to_json() for s in specs],
        "results": results,
        "baseline": next((s.label for s in specs if s.kind == "chorus"), None),
    }
    render(record, out_dir)
    return record
