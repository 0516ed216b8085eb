"""The torch sidecar's HTTP app: ``create_app(settings) -> FastAPI``.

Routes:
    POST /v1/diarize               multipart ``file`` (+ num_speakers, min_speakers, max_speakers,
                                   response_format=json|rttm, include_probabilities) → turns with
                                   confidence, speakers, fingerprints
    POST /v1/speaker-embeddings    multipart ``file`` → one L2-normalised fingerprint of the clip
    POST /v1/chat/completions      OpenAI chat with ``input_audio`` parts → Phi-4-multimodal
    POST /v1/audio/transcriptions  ``model=<phi-4 id>`` + ``task`` (transcribe, diarize, translate,
                                   summarize, describe, continue, qa) → Phi-4-multimodal
    GET  /v1/models                which backends and weights are loaded
    GET  /health /ready /metrics

The diarizer is loaded (and warmed up) in a thread by the lifespan, then ``/ready`` turns 200.
Phi-4 loads on first use. Heavy work runs in worker threads under ``Admission``, each request
with its own deadline, so a bad or slow request never disturbs the others.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, TypeVar

import anyio
import numpy as np
from fastapi import APIRouter, FastAPI, Form
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.requests import Request

from server.core.audio import SAMPLE_RATE
from server.kit.app import AUDIO_ERRORS, Admission, ServerState, build_app, error_responses, text_responses
from server.kit.deadline import run_with_deadline
from server.kit.errors import (
    InvalidAudioError,
    InvalidRequestError,
    NotFoundError,
    NotReadyError,
)
from server.kit.protocol import FORM, ModelList
from server.kit.uploads import decode_bytes, decode_upload, upload_route
from torch_models.diarization import Diarizer, OptionError
from torch_models.phi4 import GenerationOptions, Phi4LoadError, Phi4Manager, Phi4NotConfiguredError
from torch_models.prompts import get_task, max_new_tokens, user_prompt
from torch_models.protocol import (
    ChatCompletion,
    ChatCompletionRequest,
    DiarizationBody,
    DiarizeRequest,
    Phi4Transcription,
    Phi4TranscriptionRequest,
    SpeakerEmbedding,
    SpeakerEmbeddingRequest,
    chat_completion_body,
    diarization_body,
)
from torch_models.settings import SidecarSettings

log = logging.getLogger("chorus.sidecar")
T = TypeVar("T")

MAX_JSON_BODY_FACTOR = 1.4  # base64 inflates audio by 4/3


class ModelNotConfiguredError(NotFoundError):
    """404: the requested model is not configured on this sidecar (the message names the setting)."""

    code = "model_not_configured"


class ModelLoadFailedError(NotReadyError):
    """503: the configured model's weights could not be loaded."""

    code = "model_load_failed"


class Sidecar:
    """The engines behind the routes; ``diarizer`` is None until start-up has loaded it."""

    def __init__(self, settings: SidecarSettings, diarizer: Diarizer | None, phi4: Phi4Manager) -> None:
        self.settings = settings
        self.diarizer = diarizer
        self.phi4 = phi4
        self.admission = Admission(settings.max_concurrent, settings.max_queue)

    def phi4_names(self) -> set[str]:
        """Model names that select Phi-4 (the configured source, its last path part, the aliases)."""
        if not self.settings.phi4_model:
            return set(self.settings.phi4_served_names)
        src = self.settings.phi4_model.rstrip("/")
        return {src, src.rsplit("/", 1)[-1], *self.settings.phi4_served_names}

    def is_phi4_name(self, name: str) -> bool:
        """Whether a request's ``model`` means Phi-4 (a configured name, or any name with "phi-4"/"phi4")."""
        return name in self.phi4_names() or "phi-4" in name.lower() or "phi4" in name.lower()


