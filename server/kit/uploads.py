"""Uploads: the multipart form read under the size limits, and the audio decoded under the
duration and time limits, each failure an OpenAI-shaped error."""

from __future__ import annotations

from dataclasses import dataclass

import anyio
import numpy as np
from starlette.datastructures import UploadFile
from starlette.requests import Request

from server.core.audio import (
    AudioDecodeError,
    AudioDecodeTimeoutError,
    AudioTooLongError,
    AudioTooShortError,
    decode_audio,
    duration_s,
)
from server.kit.errors import (
    ApiError,
    InvalidAudioError,
    InvalidRequestError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from server.kit.settings import ServerSettings

MAX_FORM_FIELDS = 64
SUPPORTED_AUDIO = "flac, m4a, mp3, mp4, mpeg, mpga, oga, ogg, wav, webm"


@dataclass
class Upload:
    """An uploaded audio file and the form's text fields."""

    data: bytes
    filename: str
    content_type: str | None
    fields: list[tuple[str, str]]


async def read_upload(
    request: Request, settings: ServerSettings, *, file_field: str = "file", max_field_bytes: int = 64 * 1024
) -> Upload:
    """Parse a ``multipart/form-data`` body into the file bytes and the text fields.

    Raises:
        UnsupportedMediaTypeError: the body is not multipart (415).
        PayloadTooLargeError: the body or the file is over ``settings.max_upload_mb`` (413).
        InvalidRequestError: no file part, or a malformed form (400).

    ``max_field_bytes`` bounds each text field (the router raises it for data-URL speaker references).
    """
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        raise UnsupportedMediaTypeError(
            "Requests to this endpoint must be multipart/form-data with a 'file' part.", param=file_field
        )
    limit = settings.max_upload_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + 64 * 1024:
        raise PayloadTooLargeError(
            f"Maximum content size limit ({limit} bytes) exceeded ({declared} bytes read).", param=file_field
        )
    try:
        form = await request.form(max_files=1, max_fields=MAX_FORM_FIELDS, max_part_size=max_field_bytes)
    except ApiError:
        raise
    except Exception as exc:  # multipart.MultipartParseError, starlette's HTTPException for limits
        detail = str(getattr(exc, "detail", exc))
        code = ("too_many_fields" if "Too many fields" in detail else "too_many_files" if "Too many files" in detail
                else "field_too_large" if "exceeded maximum size" in detail else None)
        raise InvalidRequestError(f"Could not parse the multipart form: {detail}", code=code) from exc
    try:
        upload = form.get(file_field)
        if not isinstance(upload, UploadFile):
            raise InvalidRequestError(f"Missing required parameter: '{file_field}'.", param=file_field)
        if upload.size is not None and upload.size > limit:
            raise PayloadTooLargeError(
                f"Maximum content size limit ({limit} bytes) exceeded ({upload.size} bytes read).",
                param=file_field,
            )
        data = await upload.read(limit + 1)
        if len(data) > limit:
            raise PayloadTooLargeError(
                f"Maximum content size limit ({limit} bytes) exceeded.", param=file_field
            )
        fields = [(k, v) for k, v in form.multi_items() if isinstance(v, str)]
        return Upload(data, upload.filename or "audio", upload.content_type, fields)
    finally:
        await form.close()  # spooled temporary files are removed here


async def decode_upload(upload: Upload, settings: ServerSettings, request: Request) -> np.ndarray:
    """Decode ``upload`` in a worker thread under the size, duration and time limits of ``settings``.

    Records the duration in ``request.scope["chorus.audio_seconds"]`` for the request log.

    Returns:
        float32 mono 16 kHz samples, shape ``(n,)``.

    Raises:
        InvalidRequestError: longer than ``settings.max_audio_s`` (400, ``code="audio_too_long"``).
        InvalidAudioError: not decodable (400, ``invalid_file_format``), shorter than 0.1 s (400,
            ``audio_too_short``), or decoding took longer than ``settings.decode_timeout_s`` (400,
            ``audio_decode_timeout``).
    """
    try:
        samples = await anyio.to_thread.run_sync(
            lambda: decode_audio(upload.data, max_duration_s=settings.max_audio_s, timeout_s=settings.decode_timeout_s)
        )
    except AudioTooLongError as exc:
        raise InvalidRequestError(str(exc), param="file", code="audio_too_long") from None
    except (AudioDecodeTimeoutError, AudioTooShortError) as exc:
        raise InvalidAudioError(str(exc), param="file", code=exc.code) from None
    except AudioDecodeError as exc:
        raise InvalidAudioError(f"Invalid file format ({upload.filename}): {exc} Supported: {SUPPORTED_AUDIO}.",
                                param="file", code=exc.code) from None
    request.scope["chorus.audio_seconds"] = duration_s(samples)
    return samples
