"""The whisper server: OpenAI-compatible ``/v1/audio/transcriptions`` and ``/v1/audio/translations``."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from jax_models import compile_cache
from server.core.formats import RENDERERS, TIMELESS_FORMATS
from server.kit import openapi
from server.kit.app import Admission, ServerState, build_app, model_routes, timed
from server.kit.errors import (
    ApiError,
    InvalidRequestError,
    NotFoundError,
    TimeoutError_,
)
from server.kit.protocol import WHISPER_LANGUAGES, TranscriptionRequest, TranslationRequest, parse_form
from server.kit.settings import WhisperSettings
from server.kit.uploads import decode_upload, read_upload

log = logging.getLogger("chorus.whisper")


class Cancelled(Exception):
    """Raised inside the engine's progress callback to stop a request whose client got its 504."""


def enable_compilation_cache(cache_dir: Path) -> Path:
    """Keep XLA executables on disk so a restart skips most of the warm-up compile.

    The directory is ``cache_dir/xla/<machine>-<digest of the CPU model and flags>``
    (``jax_models.compile_cache``), so another CPU compiles afresh instead of loading executables
    built for different instructions. Call before EasyDeL is imported. Returns the directory.
    """
    return compile_cache.enable(cache_dir)


def load_engine(settings: WhisperSettings):
    """Resolve ``settings.model`` (importing an embedded CT2 model once) and load the engine."""
    from jax_models.ct2_import import resolve_model
    from jax_models.engine import WhisperEngine

    path = resolve_model(settings.model, settings.cache_dir, progress=False)
    return WhisperEngine(
        path,
        dtype=settings.dtype,
        quantization=settings.quantization,
        batch_size=settings.batch_size,
        max_new_tokens=settings.max_new_tokens,
        workers=settings.engine_workers,
    )


class FallbackMetrics:
    """Prometheus collector of the engine's temperature fallback, read at each scrape.

    ``chorus_whisper_fallback_total{temperature}``: window decodes at a fallback temperature (a
    window that fails Whisper's thresholds at T=0 is decoded at every hotter one, 0.2 … 1.0, in
    one batch); ``chorus_whisper_fallback_kept_total{temperature}``: windows that fell back, by
    the temperature whose decode was kept (the lowest that passed, else 1.0).

    Args:
        engine: returns the engine (or None while it loads); an engine without
            ``fallback_stats()`` (a test fake) reports nothing.
    """

    def __init__(self, engine: Callable[[], object]) -> None:
        self._engine = engine

    def collect(self):
        from prometheus_client.core import CounterMetricFamily

        engine = self._engine()
        stats = engine.fallback_stats() if hasattr(engine, "fallback_stats") else {"decoded": {}, "kept": {}}
        decoded = CounterMetricFamily(
            "chorus_whisper_fallback", "Window decodes at a fallback temperature (after failing at T=0)",
            labels=["temperature"],
        )
        kept = CounterMetricFamily(
            "chorus_whisper_fallback_kept", "Windows that fell back, by the temperature whose decode was kept",
            labels=["temperature"],
        )
        for family, counts in ((decoded, stats["decoded"]), (kept, stats["kept"])):
            for t, n in sorted(counts.items()):
                family.add_metric([f"{t:g}"], n)
        yield decoded
        yield kept