def create_app(
    settings: SidecarSettings | None = None,
    *,
    diarizer: Diarizer | None = None,
    diarizer_factory: Callable[[SidecarSettings], Diarizer] | None = None,
    phi4: Phi4Manager | None = None,
) -> FastAPI:
    """The sidecar app.

    Args:
        settings: built once by the caller (defaults: ``SidecarSettings()`` from the environment).
        diarizer: an already built backend (tests); else ``diarizer_factory`` (default
            ``service.build_diarizer``) runs in a thread at start-up.
        phi4: a Phi-4 manager (tests); else one from the settings.
    """
    from torch_models import service

    settings = settings or SidecarSettings()
    state = ServerState("sidecar")
    sidecar = Sidecar(settings, diarizer, phi4 or service.build_phi4_manager(settings))
    factory = diarizer_factory or service.build_diarizer

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        """Load and warm the diarizer in a thread, then mark the server ready; run the Phi-4 reaper."""
        reaper = asyncio.create_task(sidecar.phi4.reaper())
        try:
            state.detail = "loading the diarizer"
            try:
                if sidecar.diarizer is None:
                    sidecar.diarizer = await anyio.to_thread.run_sync(factory, settings)
                if settings.warmup:
                    state.detail = "warming up"
                    await anyio.to_thread.run_sync(service.warm_up, sidecar.diarizer)
                if settings.phi4_preload and sidecar.phi4.configured:
                    state.detail = "loading Phi-4-multimodal"
                    await sidecar.phi4.ensure_loaded()
            except Exception as exc:  # keep serving /health and /ready with the reason
                log.exception("sidecar start-up failed")
                state.detail = f"start-up failed: {type(exc).__name__}: {exc}"
            else:
                state.ready = True
                state.detail = "ready"
                log.info("sidecar ready: %s", sidecar.diarizer.describe() if sidecar.diarizer else "-")
            yield
        finally:
            reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reaper

    app = build_app(
        state,
        settings,
        title="Chorus torch sidecar",
        description="Speaker diarization, speaker fingerprints and Phi-4-multimodal audio tasks. "
        "Errors are OpenAI's shape.",
        lifespan=lifespan,
        routers=routes(sidecar, state),
    )
    app.state.sidecar = sidecar
    return app


# ---------------------------------------------------------------------------------------------
# helpers


async def run_limited(sidecar: Sidecar, fn: Callable[..., T], *args: Any) -> T:
    """Run blocking ``fn(*args)`` in a worker thread under admission control and the deadline.

    Raises:
        OverloadedError: too many requests (429 with ``Retry-After``).
        TimeoutError_: over ``request_timeout_s`` (504 with ``Retry-After``); the thread finishes in the
            background.
    """
    async with sidecar.admission:
        return await run_with_deadline(lambda stop: fn(*args), sidecar.settings.request_timeout_s)


def require_diarizer(sidecar: Sidecar, state: ServerState) -> Diarizer:
    """The loaded diarizer, or ``NotReadyError`` (503) during start-up."""
    state.require_ready()
    assert sidecar.diarizer is not None
    return sidecar.diarizer


def check_phi4(sidecar: Sidecar, model_name: str) -> None:
    """Fail fast, before any audio is decoded, when ``model_name`` is not a configured Phi-4.

    Raises:
        NotFoundError: not a Phi-4 name (404).
        ModelNotConfiguredError: a Phi-4 name, but no ``--phi4-model`` configured (404).
    """
    if not sidecar.is_phi4_name(model_name):
        raise NotFoundError(
            f"The model '{model_name}' does not exist on this sidecar; it serves Phi-4-multimodal as "
            f"{sorted(sidecar.phi4_names())} (transcription with Whisper is the whisper server's job).",
            param="model",
        )
    if not sidecar.phi4.configured:
        raise ModelNotConfiguredError(
            "Phi-4-multimodal is not configured on this sidecar: start it with --phi4-model "
            "microsoft/Phi-4-multimodal-instruct (or a local directory), or set CHORUS_SIDECAR_PHI4_MODEL.",
            param="model",
        )


async def generate(sidecar: Sidecar, prompt: str, audios: list[np.ndarray], options: GenerationOptions):
    """Phi-4 generation in a worker thread, mapping manager errors to OpenAI-shaped ones."""
    try:
        async with sidecar.phi4.use() as phi:
            return await run_limited(sidecar, phi.generate, prompt, audios, options)
    except Phi4NotConfiguredError as exc:
        raise ModelNotConfiguredError(str(exc), param="model") from None
    except Phi4LoadError as exc:
        raise ModelLoadFailedError(str(exc), param="model", headers={"Retry-After": "60"}) from None
    except ValueError as exc:  # prompt/audio mismatch, context overflow
        raise InvalidRequestError(str(exc), param="messages") from None


# ---------------------------------------------------------------------------------------------
# routes


