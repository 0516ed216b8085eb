"""``chorus`` command line: serve, up, transcribe, models (and the sidecar's and bench's commands)."""

from __future__ import annotations

import json
import sys
import typing
from pathlib import Path

import click

from server.kit.settings import WhisperSettings, default_cache_dir


def _logging(level: str) -> None:
    from server.kit.app import configure_logging

    configure_logging(level)


@click.group()
@click.version_option(package_name="chorus")
def main() -> None:
    """Chorus: OpenAI-compatible transcription, translation and diarization."""


@main.group()
def serve() -> None:
    """Start one Chorus server."""


def whisper_options(fn):
    """Options shared by ``serve whisper`` and ``transcribe`` (defaults from CHORUS_WHISPER_*)."""
    fn = click.option("--model", default=None, help="base | small | local HF/CT2 directory | hub id")(fn)
    fn = click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default=None)(fn)
    quantization = WhisperSettings.model_fields["quantization"]  # the choices and their help, declared once
    fn = click.option(
        "--quantization",
        type=click.Choice(list(typing.get_args(quantization.annotation))),
        default=None,
        help=quantization.description,
    )(fn)
    fn = click.option("--batch-size", type=int, default=None, help="largest batch of 30 s windows")(fn)
    return fn


def _whisper_settings(**overrides) -> WhisperSettings:
    return WhisperSettings(**{k: v for k, v in overrides.items() if v is not None})


@serve.command("whisper")
@click.option("--host", default=None)
@click.option("--port", type=int, default=None)
@click.option("--api-key", "api_keys", multiple=True, help="accepted bearer token (repeatable)")
@click.option("--no-warmup", is_flag=True, help="skip compiling at start-up (first requests compile)")
@click.option(
    "--compile-all-first",
    is_flag=True,
    help="ready only once every batch size is compiled (default: ready after the smallest, "
    "the rest compile in the background)",
)
@click.option(
    "--no-temperature-fallback",
    is_flag=True,
    help="keep each window's greedy decode (faster-whisper's temperature=[0.0]) "
    "[env CHORUS_WHISPER_TEMPERATURE_FALLBACK=false]",
)
@whisper_options
def serve_whisper(
    host, port, api_keys, no_warmup, compile_all_first, no_temperature_fallback, model, dtype, quantization, batch_size
) -> None:
    """The whisper server (default 127.0.0.1:8001). SIGTERM drains requests in flight, then exits 0."""
    from jax_models.whisper_app import create_app, enable_compilation_cache
    from server.kit.app import serve

    settings = _whisper_settings(
        host=host,
        port=port,
        api_keys=list(api_keys) or None,
        model=model,
        dtype=dtype,
        quantization=quantization,
        batch_size=batch_size,
        warmup=False if no_warmup else None,
        background_compile=False if compile_all_first else None,
        temperature_fallback=False if no_temperature_fallback else None,
    )
    _logging(settings.log_level)
    enable_compilation_cache(settings.cache_dir)
    sys.exit(serve(create_app(settings), settings))


@serve.command("router")
@click.option("--host", default=None, help="Bind address [env CHORUS_ROUTER_HOST, default 127.0.0.1].")
@click.option("--port", type=int, default=None, help="Port [env CHORUS_ROUTER_PORT, default 8000].")
@click.option("--whisper-url", default=None, help="Whisper server base URL [http://127.0.0.1:8001].")
@click.option("--sidecar-url", default=None, help="Sidecar base URL [http://127.0.0.1:8002].")
@click.option("--api-key", "api_keys", multiple=True, help="accepted bearer token (repeatable)")
@click.option("--backend-api-key", default=None, help="bearer token sent to both backends")
@click.option(
    "--diarization-window",
    "diarization_window_s",
    type=float,
    default=None,
    help="longest audio (s) diarized in one sidecar call; caps the sidecar's max_window_s [the sidecar's, else 30]",
)
def serve_router(host, port, whisper_url, sidecar_url, api_keys, backend_api_key, diarization_window_s) -> None:
    """The router, the public entry point (default 127.0.0.1:8000). SIGTERM drains, then exits 0."""
    from server.kit.app import serve
    from server.kit.settings import RouterSettings
    from server.router.app import create_app

    overrides = dict(
        host=host,
        port=port,
        whisper_url=whisper_url,
        sidecar_url=sidecar_url,
        api_keys=list(api_keys) or None,
        backend_api_key=backend_api_key,
        diarization_window_s=diarization_window_s,
    )
    settings = RouterSettings(**{k: v for k, v in overrides.items() if v is not None})
    _logging(settings.log_level)
    sys.exit(serve(create_app(settings), settings))


