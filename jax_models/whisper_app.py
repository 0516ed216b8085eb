"""The whisper server: OpenAI-compatible ``/v1/audio/transcriptions`` and ``/v1/audio/translations``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, FastAPI, Form
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.requests import Request

from jax_models import compile_cache
from server.core.formats import RENDERERS, TIMELESS_FORMATS
from server.kit.app import (
    AUDIO_ERRORS,
    Admission,
    ServerState,
    build_app,
    error_responses,
    model_router,
    text_responses,
)
from server.kit.deadline import run_with_deadline, stopper
from server.kit.errors import ApiError, InvalidRequestError, NotFoundError
from server.kit.protocol import (
    FORM,
    Transcription,
    TranscriptionVerbose,
    TranslationForm,
    WhisperTranscriptionForm,
)
from server.kit.settings import WhisperSettings
from server.kit.uploads import decode_upload, upload_route

log = logging.getLogger("chorus.whisper")


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


class EngineMetrics:
    """Prometheus collector of the engine's temperature fallback and decoder steps, read at each scrape.

    ``chorus_whisper_fallback_total{temperature}``: window decodes at a fallback temperature (a
    window that fails Whisper's thresholds at T=0 is decoded at every hotter one, 0.2 … 1.0, in
    one batch); ``chorus_whisper_fallback_kept_total{temperature}``: windows that fell back, by
    the temperature whose decode was kept (the lowest that passed, else 1.0);
    ``chorus_whisper_decode_steps_total``: decoder steps run, each over every row of its batch or
    slots (with continuous batching, fewer for the same windows: ``WhisperEngine.decode_steps``).

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
            "chorus_whisper_fallback",
            "Window decodes at a fallback temperature (after failing at T=0)",
            labels=["temperature"],
        )
        kept = CounterMetricFamily(
            "chorus_whisper_fallback_kept",
            "Windows that fell back, by the temperature whose decode was kept",
            labels=["temperature"],
        )
        for family, counts in ((decoded, stats["decoded"]), (kept, stats["kept"])):
            for t, n in sorted(counts.items()):
                family.add_metric([f"{t:g}"], n)
        yield decoded
        yield kept
        steps = CounterMetricFamily("chorus_whisper_decode_steps", "Decoder steps run (each over every row)")
        steps.add_metric([], getattr(engine, "decode_steps", 0))
        yield steps


def create_app(settings: WhisperSettings, engine: Any = None) -> FastAPI:
    """Build the whisper server.

    Args:
        settings: server settings (model, dtype, quantization, limits, keys).
        engine: an already loaded ``WhisperEngine`` (tests share one); when None the engine is
            loaded and warmed up in the lifespan, and ``/ready`` answers 503 until then.
    """
    state = ServerState("whisper")
    admission = Admission(settings.max_concurrent, settings.max_queue)
    holder: dict[str, Any] = {"engine": engine}
    state.registry.register(EngineMetrics(lambda: holder["engine"]))
    if engine is not None and not settings.warmup:
        state.ready, state.detail = True, "ready"  # the caller loaded (and warmed) the engine
    names = {settings.model, Path(settings.model).name, *settings.served_model_names}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
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

        def report(t: asyncio.Task[None]) -> None:
            if not t.cancelled() and t.exception() is not None:
                state.detail = f"failed to start: {t.exception()}"
                log.error("whisper server failed to start: %s", t.exception())

        task.add_done_callback(report)
        try:
            yield
        finally:
            if owned and holder["engine"] is not None:
                holder["engine"].close()

    async def run_engine(samples: Any, options: Any) -> Any:
        """``engine.transcribe`` in a worker thread under ``request_timeout_s``; the thread stops at the
        engine's next progress report (a finished window) once the client has its 504.

        Raises:
            TimeoutError_: past ``settings.request_timeout_s`` (504 with ``Retry-After``).
            InvalidRequestError: the engine refused the options (an unsupported language).
        """
        engine = holder["engine"]
        try:
            return await run_with_deadline(
                lambda stop: engine.transcribe(samples, options, progress=stopper(stop)), settings.request_timeout_s
            )
        except ValueError as exc:
            raise InvalidRequestError(str(exc), param="language") from None

    async def handle(request: Request, form: WhisperTranscriptionForm | TranslationForm, task: str) -> Response:
        state.require_ready()
        if form.model not in names:
            raise NotFoundError(
                f"The model '{form.model}' does not exist; this server serves {sorted(names)}.", param="model"
            )
        from jax_models.engine import TranscribeOptions

        # OpenAI returns words with verbose_json only; other formats need no alignment pass
        granularities = getattr(form, "timestamp_granularities", ())
        want_words = "word" in granularities and form.response_format == "verbose_json"
        language = form.language if isinstance(form, WhisperTranscriptionForm) else None
        options = TranscribeOptions(
            task=task,
            language=language,
            prompt=form.prompt,
            temperature=form.temperature,
            word_timestamps=want_words,
            without_timestamps=form.response_format in TIMELESS_FORMATS,
            temperature_fallback=settings.temperature_fallback,
        )
        async with admission:
            samples = await decode_upload(form.file, settings, request)
            transcript = await run_engine(samples, options)
        body, media_type = RENDERERS[form.response_format](transcript, words=want_words)
        if isinstance(body, dict):
            return JSONResponse(body)
        return PlainTextResponse(body, media_type=media_type)

    audio = APIRouter(route_class=upload_route(settings), tags=["audio"])
    ok = {200: {"model": Transcription | TranscriptionVerbose, "content": text_responses(*TRANSCRIPTION_TEXT_TYPES)}}

    @audio.post(
        "/v1/audio/transcriptions",
        summary="Transcribe audio (OpenAI audio.transcriptions).",
        response_class=JSONResponse,
        responses={**ok, **error_responses(*AUDIO_ERRORS)},
    )
    async def transcriptions(
        request: Request, form: Annotated[WhisperTranscriptionForm, Form(media_type=FORM)]
    ) -> Response:
        return await handle(request, form, "transcribe")

    @audio.post(
        "/v1/audio/translations",
        summary="Translate audio to English text (OpenAI audio.translations).",
        response_class=JSONResponse,
        responses={**ok, **error_responses(*AUDIO_ERRORS)},
    )
    async def translations(request: Request, form: Annotated[TranslationForm, Form(media_type=FORM)]) -> Response:
        return await handle(request, form, "translate")

    def model_card(name: str) -> dict[str, Any]:
        card: dict[str, Any] = {"id": name, "object": "model", "created": 0, "owned_by": "chorus"}
        if holder["engine"] is not None:
            card["chorus"] = holder["engine"].describe()
        return card

    return build_app(
        state,
        settings,
        title="Chorus whisper server",
        description="OpenAI-compatible transcription and translation (Whisper on JAX). Errors are OpenAI's shape.",
        lifespan=lifespan,
        routers=[audio, model_router(lambda: names, model_card)],
    )


TRANSCRIPTION_TEXT_TYPES = ("text/plain", "application/x-subrip", "text/vtt")
"""Media types of ``response_format`` text, srt and vtt (``server.core.formats``)."""

__all__ = ["create_app", "load_engine", "enable_compilation_cache", "ApiError"]
