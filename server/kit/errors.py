"""One error type hierarchy and one set of exception handlers, shared by every Chorus server.

Every error leaves the server in OpenAI's shape::

    {"error": {"message": str, "type": str, "param": str | None, "code": str | None}}
"""

from __future__ import annotations

import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

log = logging.getLogger("chorus.errors")


class ApiError(Exception):
    """An error with an HTTP status that is returned to the client in OpenAI's shape."""

    status_code = 400
    type = "invalid_request_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        """The JSON body: ``{"error": {"message", "type", "param", "code"}}``."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequestError(ApiError):
    """400: a field is missing, malformed or out of range."""


class InvalidAudioError(ApiError):
    """400: the uploaded file is not decodable audio."""

    code = "invalid_file_format"


class AuthenticationError(ApiError):
    """401: missing or wrong API key."""

    status_code = 401
    type = "authentication_error"
    code = "invalid_api_key"


class NotFoundError(ApiError):
    """404: unknown model or route."""

    status_code = 404
    code = "model_not_found"


class PayloadTooLargeError(ApiError):
    """413: the upload is larger than the configured limit."""

    status_code = 413
    code = "file_too_large"


class UnsupportedMediaTypeError(ApiError):
    """415: the request body is not ``multipart/form-data``."""

    status_code = 415
    code = "unsupported_media_type"


class OverloadedError(ApiError):
    """429: too many requests in flight or queued."""

    status_code = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class NotReadyError(ApiError):
    """503: models are still loading or warming up, or a backend is down."""

    status_code = 503
    type = "server_error"
    code = "not_ready"


class TimeoutError_(ApiError):
    """504: the request took longer than the configured timeout."""

    status_code = 504
    type = "server_error"
    code = "timeout"


def _json(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status_code, headers=err.headers)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return _json(exc)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    err = ApiError(str(exc.detail), code=None, headers=dict(exc.headers or {}))  # 405 keeps its Allow header
    err.status_code = exc.status_code
    if exc.status_code == 404:
        err.code = "not_found"
        err.message = f"No route for {request.method} {request.url.path}."
    elif exc.status_code == 405:
        err.code = "method_not_allowed"
    return _json(err)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    err = ApiError(f"Internal server error: {type(exc).__name__}", code="internal_error")
    err.status_code = 500
    err.type = "server_error"
    return _json(err)


EXCEPTION_HANDLERS = {
    ApiError: _api_error,
    HTTPException: _http_error,
    Exception: _unexpected,
}
"""Pass to ``Starlette(exception_handlers=...)``; Starlette looks handlers up by exception class."""
