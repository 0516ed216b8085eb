"""Uploads: the multipart form checked and read under the size limits before FastAPI validates it,
and the audio decoded under the duration and time limits, each failure an OpenAI-shaped error.

Every upload route of every server is an ``upload_route`` (FastAPI's ``route_class``), and every
decode goes through ``decode_bytes``; the apps hold no upload or decoding logic of their own.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import numpy as np
from fastapi import UploadFile
from fastapi.routing import APIRoute
from starlette.datastructures import FormData
from starlette.datastructures import UploadFile as StarletteUploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from server.core.audio import (
    AudioDecodeError,
    AudioTooLongError,
    decode_audio,
    duration_s,
)
from server.kit.errors import (
    InvalidAudioError,
    InvalidRequestError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from server.kit.settings import ServerSettings

MAX_FORM_FIELDS = 64
MAX_FIELD_BYTES = 64 * 1024
"""Default bound of one text field (the router raises it for data-URL speaker references)."""
FORM_OVERHEAD_BYTES = 64 * 1024
"""A declared ``Content-Length`` may exceed the file limit by this much (text fields, multipart framing)."""
SUPPORTED_AUDIO = "flac, m4a, mp3, mp4, mpeg, mpga, oga, ogg, wav, webm"
AUDIO_SECONDS = "chorus.audio_seconds"
"""Request-scope key: seconds of audio decoded for this request (the request log's RTFx)."""

# Starlette 1.10's MultiPartException messages, by the limit they report: the only way to tell the
# limits apart, since Request.form turns them all into one HTTPException(400).
_FORM_LIMIT_CODES = (
    ("Too many fields", "too_many_fields"),
    ("Too many files", "too_many_files"),
    ("exceeded maximum size", "field_too_large"),
)

RouteHandler = Callable[[Request], Coroutine[Any, Any, Response]]


async def read_form(
    request: Request, *, max_file_bytes: int, max_field_bytes: int = MAX_FIELD_BYTES, file_field: str = "file"
) -> FormData:
    """Parse the request's ``multipart/form-data`` body under the limits; Starlette caches the form, so
    FastAPI's own ``request.form()`` afterwards validates this one (and closes it after the response).

    Raises:
        UnsupportedMediaTypeError: the body is not multipart (415).
        PayloadTooLargeError: the declared body, or a file part, is over ``max_file_bytes`` (413).
        InvalidRequestError: a malformed form, more than ``MAX_FORM_FIELDS`` fields, more than one
            file, or a text field over ``max_field_bytes`` (400, ``code`` says which).
    """
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise UnsupportedMediaTypeError(
            f"Requests to this endpoint must be multipart/form-data with a '{file_field}' part.", param=file_field
        )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_file_bytes + FORM_OVERHEAD_BYTES:
        raise PayloadTooLargeError(
            f"Maximum content size limit ({max_file_bytes} bytes) exceeded ({declared} bytes read).", param=file_field
        )
    try:
        form = await request.form(max_files=1, max_fields=MAX_FORM_FIELDS, max_part_size=max_field_bytes)
    except HTTPException as exc:
        detail = str(exc.detail)
        code = next((c for text, c in _FORM_LIMIT_CODES if text in detail), None)
        raise InvalidRequestError(f"Could not parse the multipart form: {detail}", code=code) from None
    for name, value in form.multi_items():
        if isinstance(value, StarletteUploadFile) and value.size is not None and value.size > max_file_bytes:
            await form.close()
            raise PayloadTooLargeError(
                f"Maximum content size limit ({max_file_bytes} bytes) exceeded ({value.size} bytes read).", param=name
            )
    return form


def upload_route(settings: ServerSettings, *, max_field_bytes: int = MAX_FIELD_BYTES) -> type[APIRoute]:
    """A FastAPI route class for upload endpoints: ``read_form`` runs before FastAPI reads the body.

    Use as ``APIRouter(route_class=upload_route(settings))``; the endpoint then takes its form as a
    typed model (``Annotated[TranscriptionForm, Form(media_type=FORM)]``).
    """
    limit = settings.max_upload_bytes

    class UploadRoute(APIRoute):
        def get_route_handler(self) -> RouteHandler:
            handler = super().get_route_handler()

            async def checked(request: Request) -> Response:
                await read_form(request, max_file_bytes=limit, max_field_bytes=max_field_bytes)
                return await handler(request)

            return checked

    return UploadRoute


async def read_upload(file: UploadFile, settings: ServerSettings) -> bytes:
    """The bytes of an uploaded file (already size-checked by ``read_form``).

    Raises:
        PayloadTooLargeError: over ``settings.max_upload_bytes`` (a file without a known size).
    """
    limit = settings.max_upload_bytes
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLargeError(f"Maximum content size limit ({limit} bytes) exceeded.", param="file")
    return data


async def decode_bytes(
    data: bytes,
    settings: ServerSettings,
    request: Request,
    *,
    param: str = "file",
    name: str = "audio",
    max_s: float | None = None,
) -> np.ndarray:
    """Decode ``data`` in a worker thread under the duration and time limits of ``settings``.

    Adds the duration to ``request.scope[AUDIO_SECONDS]`` for the request log.

    Args:
        param: the request field the audio came from (named by the errors).
        name: the file's name, for the error message.
        max_s: a tighter duration limit than ``settings.max_audio_s`` (seconds).

    Returns:
        float32 mono 16 kHz samples, shape ``(n,)``.

    Raises:
        InvalidRequestError: longer than the limit (400, ``code="audio_too_long"``).
        InvalidAudioError: not decodable (400, ``invalid_file_format``, a plain message), shorter than
            0.1 s (400, ``audio_too_short``), or slower to decode than ``settings.decode_timeout_s``
            (400, ``audio_decode_timeout``).
    """
    limit = min(max_s or settings.max_audio_s, settings.max_audio_s)
    try:
        samples = await anyio.to_thread.run_sync(
            lambda: decode_audio(data, max_duration_s=limit, timeout_s=settings.decode_timeout_s)
        )
    except AudioTooLongError as exc:
        raise InvalidRequestError(str(exc), param=param, code="audio_too_long") from None
    except AudioDecodeError as exc:
        message = str(exc)
        if exc.code == "invalid_file_format":
            message = f"Invalid file format ({name}): {exc} Supported: {SUPPORTED_AUDIO}."
        raise InvalidAudioError(message, param=param, code=exc.code) from None
    request.scope[AUDIO_SECONDS] = request.scope.get(AUDIO_SECONDS, 0.0) + duration_s(samples)
    return samples


async def decode_upload(
    file: UploadFile, settings: ServerSettings, request: Request, *, max_s: float | None = None
) -> np.ndarray:
    """``read_upload`` then ``decode_bytes``: an uploaded file → float32 mono 16 kHz samples ``(n,)``."""
    data = await read_upload(file, settings)
    return await decode_bytes(data, settings, request, name=file.filename or "audio", max_s=max_s)
