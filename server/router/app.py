"""The router: the public OpenAI-compatible entry point in front of the whisper server and the sidecar.

``POST /v1/audio/transcriptions`` decodes the upload once, cuts it into chunks, fans them out to
both backends and answers in any ``response_format`` including ``diarized_json`` (and SSE when
``stream=true``); ``POST /v1/audio/translations`` is passed through to the whisper server.
``/ready`` answers 200 when both backends are ready.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import anyio
import httpx
import numpy as np
from fastapi import APIRouter, FastAPI, Form
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_client import Counter, Gauge
from pydantic import BaseModel
from starlette.requests import Request

from server.core.audio import AudioDecodeError, AudioTooLongError, decode_audio, duration_s, to_wav_bytes
from server.core.formats import RENDERERS, TIMELESS_FORMATS, encode_sse
from server.core.transcript import speaker_count_error
from server.core.vad import SileroVad, VadOptions
from server.kit.app import (
    AUDIO_ERRORS,
    Admission,
    ServerState,
    build_app,
    error_responses,
    model_router,
    text_responses,
)
from server.kit.errors import (
    ApiError,
    InvalidRequestError,
    NotFoundError,
    NotReadyError,
    TimeoutError_,
    api_error,
)
from server.kit.protocol import (
    FORM,
    Transcription,
    TranscriptionDiarized,
    TranscriptionForm,
    TranscriptionVerbose,
    TranslationForm,
)
from server.kit.settings import RouterSettings
from server.kit.uploads import decode_upload, read_upload, upload_route
from server.router.clients import (
    BackendError,
    BackendRejected,
    BackendTimeout,
    BackendUnavailable,
    SidecarClient,
    WhisperClient,
)
from server.router.pipeline import Job, Plan, Router

log = logging.getLogger("chorus.router")

MAX_REFERENCE_FIELD = 2_000_000  # bytes of one known_speaker_references[] data URL (10 s of wav ≈ 430 kB)
MAX_KNOWN_SPEAKERS = 4
REFERENCE_S = (2.0, 10.0)
REFERENCE_SLACK_S = 0.25


def backend_api_error(exc: BackendError) -> ApiError:
    """A backend failure as the error the router's client sees.

    whisper unreachable or not ready → 503 with ``Retry-After``; timeout → 504; a 4xx from the
    backend (unknown model, bad language, …) is passed on unchanged; anything else → 502.
    """
    if isinstance(exc, BackendUnavailable):
        return NotReadyError(f"The {exc.backend} server is unavailable: {exc.message}", code="backend_unavailable")
    if isinstance(exc, BackendTimeout):
        return TimeoutError_(f"The {exc.backend} server did not answer in time: {exc.message}")
    body = (exc.body or {}).get("error") or {}
    message = body.get("message") or exc.message
    if isinstance(exc, BackendRejected):
        return api_error(
            exc.status or 400,
            message,
            type=body.get("type") or "invalid_request_error",
            param=body.get("param"),
            code=body.get("code"),
        )
    return api_error(
        502,
        f"The {exc.backend} server failed: {message}",
        param=body.get("param"),
        code=body.get("code") or "backend_error",
    )


def decode_reference(url: str, index: int) -> bytes:
    """A ``known_speaker_references[]`` data URL → 16 kHz WAV bytes (2–10 s of audio).

    Raises:
        InvalidRequestError: not a base64 data URL, undecodable audio, or the wrong length.
    """
    param = "known_speaker_references"
    if not url.startswith("data:") or ";base64," not in url[:200]:
        raise InvalidRequestError(
            f"known_speaker_references[{index}] must be a base64 data URL (data:audio/wav;base64,...).", param=param
        )
    try:
        raw = base64.b64decode(url.split(";base64,", 1)[1], validate=False)
        samples = decode_audio(raw, max_duration_s=REFERENCE_S[1] + 5)
    except (binascii.Error, ValueError, AudioDecodeError, AudioTooLongError) as exc:
        raise InvalidRequestError(
            f"known_speaker_references[{index}] is not decodable audio: {exc}", param=param
        ) from None
    seconds = duration_s(samples)
    if not REFERENCE_S[0] - REFERENCE_SLACK_S <= seconds <= REFERENCE_S[1] + REFERENCE_SLACK_S:
        raise InvalidRequestError(
            f"known_speaker_references[{index}] is {seconds:.1f} s long; references must be "
            f"between {REFERENCE_S[0]:g} and {REFERENCE_S[1]:g} seconds.",
            param=param,
        )
    return to_wav_bytes(samples)


def wants_speakers(req: TranscriptionForm, settings: RouterSettings) -> bool:
    """Whether a transcription request is diarized, as OpenAI decides it: by the model.

    A diarize model (``settings.diarize_model_names``, ``gpt-4o-transcribe-diarize``) gets speakers
    in every format that can carry them (``settings.diarize_formats``: diarized_json, verbose_json
    ``speaker``, srt ``[A]``, vtt ``<v A>``; when streaming, diarized_json only); json and text,
    and every request naming a Whisper model (``whisper-1``), are plain transcriptions and never
    reach the sidecar.

    Raises:
        InvalidRequestError: ``diarized_json`` asked of a model that does not diarize (OpenAI
            offers it only with its diarize model).
    """
    diarize_model = req.model in settings.diarize_model_names
    if req.response_format == "diarized_json" and not diarize_model:
        raise InvalidRequestError(
            f"response_format 'diarized_json' needs a diarization model ({', '.join(settings.diarize_model_names)}); "
            f"'{req.model}' transcribes without speakers.",
            param="response_format",
        )
    if not diarize_model:
        return False
    if req.stream:
        return req.response_format == "diarized_json"
    return req.response_format in settings.diarize_formats


def create_app(
    settings: RouterSettings,
    *,
    vad: SileroVad | None = None,
    transports: dict[str, httpx.AsyncBaseTransport] | None = None,
) -> FastAPI:
    """Build the router.

    Args:
        settings: backend URLs, concurrency, timeouts, chunking and linking parameters, limits, keys.
        vad: a ``SileroVad`` to share (tests); by default one is created and loaded at start-up.
        transports: ``{"whisper": …, "sidecar": …}`` httpx transports to reach the backends through
            (tests pass ``httpx.ASGITransport`` of in-process apps); by default plain HTTP.
    """
    transports = transports or {}
    state = ServerState("router")
    admission = Admission(settings.max_concurrent, settings.max_queue)
    chunks_total = Counter("chorus_router_chunks", "Chunks sent to the whisper server", registry=state.registry)
    backend_errors = Counter(
        "chorus_router_backend_errors",
        "Backend failures by backend and kind",
        ["backend", "kind"],
        registry=state.registry,
    )
    degraded = Counter("chorus_router_degraded", "Responses returned with warnings", registry=state.registry)
    backend_up = Gauge(
        "chorus_router_backend_ready", "1 when the backend's /ready is 200", ["backend"], registry=state.registry
    )
    holder: dict[str, Any] = {
        "whisper_names": [],
        "backends": {"whisper": (False, "unchecked"), "sidecar": (False, "unchecked")},
    }
    default_vad = VadOptions(settings.vad_threshold, settings.vad_silence_ms, settings.vad_padding_ms)

    def clients() -> tuple[WhisperClient, SidecarClient]:
        w = WhisperClient(
            settings.whisper_url,
            concurrency=settings.whisper_concurrency,
            timeout_s=settings.whisper_timeout_s,
            connect_timeout_s=settings.connect_timeout_s,
            api_key=settings.backend_api_key,
            transport=transports.get("whisper"),
        )
        s = SidecarClient(
            settings.sidecar_url,
            concurrency=settings.sidecar_concurrency,
            timeout_s=settings.sidecar_timeout_s,
            connect_timeout_s=settings.connect_timeout_s,
            api_key=settings.backend_api_key,
            transport=transports.get("sidecar"),
        )
        return w, s

    async def poll_backends(router: Router) -> None:
        while True:
            checks = await asyncio.gather(router.whisper.ready(), router.sidecar.ready())
            if checks[1][0] and not holder["backends"]["sidecar"][0]:
                router.forget_sidecar()  # (re)started: its max_window_s may have changed
            for name, (ok, detail) in zip(("whisper", "sidecar"), checks):
                holder["backends"][name] = (ok, detail)
                backend_up.labels(name).set(1 if ok else 0)
            if checks[0][0] and not holder["whisper_names"]:
                with contextlib.suppress(BackendError):
                    holder["whisper_names"] = await router.whisper.model_names()
            vad_ok = holder.get("vad_loaded", False)
            state.ready = vad_ok and all(ok for ok, _ in checks)
            state.detail = (
                "ready"
                if state.ready
                else "; ".join(
                    [f"{n}: {'ready' if ok else d}" for n, (ok, d) in holder["backends"].items()]
                    + ([] if vad_ok else ["vad: loading"])
                )
            )
            await asyncio.sleep(settings.ready_poll_s)

    whisper, sidecar = clients()
    silero = vad or SileroVad()
    router = Router(
        whisper,
        sidecar,
        vad=silero,
        max_chunk_s=settings.max_chunk_s,
        window_s=settings.diarization_window_s,
        link_threshold=settings.link_threshold,
        known_threshold=settings.known_speaker_threshold,
        models_timeout_s=settings.connect_timeout_s,
    )
    holder["router"] = router

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async def load_vad() -> None:
            try:
                await anyio.to_thread.run_sync(silero.load)
                holder["vad_loaded"] = True
            except Exception as exc:  # fixed windows still work without it
                log.warning("silero-vad could not be loaded (%s): fixed windows will be used", exc)
                router.vad = None
                holder["vad_loaded"] = True

        tasks = [asyncio.create_task(load_vad()), asyncio.create_task(poll_backends(router))]
        try:
            yield
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await whisper.aclose()
            await sidecar.aclose()

    def whisper_model(name: str) -> str:
        return settings.whisper_model if name in settings.diarize_model_names else name

    def record(exc: BackendError) -> None:
        backend_errors.labels(exc.backend, type(exc).__name__).inc()

    async def prepare(req: TranscriptionForm) -> Job:
        known_names = holder["whisper_names"]
        if known_names and req.model not in known_names and req.model not in settings.diarize_model_names:
            raise NotFoundError(
                f"The model '{req.model}' does not exist; this server serves "
                f"{sorted({*known_names, *settings.diarize_model_names})}.",
                param="model",
            )
        try:
            vad_options = VadOptions.from_strategy(req.chunking_strategy, default_vad)
        except ValueError as exc:
            raise InvalidRequestError(
                f"Invalid value for 'chunking_strategy': {exc}.", param="chunking_strategy"
            ) from None
        if len(req.known_speaker_names) != len(req.known_speaker_references):
            raise InvalidRequestError(
                "known_speaker_names[] and known_speaker_references[] must have the same length.",
                param="known_speaker_names",
            )
        if len(req.known_speaker_names) > MAX_KNOWN_SPEAKERS:
            raise InvalidRequestError(
                f"At most {MAX_KNOWN_SPEAKERS} known speakers are supported.", param="known_speaker_names"
            )
        names = [n.strip() for n in req.known_speaker_names]
        if any(not n for n in names) or len(set(names)) != len(names):
            raise InvalidRequestError(
                "known_speaker_names[] must be distinct and non-empty.", param="known_speaker_names"
            )
        if (bad := speaker_count_error(req.num_speakers, req.min_speakers, req.max_speakers)) is not None:
            raise InvalidRequestError(bad[0], param=bad[1])  # as the sidecar would, before any work
        diarize = wants_speakers(req, settings)
        refs = []
        if names and diarize:
            refs = await anyio.to_thread.run_sync(
                lambda: [decode_reference(u, i) for i, u in enumerate(req.known_speaker_references)]
            )
        job = Job(
            model=whisper_model(req.model),
            task="transcribe",
            language=req.language,
            prompt=req.prompt,
            temperature=req.temperature,
            diarize=diarize,
            vad=vad_options,
            vad_requested=req.chunking_strategy is not None,
            known=tuple(zip(names, refs)),
            words="word" in req.timestamp_granularities and req.response_format == "verbose_json",
            timestamps=diarize or req.response_format not in TIMELESS_FORMATS,
            turn_spans=diarize and req.response_format == "diarized_json",
            num_speakers=req.num_speakers,
            min_speakers=req.min_speakers,
            max_speakers=req.max_speakers,
        )
        return job

    async def cut(router: Router, samples: np.ndarray, job: Job) -> Plan:
        """Chunks and diarization windows (as long as the sidecar takes, when diarizing)."""
        window_s = await router.diarization_window_s() if job.diarize else router.max_chunk_s
        return await anyio.to_thread.run_sync(
            functools.partial(router.plan, samples, job.vad, window_s, vad_requested=job.vad_requested)
        )

    async def transcriptions(request: Request, req: Annotated[TranscriptionForm, Form(media_type=FORM)]) -> Response:
        router: Router = holder["router"]
        job = await prepare(req)
        if req.stream:
            return await stream_response(request, router, req, job)
        async with admission:
            samples = await decode_upload(req.file, settings, request)
            plan = await cut(router, samples, job)
            chunks_total.inc(len(plan.chunks))
            t0 = time.perf_counter()
            try:
                transcript = await asyncio.wait_for(
                    router.transcribe(samples, plan, job), timeout=settings.request_timeout_s
                )
            except TimeoutError:
                raise TimeoutError_(f"The request took longer than {settings.request_timeout_s:g} s.") from None
            except BackendError as exc:
                record(exc)
                raise backend_api_error(exc) from None
        if transcript.warnings:
            degraded.inc()
            for w in transcript.warnings:
                if "sidecar" in w:
                    backend_errors.labels("sidecar", "degraded").inc()
                    break
        log.info(
            "transcribed %.1fs in %d chunks / %d windows (%s) in %.2fs; warnings=%d",
            plan.duration,
            len(plan.chunks),
            len(plan.windows),
            plan.method,
            time.perf_counter() - t0,
            len(transcript.warnings),
        )
        body, media_type = RENDERERS[req.response_format](transcript, words="word" in req.timestamp_granularities)
        if isinstance(body, dict):
            return JSONResponse(body)
        return PlainTextResponse(body, media_type=media_type)

    async def stream_response(request: Request, router: Router, req: TranscriptionForm, job: Job) -> Response:
        await admission.__aenter__()
        try:
            samples = await decode_upload(req.file, settings, request)
            plan = await cut(router, samples, job)
            chunks_total.inc(len(plan.chunks))
            events = router.stream(samples, plan, job, segments_events=job.diarize)
            try:  # the first event (or the whisper server's failure) before the 200 goes out
                first = await events.__anext__()
            except BackendError as exc:
                record(exc)
                await events.aclose()
                raise backend_api_error(exc) from None
        except BaseException:
            await admission.__aexit__(None, None, None)
            raise

        async def body() -> AsyncIterator[bytes]:
            try:
                yield encode_sse(first)
                async for ev in events:
                    yield encode_sse(ev)
            except BackendError as exc:
                record(exc)
                yield encode_sse(backend_api_error(exc).body())
            finally:
                await events.aclose()
                await admission.__aexit__(None, None, None)

        return StreamingResponse(
            body(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )

    async def translations(form: Annotated[TranslationForm, Form(media_type=FORM)]) -> Response:
        router: Router = holder["router"]
        data = await read_upload(form.file, settings)
        fields = [(k, whisper_model(v) if k == "model" else v) for k, v in form.fields()]
        async with admission:
            try:
                r = await router.whisper.forward(
                    "/v1/audio/translations", fields, form.file.filename or "audio", data, form.file.content_type
                )
            except BackendError as exc:
                record(exc)
                raise backend_api_error(exc) from None
        return Response(
            r.content, status_code=r.status_code, media_type=r.headers.get("content-type", "application/json")
        )

    def model_names() -> list[str]:
        return sorted({*holder["whisper_names"], *settings.diarize_model_names})

    def card(name: str) -> dict:
        return {
            "id": name,
            "object": "model",
            "created": 0,
            "owned_by": "chorus",
            "chorus": {"diarization": True, "whisper_model": whisper_model(name)},
        }

    async def backends() -> dict[str, BackendStatus]:
        return {
            n: BackendStatus(ready=ok, detail=d, url=getattr(settings, f"{n}_url"))
            for n, (ok, d) in holder["backends"].items()
        }

    transcription_ok = {
        200: {
            "model": Transcription | TranscriptionVerbose | TranscriptionDiarized,
            "content": text_responses(*TRANSCRIPTION_TEXT_TYPES, "text/event-stream"),
        }
    }
    translation_ok = {
        200: {"model": Transcription | TranscriptionVerbose, "content": text_responses(*TRANSCRIPTION_TEXT_TYPES)}
    }
    errors = error_responses(*AUDIO_ERRORS, 502)
    references = APIRouter(route_class=upload_route(settings, max_field_bytes=MAX_REFERENCE_FIELD), tags=["audio"])
    references.add_api_route(
        "/v1/audio/transcriptions",
        transcriptions,
        methods=["POST"],
        response_class=JSONResponse,
        summary="Transcribe (and diarize) audio of any length: VAD chunks fanned out to both backends.",
        responses={**transcription_ok, **errors},
    )
    audio = APIRouter(route_class=upload_route(settings), tags=["audio"])
    audio.add_api_route(
        "/v1/audio/translations",
        translations,
        methods=["POST"],
        response_class=JSONResponse,
        summary="Translate audio to English (passed to the whisper server).",
        responses={**translation_ok, **errors},
    )
    status = APIRouter(tags=["backends"])
    status.add_api_route(
        "/v1/backends",
        backends,
        methods=["GET"],
        summary="Readiness of the whisper server and the sidecar as the router sees them.",
    )
    return build_app(
        state,
        settings,
        title="Chorus router",
        description="OpenAI-compatible transcription with speaker diarization (diarized_json, SSE), in front of the "
        "whisper server and the torch sidecar. Errors are OpenAI's shape; a backend failure is 502/503/504.",
        lifespan=lifespan,
        routers=[references, audio, model_router(model_names, card), status],
    )


class BackendStatus(BaseModel):
    """One backend in ``GET /v1/backends``."""

    ready: bool
    detail: str
    url: str


TRANSCRIPTION_TEXT_TYPES = ("text/plain", "application/x-subrip", "text/vtt")
"""Media types of ``response_format`` text, srt and vtt (``server.core.formats``)."""

__all__ = ["create_app", "backend_api_error", "decode_reference"]