def routes(sidecar: Sidecar, state: ServerState) -> list[APIRouter]:
    """The ``/v1`` routes (see the module docstring)."""
    settings = sidecar.settings
    uploads = APIRouter(route_class=upload_route(settings))
    errors = error_responses(*AUDIO_ERRORS)

    @uploads.post(
        "/v1/diarize",
        summary="Who spoke when: turns with confidence, speakers and fingerprints.",
        tags=["diarization"],
        response_class=JSONResponse,
        responses={200: {"model": DiarizationBody, "content": text_responses("text/plain")}, **errors},
    )
    async def diarize(request: Request, req: Annotated[DiarizeRequest, Form(media_type=FORM)]) -> Response:
        """Multipart audio → turns, speakers, fingerprints (JSON) or RTTM (``response_format=rttm``)."""
        diarizer = require_diarizer(sidecar, state)
        options = req.to_options()
        try:
            options.validate(limit=diarizer.max_speakers)
        except OptionError as exc:
            raise InvalidRequestError(str(exc), param=exc.param) from None
        samples = await decode_upload(req.file, settings, request, max_s=settings.max_window_s)
        result = await run_limited(
            sidecar, lambda: diarizer.diarize(samples, options, include_probabilities=req.include_probabilities)
        )
        if req.response_format == "rttm":
            from torch_models.diarization import to_rttm

            filename = req.file.filename or "audio"
            stem = filename.rsplit("/", 1)[-1].rsplit(".", 1)[0] or "audio"
            return PlainTextResponse(to_rttm(result, stem), media_type="text/plain")
        return JSONResponse(diarization_body(result, include_probabilities=req.include_probabilities))

    @uploads.post(
        "/v1/speaker-embeddings",
        summary="One unit-norm speaker fingerprint of a clip.",
        tags=["diarization"],
        response_class=JSONResponse,
        responses={200: {"model": SpeakerEmbedding}, **errors},
    )
    async def speaker_embeddings(
        request: Request, req: Annotated[SpeakerEmbeddingRequest, Form(media_type=FORM)]
    ) -> Response:
        """One clip (at least ``min_fingerprint_s``) → one unit-norm vector."""
        diarizer = require_diarizer(sidecar, state)
        samples = await decode_upload(req.file, settings, request)
        seconds = len(samples) / SAMPLE_RATE
        if seconds < settings.min_fingerprint_s:
            raise InvalidAudioError(
                f"The clip has {seconds:.2f} s of audio; a fingerprint needs at least "
                f"{settings.min_fingerprint_s:g} s.",
                param="file",
                code="audio_too_short",
            )
        vector = await run_limited(sidecar, diarizer.embedder.embed, samples)
        return JSONResponse(
            {
                "object": "speaker_embedding",
                "model": diarizer.embedder.name,
                "dim": int(len(vector)),
                "duration": round(seconds, 3),
                "embedding": [round(float(x), 6) for x in vector],
            }
        )

    @uploads.post(
        "/v1/audio/transcriptions",
        tags=["phi-4"],
        response_class=JSONResponse,
        summary="Phi-4-multimodal audio tasks (transcribe, diarize, translate, summarize, describe, "
        "continue, qa) on one clip.",
        responses={200: {"model": Phi4Transcription, "content": text_responses("text/plain")}, **errors},
    )
    async def transcriptions(
        request: Request, req: Annotated[Phi4TranscriptionRequest, Form(media_type=FORM)]
    ) -> Response:
        """A Phi-4 model: one clip + a named task and template."""
        state.require_ready()
        if req.stream:
            raise InvalidRequestError("stream=true is not supported by the sidecar.", param="stream")
        check_phi4(sidecar, req.model)
        task = get_task(req.task)
        fields = {"language": req.language, "question": req.prompt}
        try:
            instruction = task.render(req.template, **fields)
        except KeyError as exc:
            raise InvalidRequestError(str(exc.args[0]), param="template") from None
        except ValueError as exc:
            param = "language" if "language" in str(exc) else "prompt"
            raise InvalidRequestError(f"{exc} (send it as '{param}').", param=param) from None
        if req.prompt and req.task != "qa":
            instruction = f"{instruction} Context: {req.prompt}"
        samples = await decode_upload(req.file, settings, request, max_s=settings.phi4_max_audio_s)
        duration = len(samples) / SAMPLE_RATE
        budget = req.max_tokens or max_new_tokens(task, duration, cap=settings.phi4_max_new_tokens)
        options = GenerationOptions(
            min(budget, settings.phi4_max_new_tokens), task.temperature if req.temperature is None else req.temperature
        )
        generation = await generate(sidecar, user_prompt(instruction), [samples], options)
        if req.response_format == "text":
            return PlainTextResponse(generation.text)
        body: dict[str, Any] = {
            "text": generation.text,
            "task": req.task,
            "template": req.template or task.default_template,
        }
        if req.task == "diarize":
            from torch_models.prompts import parse_diarized_text

            body["segments"] = parse_diarized_text(generation.text)
        body["usage"] = {
            "type": "duration",
            "seconds": round(duration, 3),
            "input_tokens": generation.prompt_tokens,
            "output_tokens": generation.completion_tokens,
        }
        return JSONResponse(body)

    chat = APIRouter(tags=["phi-4"])

    @chat.post(
        "/v1/chat/completions",
        summary="OpenAI chat with input_audio parts, answered by Phi-4-multimodal.",
        response_class=JSONResponse,
        responses={200: {"model": ChatCompletion}, **errors},
        max_body_size=int(settings.max_upload_bytes * MAX_JSON_BODY_FACTOR),
    )
    async def chat_completions(request: Request, req: ChatCompletionRequest) -> Response:
        """Messages with text and ``input_audio`` parts → Phi-4's answer."""
        state.require_ready()
        check_phi4(sidecar, req.model)
        if req.stream:
            raise InvalidRequestError(
                "stream=true is not supported by the sidecar yet; send stream=false.", param="stream"
            )
        prompt, audios = "", []
        for i, message in enumerate(req.messages):
            role = "system" if message.role == "developer" else message.role
            parts = [message.content] if isinstance(message.content, str) else (message.content or [])
            text = ""
            for j, part in enumerate(parts):
                where = f"messages.{i}.content.{j}"
                if isinstance(part, str):
                    text += part
                elif part.type == "text":
                    text += part.text or ""
                elif part.type == "input_audio":
                    if part.input_audio is None:
                        raise InvalidRequestError(
                            f"Missing required parameter: '{where}.input_audio'.", param=f"{where}.input_audio"
                        )
                    try:
                        data = base64.b64decode(part.input_audio.data, validate=True)
                    except (binascii.Error, ValueError):
                        raise InvalidRequestError(
                            "input_audio.data is not valid base64.", param=f"{where}.input_audio.data"
                        ) from None
                    audios.append(
                        await decode_bytes(
                            data, settings, request, param=f"{where}.input_audio.data", max_s=settings.phi4_max_audio_s
                        )
                    )
                    text += "<|audio|>"
                else:
                    raise InvalidRequestError(
                        f"Content parts of type '{part.type}' are not supported; use 'text' or 'input_audio'.",
                        param=f"{where}.type",
                    )
            prompt += f"<|{role}|>{text}<|end|>"
        prompt += "<|assistant|>"
        audio_s = sum(len(a) for a in audios) / SAMPLE_RATE
        requested = req.max_completion_tokens or req.max_tokens
        task = get_task("transcribe")
        budget = requested or (max_new_tokens(task, audio_s, cap=settings.phi4_max_new_tokens) + 256)
        options = GenerationOptions(
            min(budget, settings.phi4_max_new_tokens),
            req.temperature if req.temperature is not None else 0.0,
            req.top_p or 1.0,
        )
        generation = await generate(sidecar, prompt, audios, options)
        return JSONResponse(chat_completion_body(req.model, generation))

    @chat.get(
        "/v1/models",
        summary="The diarizer, the speaker embedder and Phi-4, with status.",
        tags=["models"],
        response_model=ModelList,
    )
    async def models() -> JSONResponse:
        """The diarizer, the speaker embedder and Phi-4, with weights and status."""
        created = int(time.time())
        diarizer = sidecar.diarizer
        if diarizer is not None:
            info = diarizer.describe()
            diar = {
                "id": "diarization",
                "object": "model",
                "created": created,
                "owned_by": "chorus",
                "status": "ready" if state.ready else state.detail,
                **info,
                "max_window_s": settings.max_window_s,
            }
            emb = {
                "id": "speaker-embedding",
                "object": "model",
                "created": created,
                "owned_by": "chorus",
                "status": "ready" if state.ready else state.detail,
                "weights": info.get("embedder"),
                "dim": info.get("embedding_dim"),
            }
        else:
            diar = {
                "id": "diarization",
                "object": "model",
                "created": created,
                "owned_by": "chorus",
                "backend": settings.diarizer,
                "status": state.detail,
                "max_window_s": settings.max_window_s,
            }
            emb = {
                "id": "speaker-embedding",
                "object": "model",
                "created": created,
                "owned_by": "chorus",
                "status": state.detail,
            }
        phi = {
            "id": settings.phi4_model or "phi-4-multimodal",
            "object": "model",
            "created": created,
            "owned_by": "microsoft",
            "status": sidecar.phi4.status(),
            "aliases": sorted(sidecar.phi4_names()),
        }
        if not settings.phi4_model:
            phi["hint"] = "start the sidecar with --phi4-model (CHORUS_SIDECAR_PHI4_MODEL) to enable it"
        return JSONResponse({"object": "list", "data": [diar, emb, phi]})

    return [uploads, chat]