@serve.command("ray")
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address of Serve's HTTP proxy.")
@click.option("--port", type=int, default=8000, show_default=True, help="Port of the OpenAI API.")
@click.option(
    "--address",
    default=None,
    help="Ray cluster: none starts a local one; 'auto' joins this machine's; ray://HOST:10001.",
)
@click.option("--whisper-replicas", type=int, default=1, show_default=True)
@click.option("--sidecar-replicas", type=int, default=1, show_default=True)
@click.option("--whisper-gpus", type=float, default=0.0, show_default=True, help="GPUs per whisper replica.")
@click.option("--sidecar-gpus", type=float, default=0.0, show_default=True, help="GPUs per sidecar replica.")
@click.option("--whisper-cpus", type=float, default=1.0, show_default=True, help="CPUs per whisper replica.")
@click.option(
    "--autoscale-whisper",
    "autoscale_max",
    type=int,
    default=None,
    help="autoscale the whisper deployment from 1 to this many replicas (replaces --whisper-replicas)",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="a Serve config file (server/deploy/serve_config.yaml): its application args are the settings",
)
@whisper_options
def serve_ray(
    host,
    port,
    address,
    whisper_replicas,
    sidecar_replicas,
    whisper_gpus,
    sidecar_gpus,
    whisper_cpus,
    autoscale_max,
    config_file,
    model,
    dtype,
    quantization,
    batch_size,
) -> None:
    """The router's OpenAI API on Ray Serve, with replicas of the whisper server and the sidecar.

    Ready when GET /ready answers 200 (every backend replica loaded and warmed up)."""
    from server.ray_app import Autoscaling, DeploymentSettings, RayServeSettings, run

    if config_file:
        import yaml

        doc = yaml.safe_load(Path(config_file).read_text())
        settings = RayServeSettings(**(doc["applications"][0].get("args") or {}))
    else:
        whisper = {
            k: v
            for k, v in dict(model=model, dtype=dtype, quantization=quantization, batch_size=batch_size).items()
            if v is not None
        }
        autoscaling = Autoscaling(max_replicas=autoscale_max) if autoscale_max else None
        settings = RayServeSettings(
            whisper=whisper,
            whisper_deployment=DeploymentSettings(
                replicas=whisper_replicas, num_cpus=whisper_cpus, num_gpus=whisper_gpus, autoscaling=autoscaling
            ),
            sidecar_deployment=DeploymentSettings(replicas=sidecar_replicas, num_gpus=sidecar_gpus),
        )
    _logging("info")
    sys.exit(run(settings, host=host, port=port, address=address))


@main.command("up")
@click.option("--host", default="127.0.0.1", show_default=True, help="Bind address of all three servers.")
@click.option("--port", "router_port", type=int, default=8000, show_default=True, help="Router port.")
@click.option("--whisper-port", type=int, default=8001, show_default=True)
@click.option("--sidecar-port", type=int, default=8002, show_default=True)
@click.option("--whisper-url", default=None, help="Use a whisper server running elsewhere (not started here).")
@click.option("--sidecar-url", default=None, help="Use a sidecar running elsewhere (not started here).")
@click.option("--model", default=None, help="Whisper model: base | small | a directory | a hub id.")
@click.option("--batch-size", type=int, default=None, help="Whisper batch of 30 s windows.")
@click.option(
    "--diarizer",
    type=click.Choice(["pyannote", "cluster", "sortformer"]),
    default=None,
    help="pyannote: segmentation-3.0 + CAM++ offline (the default; cluster is its old name)",
)
@click.option("--no-warmup", is_flag=True, help="Skip the backends' warm-up.")
@click.option("--api-key", "api_keys", multiple=True, help="Bearer token required by all three (repeatable).")
@click.option("--ready-timeout", type=float, default=900.0, show_default=True, help="Seconds to wait for /ready.")
def up(
    host,
    router_port,
    whisper_port,
    sidecar_port,
    whisper_url,
    sidecar_url,
    model,
    batch_size,
    diarizer,
    no_warmup,
    api_keys,
    ready_timeout,
) -> None:
    """Start the whisper server, the sidecar and the router; Ctrl-C stops all three."""
    from server.launcher import Launcher, UpOptions, plan_services

    options = UpOptions(
        host=host,
        router_port=router_port,
        whisper_port=whisper_port,
        sidecar_port=sidecar_port,
        whisper_url=whisper_url,
        sidecar_url=sidecar_url,
        model=model,
        batch_size=batch_size,
        diarizer=diarizer,
        warmup=not no_warmup,
        api_keys=tuple(api_keys),
    )
    code = Launcher(plan_services(options), echo=lambda m: click.echo(f"chorus up: {m}", err=True)).run(ready_timeout)
    sys.exit(code)


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["json", "text", "srt", "vtt", "verbose_json"]), default="text")
@click.option("--task", type=click.Choice(["transcribe", "translate"]), default="transcribe")
@click.option("--language", default=None, help="ISO-639-1 code; detected when absent")
@click.option("--prompt", default=None)
@click.option("--temperature", type=float, default=0.0)
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option(
    "--url",
    default=None,
    help="A running Chorus whisper server or router (http://127.0.0.1:8000): send FILE there "
    "instead of loading a model in this process.",
)
@click.option("--api-key", default=None, envvar="OPENAI_API_KEY", help="Bearer token for --url.")
@whisper_options
def transcribe(
    file, fmt, task, language, prompt, temperature, output, url, api_key, model, dtype, quantization, batch_size
):
    """Transcribe FILE locally with a progress bar, or through a running server with --url."""
    if url:
        text = _transcribe_remote(
            url,
            file,
            fmt=fmt,
            task=task,
            language=language,
            prompt=prompt,
            temperature=temperature,
            model=model,
            api_key=api_key,
        )
        if output:
            output.write_text(text, encoding="utf-8")
        else:
            click.echo(text)
        return
    from tqdm import tqdm

    from jax_models.engine import TranscribeOptions
    from jax_models.whisper_app import enable_compilation_cache, load_engine
    from server.core.audio import decode_audio, duration_s
    from server.core.formats import RENDERERS, TIMELESS_FORMATS

    settings = _whisper_settings(model=model, dtype=dtype, quantization=quantization, batch_size=batch_size)
    enable_compilation_cache(settings.cache_dir)
    samples = decode_audio(file.read_bytes())
    engine = load_engine(settings)
    try:
        with tqdm(total=round(duration_s(samples), 1), unit="audio s", file=sys.stderr) as bar:

            def progress(done: float) -> None:
                bar.n = round(done, 1)
                bar.refresh()

            transcript = engine.transcribe(
                samples,
                TranscribeOptions(
                    task=task,
                    language=language,
                    prompt=prompt,
                    temperature=temperature,
                    without_timestamps=fmt in TIMELESS_FORMATS,
                ),
                progress=progress,
            )
    finally:
        engine.close()
    body, _ = RENDERERS[fmt](transcript)
    text = json.dumps(body, ensure_ascii=False, indent=2) if isinstance(body, dict) else body
    if output:
        output.write_text(text, encoding="utf-8")
    else:
        click.echo(text)