def create_app(settings: WhisperSettings, engine=None) -> Starlette:
    """Build the whisper server.

    Args:
        settings: server settings (model, dtype, quantization, limits, keys).
        engine: an already loaded ``WhisperEngine`` (tests share one); when None the engine is
            loaded and warmed up in the lifespan, and ``/ready`` answers 503 until then.
    """
    state = ServerState("whisper")
    admission = Admission(settings.max_concurrent, settings.max_queue)
    holder: dict = {"engine": engine}
    state.registry.register(FallbackMetrics(lambda: holder["engine"]))
    if engine is not None and not settings.warmup:
        state.ready, state.detail = True, "ready"  # the caller loaded (and warmed) the engine
    names = {settings.model, Path(settings.model).name, *settings.served_model_names}

    @asynccontextmanager
    async def lifespan(app: Starlette):
        owned = holder["engine"] is None
        if state.ready:
            yield
            return

        def start() -> None:
            t0 = time.perf_counter()
            state.detail = "loading model"
            if holder["engine"] is None:
                holder["engine"] = load_engine(settings)
            if settings.warmup:
                state.detail = "compiling (warm-up)"
                holder["engine"].warmup(background=settings.background_compile)
            state.ready = True
            state.detail = "ready"
            log.info("whisper server ready in %.1fs: %s", time.perf_counter() - t0, holder["engine"].describe())

        task = asyncio.create_task(anyio.to_thread.run_sync(start))

        def report(t: asyncio.Task) -> None:
            if not t.cancelled() and t.exception() is not None:
                state.detail = f"failed to start: {t.exception()}"
                log.error("whisper server failed to start: %s", t.exception())

        task.add_done_callback(report)
        try:
            yield
        finally:
            if owned and holder["engine"] is not None:
                holder["engine"].close()

    async def run_engine(engine, samples, options):
        """``engine.transcribe`` in a worker thread under ``request_timeout_s``.

        At the deadline the client gets its 504 at once; the worker thread stops at the engine's next
        progress report (a finished window) instead of decoding the rest of the file.

        Raises:
            TimeoutError_: past ``settings.request_timeout_s`` (504 with ``Retry-After``).
            InvalidRequestError: the engine refused the options (an unsupported language).
        """
        stop = threading.Event()

        def progress(done_s: float) -> None:
            if stop.is_set():
                raise Cancelled()

        def work():
            return engine.transcribe(samples, options, progress=progress)

        try:
            with anyio.fail_after(settings.request_timeout_s):
                return await anyio.to_thread.run_sync(work, abandon_on_cancel=True)
        except TimeoutError:
            stop.set()
            raise TimeoutError_(
                f"The request took longer than {settings.request_timeout_s:g} s.", headers={"Retry-After": "5"}
            ) from None
        except ValueError as exc:
            raise InvalidRequestError(str(exc), param="language") from None
        finally:
            stop.set()  # also when the client went away (cancellation)

    async def handle(request: Request, task: str) -> Response:
        state.require_ready()
        upload = await read_upload(request, settings)
        model = TranslationRequest if task == "translate" else TranscriptionRequest
        req = parse_form(model, upload.fields)
        if req.model not in names:
            raise NotFoundError(
                f"The model '{req.model}' does not exist; this server serves {sorted(names)}.", param="model"
            )
        if req.response_format == "diarized_json":
            raise InvalidRequestError(
                "response_format 'diarized_json' needs speaker diarization: call the Chorus router "
                "(chorus serve router / chorus up), not the whisper server.",
                param="response_format",
            )
        if req.stream:
            raise InvalidRequestError("stream=true is not supported by the whisper server.", param="stream")
        from jax_models.engine import TranscribeOptions

        # OpenAI returns words with verbose_json only; other formats need no alignment pass
        want_words = "word" in req.timestamp_granularities and req.response_format == "verbose_json"

        options = TranscribeOptions(
            task=task, language=req.language if task == "transcribe" else None,
            prompt=req.prompt, temperature=req.temperature,
            word_timestamps=want_words, without_timestamps=req.response_format in TIMELESS_FORMATS,
        )
        engine = holder["engine"]
        async with admission:
            samples = await decode_upload(upload, settings, request)
            transcript = await run_engine(engine, samples, options)
        body, media_type = RENDERERS[req.response_format](transcript, words=want_words)
        if isinstance(body, dict):
            return JSONResponse(body)
        return PlainTextResponse(body, media_type=media_type)

    @timed(state, "/v1/audio/transcriptions")
    async def transcriptions(request: Request) -> Response:
        return await handle(request, "transcribe")

    @timed(state, "/v1/audio/translations")
    async def translations(request: Request) -> Response:
        return await handle(request, "translate")

    def model_card(name: str) -> dict:
        card = {"id": name, "object": "model", "created": 0, "owned_by": "chorus"}
        if holder["engine"] is not None:
            card["chorus"] = holder["engine"].describe()
        return card

    routes = [
        Route("/v1/audio/transcriptions", transcriptions, methods=["POST"]),
        Route("/v1/audio/translations", translations, methods=["POST"]),
        *model_routes(lambda: names, model_card),
    ]
    return build_app(state, settings, routes, lifespan, api_doc(sorted(names)))


def api_doc(model_names: list[str]) -> openapi.ApiDoc:
    """The whisper server's routes for ``/openapi.json``.

    Args:
        model_names: what the ``model`` field accepts (others get 404).
    """
    doc = openapi.ApiDoc(
        "Chorus whisper server",
        description="OpenAI-compatible transcription and translation (Whisper on JAX). Errors are OpenAI's shape.",
    )
    audio_ok = {**openapi.json_content({"anyOf": [openapi.ref("Transcription"), openapi.ref("TranscriptionVerbose")]}),
                **openapi.text_content(*openapi.TRANSCRIPTION_TEXT_TYPES)}
    formats = ["json", "text", "srt", "vtt", "verbose_json"]
    model = {"enum": model_names, "description": "whisper-1, or the model's configured name"}
    unused = ("stream", "chunking_strategy", "known_speaker_names", "known_speaker_references")
    doc.add("POST", "/v1/audio/transcriptions", summary="Transcribe audio (OpenAI audio.transcriptions).",
            ok=audio_ok, errors=openapi.audio_errors(),
            body=doc.form_body(TranscriptionRequest, exclude=unused, overrides={
                "model": model, "response_format": {"enum": formats},
                "language": {"enum": list(WHISPER_LANGUAGES), "description": "ISO-639-1; detected when absent"},
                "timestamp_granularities": {"description": "'word' adds word times (with verbose_json)"},
            }))
    doc.add("POST", "/v1/audio/translations", summary="Translate audio to English text (OpenAI audio.translations).",
            ok=audio_ok, errors=openapi.audio_errors(),
            body=doc.form_body(TranslationRequest, include=("model", "prompt", "response_format", "temperature"),
                               overrides={"model": model}))
    openapi.model_operations(doc)
    return doc

__all__ = ["create_app", "load_engine", "enable_compilation_cache", "ApiError"]
