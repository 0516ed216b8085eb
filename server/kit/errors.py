"""One error type hierarchy and one table of exception handlers, shared by every Chorus server.

Every error leaves the server in OpenAI's shape::

    {"error": {"message": str, "type": str, "param": str | None, "code": str | None}}

FastAPI's request validation errors are answered here as 400 with ``param`` naming the first
offending field (never FastAPI's 422), and Starlette's HTTP errors (404, 405, 413) keep their
status and headers in the same shape.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

log = logging.getLogger("chorus.errors")

RETRY_AFTER_S = {429: "1", 503: "5", 504: "5"}
"""``Retry-After`` (seconds) sent with each retryable status unless the error names its own."""


class ApiError(Exception):
    """An error with an HTTP status that is returned to the client in OpenAI's shape.

    Args:
        message: what went wrong, for a person.
        param: the request field at fault (``file``, ``messages.0.role``), or None.
        code: a machine-readable reason (``invalid_file_format``); the class's default when None.
        headers: response headers; 429, 503 and 504 always carry ``Retry-After`` (``RETRY_AFTER_S``).
    """

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
        self.headers = dict(headers or {})

    def body(self) -> dict[str, dict[str, str | None]]:
        """The JSON body: ``{"error": {"message", "type", "param", "code"}}``."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        """The JSON response, with ``Retry-After`` on 429/503/504."""
        headers = dict(self.headers)
        if self.status_code in RETRY_AFTER_S:
            headers.setdefault("Retry-After", RETRY_AFTER_S[self.status_code])
        return JSONResponse(self.body(), status_code=self.status_code, headers=headers)


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


def api_error(
    status: int,
    message: str,
    *,
    type: str | None = None,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> ApiError:
    """An ``ApiError`` with any status (a backend's 4xx passed on, a 502): ``type`` defaults to
    ``server_error`` for 5xx and ``invalid_request_error`` otherwise."""
    err = ApiError(message, param=param, code=code, headers=headers)
    err.status_code = status
    err.type = type or ("server_error" if status >= 500 else "invalid_request_error")
    return err


def validation_error(errors: Sequence[Mapping[str, Any]]) -> InvalidRequestError:
    """The first of pydantic's (or FastAPI's) validation ``errors`` as a 400 naming the field.

    ``param`` is the field's dotted path without FastAPI's ``body``/``query`` prefix and without the
    ``[]`` of list fields (``timestamp_granularities.0``, ``messages.0.role``).
    """
    if not errors:
        return InvalidRequestError("Invalid request.")
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ())]
    if loc and loc[0] in ("body", "query", "path", "header", "cookie"):
        loc = loc[1:]
    param = ".".join(p.removesuffix("[]") for p in loc) or None
    kind = first.get("type")
    if kind == "json_invalid":
        return InvalidRequestError("The body must be a JSON object.")
    if kind == "missing":
        message = f"Missing required parameter: '{param}'."
    elif kind == "extra_forbidden":
        message = f"Unrecognized request argument supplied: '{param}'."
    elif param is None:
        message = f"Invalid request body: {first.get('msg')}."
    else:
        message = f"Invalid value for '{param}': {first.get('msg')}."
    return InvalidRequestError(message, param=param)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return exc.response()


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return validation_error(exc.errors()).response()


HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "file_too_large"}


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = str(exc.detail)
    if exc.status_code == 404:
        message = f"No route for {request.method} {request.url.path}."
    elif exc.status_code == 413:
        message = f"Maximum content size limit exceeded: {exc.detail}"
    err = api_error(
        exc.status_code, message, code=HTTP_CODES.get(exc.status_code), headers=dict(exc.headers or {})
    )  # 405 keeps its Allow header
    return err.response()


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return api_error(500, f"Internal server error: {type(exc).__name__}", code="internal_error").response()


Handler = Callable[[Request, Exception], Coroutine[Any, Any, Response]]

EXCEPTION_HANDLERS: dict[int | type[Exception], Handler] = {
    ApiError: _api_error,
    RequestValidationError: _validation_error,
    HTTPException: _http_error,
    Exception: _unexpected,
}
"""Pass to ``FastAPI(exception_handlers=...)``; handlers are looked up by exception class (the
most specific base wins, so FastAPI's own ``HTTPException`` lands in ``_http_error``)."""