def _transcribe_remote(
    url: str,
    file: Path,
    *,
    fmt: str,
    task: str,
    language: str | None,
    prompt: str | None,
    temperature: float,
    model: str | None,
    api_key: str | None,
) -> str:
    """POST ``file`` to ``{url}/v1/audio/transcriptions`` (or ``translations``) and return the body as text.

    Raises:
        click.ClickException: the server is unreachable or answers an error (its OpenAI message shown).
    """
    import httpx

    route = "transcriptions" if task == "transcribe" else "translations"
    fields = {"model": model or "whisper-1", "response_format": fmt, "temperature": str(temperature)}
    if language and task == "transcribe":
        fields["language"] = language
    if prompt:
        fields["prompt"] = prompt
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with file.open("rb") as f:
            r = httpx.post(
                f"{url.rstrip('/')}/v1/audio/{route}",
                data=fields,
                files={"file": (file.name, f)},
                headers=headers,
                timeout=httpx.Timeout(10.0, read=3600.0),
            )
    except httpx.HTTPError as exc:
        raise click.ClickException(f"{url}: {exc}") from None
    if r.status_code >= 400:
        try:
            message = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = r.text[:500]
        raise click.ClickException(f"{url} answered {r.status_code}: {message}")
    if r.headers.get("content-type", "").startswith("application/json"):
        return json.dumps(r.json(), ensure_ascii=False, indent=2)
    return r.text


@main.group()
def models() -> None:
    """Import and list Whisper models."""


@models.command("import")
@click.argument("name", default="base")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None)
def models_import(name: str, cache_dir: Path | None) -> None:
    """Import NAME (base | small | a CTranslate2 directory) into Hugging Face format, once."""
    from jax_models.ct2_import import CT2FormatError, ModelNotInstalledError, resolve_model

    try:
        path = resolve_model(name, cache_dir or default_cache_dir(), progress=True)
    except (ModelNotInstalledError, CT2FormatError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(path)


@models.command("list")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None)
def models_list(cache_dir: Path | None) -> None:
    """List imported models and embedded ones not yet imported."""
    from jax_models.ct2_import import list_models

    for row in list_models(cache_dir or default_cache_dir()):
        click.echo(json.dumps(row, default=str))


def _register_optional() -> None:
    """Attach the commands of the sidecar and bench packages when they are importable."""
    try:
        from torch_models.cli import prompts, sidecar_command

        serve.add_command(sidecar_command, "sidecar")
        main.add_command(prompts, "prompts")
    except ImportError:
        pass
    try:
        from bench.cli import bench

        main.add_command(bench, "bench")
    except ImportError:
        pass


_register_optional()

if __name__ == "__main__":
    main()
