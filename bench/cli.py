"""``chorus bench throughput | quant | peers | soak | render``: the benchmark commands (attached by ``server.cli``).

Heavy imports happen inside the commands, so ``chorus --help`` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

RESULTS_DIR = Path(__file__).parent / "results"


def _csv(kind):
    def convert(ctx, param, value):
        if value is None:
            return None
        try:
            return [kind(v.strip()) for v in value.split(",") if v.strip()]
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None

    return convert


def common_options(fn):
    """Options every bench command shares: audio, output location, language, WER normalizer."""
    options = [
        click.option(
            "--audio",
            "audio",
            multiple=True,
            default=None,
            help="espeak:5,30,300 | espeak-repeat:… | real:… | meeting:… | varied | repeated | real | meeting (-small) | shared | DIR (audio + .txt refs) | FILE; repeatable",
        ),
        click.option("--language", default="en", show_default=True, help="forced language code; 'auto' to detect"),
        click.option(
            "--normalizer",
            type=click.Choice(["english", "basic", "none"]),
            default="english",
            show_default=True,
            help="text normalizer before WER (Whisper's)",
        ),
        click.option("--name", default=None, help="result directory name [default: <cpu|gpu>-<kind>-<date>]"),
        click.option(
            "--results-dir",
            type=click.Path(file_okay=False, path_type=Path),
            default=RESULTS_DIR,
            show_default=True,
            help="where result directories and the index README go",
        ),
        click.option(
            "--cache-dir",
            type=click.Path(file_okay=False, path_type=Path),
            default=None,
            help="Chorus cache (models, generated audio) [default: CHORUS_CACHE_DIR or ~/.cache/chorus]",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def engine_options(fn):
    """Options of the commands that run engines in subprocesses (quant, peers)."""
    options = [
        click.option("--model", default="base", show_default=True, help="base | small | CT2 dir | HF Whisper dir"),
        click.option(
            "--batch-size",
            type=int,
            default=4,
            show_default=True,
            help="Chorus's largest batch of 30 s windows (and the batched pipeline's)",
        ),
        click.option("--max-new-tokens", type=int, default=None, help="cap on tokens per window (tests)"),
        click.option("--repeats", type=int, default=1, show_default=True, help="passes over the audio per engine"),
        click.option(
            "--max-seconds",
            type=float,
            default=None,
            help="per engine, stop starting files after this much transcription time (s)",
        ),
        click.option(
            "--compile-cache/--no-compile-cache",
            default=False,
            show_default=True,
            help="let Chorus use its persistent XLA cache (warm-up then is a cache hit)",
        ),
        click.option(
            "--timeout", "timeout_s", type=float, default=3600.0, show_default=True, help="per engine process (s)"
        ),
        click.option(
            "--wait-idle",
            "wait_idle",
            type=float,
            default=None,
            help="before each engine, wait (up to 10 min) until fewer than this many cores are busy "
            "(shared machines), e.g. 0.3",
        ),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _setup(cache_dir: Path | None, audio: tuple[str, ...], default_audio: tuple[str, ...]):
    from bench.audio_sets import resolve_audio
    from server.kit.settings import default_cache_dir

    cache = cache_dir or default_cache_dir()
    try:
        items = resolve_audio(audio or default_audio, cache)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        raise click.UsageError(str(exc)) from None
    total = sum(it.duration_s for it in items)
    click.echo(f"audio: {len(items)} files, {total:.1f} s", err=True)
    return cache, items


def _finish(results_dir: Path, out_dir: Path) -> None:
    from bench.report import update_index

    update_index(results_dir)
    click.echo((out_dir / "table.md").read_text())
    click.echo(f"wrote {out_dir}", err=True)


def _language(value: str) -> str | None:
    return None if value.lower() in ("auto", "", "none") else value


@click.group()
def bench() -> None:
    """Benchmarks: server throughput, quantization trade-offs, and peers on the same audio."""


@bench.command()
@click.option(
    "--url",
    "urls",
    multiple=True,
    required=True,
    help="server, http://127.0.0.1:8001 or label=URL; repeatable (one curve each)",
)
@click.option("--concurrency", callback=_csv(int), default="1,4,8,16", show_default=True, help="comma-separated levels")
@click.option("--duration", type=float, default=120.0, show_default=True, help="seconds of load per level")
@click.option(
    "--response-format",
    type=click.Choice(["json", "text", "verbose_json", "srt", "vtt"]),
    default="json",
    show_default=True,
)
@click.option("--model", default="whisper-1", show_default=True, help="the request's model field")
@click.option(
    "--warmup-requests",
    type=int,
    default=None,
    help="unmeasured requests before each level [default: max(2, largest concurrency)]",
)
@click.option("--pid", type=int, default=None, help="server process to watch [default: found by port]")
@click.option("--api-key", envvar="OPENAI_API_KEY", default="sk-chorus-bench", show_default=False)
@click.option("--timeout", "timeout_s", type=float, default=600.0, show_default=True, help="per request (s)")
@click.option("--ready-timeout", type=float, default=600.0, show_default=True, help="wait this long for /ready (s)")
@click.option("--max-requests", type=int, default=None, help="per level, stop after this many requests")
@common_options
def throughput(
    urls,
    concurrency,
    duration,
    response_format,
    model,
    warmup_requests,
    pid,
    api_key,
    timeout_s,
    ready_timeout,
    max_requests,
    audio,
    language,
    normalizer,
    name,
    results_dir,
    cache_dir,
):
    """Drive running servers with the OpenAI SDK: RTFx, req/s, latency, errors, memory per concurrency."""
    from bench.machine import device_label
    from bench.report import default_name, invocation
    from bench.throughput import run_throughput

    if not concurrency or min(concurrency) < 1:
        raise click.BadParameter("concurrency levels must be positive integers", param_hint="--concurrency")
    _, items = _setup(cache_dir, audio, ("espeak:5,30",))
    name = name or default_name("throughput", device_label())
    out_dir = results_dir / name
    try:
        run_throughput(
            urls=list(urls),
            items=items,
            concurrencies=concurrency,
            duration_s=duration,
            out_dir=out_dir,
            name=name,
            command=invocation(),
            model=model,
            response_format=response_format,
            language=_language(language),
            warmup_requests=warmup_requests,
            api_key=api_key,
            pid=pid,
            timeout_s=timeout_s,
            ready_timeout_s=ready_timeout,
            max_requests=max_requests,
            normalizer=normalizer,
        )
    except TimeoutError as exc:
        raise click.ClickException(str(exc)) from None
    _finish(results_dir, out_dir)


@bench.command()
@click.option(
    "--settings",
    "settings",
    callback=_csv(str),
    default="fp32,bf16,fp16,int8,nf4",
    show_default=True,
    help="comma-separated: fp32 bf16 fp16 int8 nf4 affine4 mxfp8, or <dtype>-<quantization>",
)
@engine_options
@common_options
def quant(
    settings,
    model,
    batch_size,
    max_new_tokens,
    repeats,
    max_seconds,
    compile_cache,
    timeout_s,
    wait_idle,
    audio,
    language,
    normalizer,
    name,
    results_dir,
    cache_dir,
):
    """Chorus dtype/quantization settings, each in its own process: RTFx, memory, warm-up, WER."""
    from bench.machine import device_label
    from bench.quant import QuantSetting, run_quant
    from bench.report import default_name, invocation

    try:
        for s in settings:
            QuantSetting.parse(s)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--settings") from None
    cache, items = _setup(cache_dir, audio, ("espeak:5,30,300",))
    name = name or default_name("quant", device_label())
    out_dir = results_dir / name
    run_quant(
        model=model,
        settings=settings,
        items=items,
        cache_dir=cache,
        out_dir=out_dir,
        name=name,
        command=invocation(),
        language=_language(language),
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        repeats=repeats,
        max_seconds=max_seconds,
        compile_cache=compile_cache,
        normalizer=normalizer,
        timeout_s=timeout_s,
        wait_idle_cores=wait_idle,
    )
    _finish(results_dir, out_dir)


@bench.command()
@click.option(
    "--engines",
    "engines",
    callback=_csv(str),
    default=None,
    help="comma-separated from: chorus, faster-whisper-int8, faster-whisper-fp32, "
    "faster-whisper-batched-int8, faster-whisper-batched-fp32, transformers-fp32; or 'all' "
    "[default: all but faster-whisper-batched-fp32]",
)
@click.option("--ct2-dir", default=None, help="CTranslate2 files for faster-whisper (default: the model's own)")
@click.option("--threads", type=int, default=None, help="CPU threads for CTranslate2 and PyTorch [default: all]")
@click.option(
    "--concurrency",
    type=int,
    default=1,
    show_default=True,
    help="files transcribed at once per engine (aggregate RTFx), e.g. 8 long-form requests",
)
@engine_options
@common_options
def peers(
    engines,
    ct2_dir,
    threads,
    concurrency,
    model,
    batch_size,
    max_new_tokens,
    repeats,
    max_seconds,
    compile_cache,
    timeout_s,
    wait_idle,
    audio,
    language,
    normalizer,
    name,
    results_dir,
    cache_dir,
):
    """Chorus, faster-whisper and transformers on the same weights and audio, one process each."""
    from bench.machine import device_label
    from bench.peers import DEFAULT_PEERS, PEERS, run_peers
    from bench.report import default_name, invocation

    names = list(DEFAULT_PEERS) if not engines else list(PEERS) if engines == ["all"] else engines
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        raise click.BadParameter(f"unknown {unknown}; choose from {', '.join(PEERS)}", param_hint="--engines")
    cache, items = _setup(cache_dir, audio, ("espeak:5,30,300",))
    name = name or default_name("peers", device_label())
    out_dir = results_dir / name
    run_peers(
        model=model,
        names=names,
        items=items,
        cache_dir=cache,
        out_dir=out_dir,
        name=name,
        command=invocation(),
        ct2_dir=ct2_dir,
        language=_language(language),
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        repeats=repeats,
        max_seconds=max_seconds,
        threads=threads,
        concurrency=concurrency,
        compile_cache=compile_cache,
        normalizer=normalizer,
        timeout_s=timeout_s,
        wait_idle_cores=wait_idle,
    )
    _finish(results_dir, out_dir)


@bench.command()
@click.option("--minutes", type=float, required=True, help="length of the load (minutes)")
@click.option(
    "--url",
    default=None,
    help="load this running whisper server instead of starting one (its limits must match "
    "--max-audio-s/--max-upload-mb)",
)
@click.option("--pid", type=int, default=None, help="with --url: the server process to watch [found by port]")
@click.option("--model", default="base", show_default=True, help="model of the started server")
@click.option("--batch-size", type=int, default=None, help="the started server's batch of 30 s windows [4]")
@click.option("--max-new-tokens", type=int, default=None, help="the started server's cap on tokens per window")
@click.option("--concurrency", type=int, default=8, show_default=True, help="clients sending good speech at once")
@click.option(
    "--bad-clients",
    type=click.IntRange(0),
    default=2,
    show_default=True,
    help="clients cycling through the bad-input corpus beside them",
)
@click.option(
    "--max-concurrent",
    type=int,
    default=None,
    help="the started server's requests processed at once (small: it answers 429) [16]",
)
@click.option("--max-queue", type=int, default=None, help="the started server's waiting line [64]")
@click.option(
    "--reference",
    type=click.Choice(["script", "baseline"]),
    default="script",
    show_default=True,
    help="check good transcripts against the clip's script, or the server's own answer at idle",
)
@click.option(
    "--max-wer",
    type=float,
    default=0.3,
    show_default=True,
    help="a good transcript further than this from its reference counts as lost",
)
@click.option(
    "--warmup-minutes", type=float, default=None, help="load not measured for memory [10 % of the run, 1 to minutes/2]"
)
@click.option("--sample-s", type=float, default=2.0, show_default=True, help="seconds between memory samples")
@click.option("--max-audio-s", type=float, default=600.0, show_default=True, help="the server's duration limit")
@click.option("--max-upload-mb", type=float, default=25.0, show_default=True, help="the server's upload limit")
@click.option("--api-key", envvar="OPENAI_API_KEY", default="sk-chorus-bench", show_default=False)
@click.option("--timeout", "timeout_s", type=float, default=600.0, show_default=True, help="per request (s)")
@common_options
def soak(
    minutes,
    url,
    pid,
    model,
    batch_size,
    max_new_tokens,
    concurrency,
    bad_clients,
    max_concurrent,
    max_queue,
    reference,
    max_wer,
    warmup_minutes,
    sample_s,
    max_audio_s,
    max_upload_mb,
    api_key,
    timeout_s,
    audio,
    language,
    normalizer,
    name,
    results_dir,
    cache_dir,
):
    """Saturating load with good and bad requests: 5xx, lost transcripts, memory over time (PNG).

    Exits 1 when the run fails: an unexpected 5xx, a lost good result, or RSS growth of 10 % or more
    after warm-up."""
    from bench.machine import device_label
    from bench.report import default_name, invocation
    from bench.soak import run_soak

    if minutes <= 0 or concurrency < 1:
        raise click.BadParameter("--minutes and --concurrency must be positive")
    cache, items = _setup(cache_dir, audio, ("espeak:5,10,20",))
    name = name or default_name("soak", device_label())
    out_dir = results_dir / name
    try:
        record = run_soak(
            minutes=minutes,
            items=items,
            out_dir=out_dir,
            name=name,
            command=invocation(),
            cache_dir=cache,
            url=url,
            pid=pid,
            model=model,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            concurrency=concurrency,
            bad_clients=bad_clients,
            max_concurrent=max_concurrent,
            max_queue=max_queue,
            reference=reference,
            max_wer=max_wer,
            warmup_s=None if warmup_minutes is None else warmup_minutes * 60,
            sample_s=sample_s,
            max_audio_s=max_audio_s,
            max_upload_mb=max_upload_mb,
            language=_language(language),
            api_key=api_key,
            timeout_s=timeout_s,
            normalizer=normalizer,
            echo=lambda m: click.echo(m, err=True),
        )
    except (TimeoutError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    _finish(results_dir, out_dir)
    if not record["summary"]["passed"]:
        raise click.ClickException("the soak failed: see the table above")


@bench.command()
@click.argument("result_dirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
def render(result_dirs):
    """Recompute tables and plots of RESULT_DIRS from their result.json (no rerun), and the index."""
    import json

    from bench import peers as peers_mod
    from bench import quant as quant_mod
    from bench import soak as soak_mod
    from bench import throughput as throughput_mod

    renderers = {
        "peers": peers_mod.render,
        "quant": quant_mod.render,
        "throughput": throughput_mod.render,
        "soak": soak_mod.render,
    }
    for out_dir in result_dirs:
        record = json.loads((out_dir / "result.json").read_text())
        if record.get("kind") not in renderers:
            raise click.ClickException(f"{out_dir}: unknown result kind {record.get('kind')!r}")
        renderers[record["kind"]](record, out_dir)
        _finish(out_dir.parent, out_dir)


if __name__ == "__main__":
    sys.exit(bench())
