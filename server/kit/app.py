"""The FastAPI app every Chorus server is built on: API keys, admission, the request log and
metrics, ``/health`` ``/ready`` ``/metrics`` ``/v1/models``, OpenAI-shaped errors from one handler
table, the generated ``/openapi.json`` and ``/docs``, and running under uvicorn with a graceful drain."""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import signal
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.middleware import Middleware
from starlette.responses import Response
from starlette.types import ASGIApp, Lifespan, Message, Receive, Scope, Send

from server.kit.errors import (
    EXCEPTION_HANDLERS,
    RETRY_AFTER_S,
    AuthenticationError,
    NotFoundError,
    NotReadyError,
    OverloadedError,
)
from server.kit.protocol import ErrorResponse, Health, Model, ModelList, Ready
from server.kit.settings import ServerSettings
from server.kit.uploads import AUDIO_SECONDS

log = logging.getLogger("chorus.http")

OPEN_PATHS = frozenset({"/health", "/ready", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect"})
"""Paths served without an API key, and left out of the request log."""

ERROR_STATUS = {
    400: "A field is missing, malformed or out of range, or the audio cannot be decoded (`param` names the field).",
    401: "Missing or wrong API key (`Authorization: Bearer <key>`).",
    404: "Unknown model.",
    413: "The upload is larger than the limit.",
    415: "The body is not of the media type this endpoint takes.",
    429: "Too many requests in flight and queued; retry after `Retry-After` seconds.",
    502: "A backend failed.",
    503: "Not ready (model loading or warming up), or a backend is down; retry after `Retry-After` seconds.",
    504: "The request took longer than the server's deadline; retry after `Retry-After` seconds.",
}
RETRY_AFTER_HEADER = {"Retry-After": {"schema": {"type": "string"}, "description": "seconds to wait"}}
AUDIO_ERRORS = (400, 404, 413, 415, 429, 503, 504)
"""The statuses every audio upload endpoint can answer."""


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for ``statuses``, each with OpenAI's error body (and ``Retry-After`` on
    429/503/504, which ``ApiError.response`` always sends)."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {"model": ErrorResponse, "description": ERROR_STATUS[status]}
        if status in (429, 503, 504):
            entry["headers"] = RETRY_AFTER_HEADER
        out[status] = entry
    return out


SSE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "event": {"type": "string"},
        "data": {"type": "string", "contentMediaType": "application/json"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
}
"""One Server-Sent Event (``data:`` a JSON ``transcript.text.*`` event), OpenAPI 3.2's ``itemSchema``
shape for ``text/event-stream``: validators check each event against it, not the stream as a string."""


def text_responses(*media_types: str) -> dict[str, dict[str, Any]]:
    """OpenAPI ``content`` of plain-text bodies (``text/plain``, ``text/vtt`` …), each a string;
    ``text/event-stream`` is described per event (``itemSchema``: ``SSE_EVENT_SCHEMA``)."""
    return {
        m: {"itemSchema": SSE_EVENT_SCHEMA} if m == "text/event-stream" else {"schema": {"type": "string"}}
        for m in media_types
    }


class ApiKeyMiddleware:
    """Rejects requests without ``Authorization: Bearer <key>`` for one of ``keys`` (401), before
    anything is read of the body. ``OPEN_PATHS`` stay open. Keys are compared in constant time."""

    def __init__(self, app: ASGIApp, keys: Sequence[str]) -> None:
        self.app = app
        self.keys = [k.encode() for k in keys if k]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization", b"")
        token = header[7:].strip() if header[:7].lower() == b"bearer " else b""
        if not any(hmac.compare_digest(token, k) for k in self.keys):
            err = AuthenticationError(
                "Incorrect API key provided." if token else "Missing API key: send 'Authorization: Bearer <key>'."
            )
            await err.response()(scope, receive, send)
            return
        await self.app(scope, receive, send)


class Admission:
    """Bounds concurrent work (``max_concurrent``) and the waiting line (``max_queue``).

    ``async with admission:`` waits for a slot or raises ``OverloadedError`` (429 with
    ``Retry-After``) when the line is full.
    """

    def __init__(self, max_concurrent: int, max_queue: int) -> None:
        self._sem = asyncio.Semaphore(max_concurrent)
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self.waiting = 0
        self.active = 0

    async def __aenter__(self) -> None:
        if self._sem.locked() and self.waiting >= self.max_queue:
            raise OverloadedError("The server is at capacity; retry after a short wait.")
        self.waiting += 1
        try:
            await self._sem.acquire()
        finally:
            self.waiting -= 1
        self.active += 1

    async def __aexit__(self, *exc: object) -> None:
        self.active -= 1
        self._sem.release()


@dataclass
class ServerState:
    """Readiness and metrics of one server process."""

    name: str
    ready: bool = False
    detail: str = "starting"
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.requests = Counter(
            "chorus_requests", "Requests by route and status", ["route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "chorus_request_seconds",
            "Request wall time (s)",
            ["route"],
            registry=self.registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600),
        )
        self.audio_seconds = Counter(
            "chorus_audio_seconds", "Seconds of audio processed", ["route"], registry=self.registry
        )

    def require_ready(self) -> None:
        """Raises ``NotReadyError`` (503 with ``Retry-After``) until start-up (model load and warm-up) finished."""
        if not self.ready:
            raise NotReadyError(f"The {self.name} server is not ready yet ({self.detail}).")


class RequestLog:
    """Counts, times and logs (one line, with duration and RTFx) every request to an API route.

    The route is the matched template (``/v1/models/{model:path}``); ``OPEN_PATHS`` and unmatched
    paths are not logged. A streamed response is timed to its last byte.
    """

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None)
            if route is not None:
                self.record(route, scope["method"], status, time.perf_counter() - t0, scope.get(AUDIO_SECONDS))

    def record(self, route: str, method: str, status: int, wall_s: float, audio_s: float | None) -> None:
        """Count and time one request, and log it."""
        self.state.requests.labels(route, str(status)).inc()
        self.state.latency.labels(route).observe(wall_s)
        rtfx = f" rtfx={audio_s / wall_s:.1f}" if audio_s and wall_s > 0 else ""
        log.info(
            "%s %s status=%d wall=%.3fs audio=%ss%s",
            method,
            route,
            status,
            wall_s,
            f"{audio_s:.1f}" if audio_s else "-",
            rtfx,
        )
        if audio_s:
            self.state.audio_seconds.labels(route).inc(audio_s)


def health_router(state: ServerState) -> APIRouter:
    """``GET /health`` (liveness), ``/ready`` (200 only once warmed up), ``/metrics`` (Prometheus)."""
    router = APIRouter(tags=["health"])

    @router.get("/health", summary="Liveness: the process answers.")
    async def health() -> Health:
        return Health(status="ok", server=state.name)

    @router.get(
        "/ready",
        summary="Readiness: 200 once models are loaded and warmed up, else 503.",
        responses={
            503: {"model": Ready, "description": "Not ready yet (the body says why).", "headers": RETRY_AFTER_HEADER}
        },
    )
    async def ready() -> JSONResponse:
        body = Ready(ready=state.ready, server=state.name, detail=state.detail)
        if state.ready:
            return JSONResponse(body.model_dump())
        return JSONResponse(body.model_dump(), status_code=503, headers={"Retry-After": RETRY_AFTER_S[503]})

    @router.get(
        "/metrics",
        summary="Prometheus metrics.",
        response_class=Response,
        responses={200: {"content": text_responses("text/plain")}},
    )
    async def metrics() -> Response:
        return Response(generate_latest(state.registry), media_type=CONTENT_TYPE_LATEST)

    return router


def model_router(names: Callable[[], Iterable[str]], card: Callable[[str], dict[str, Any]]) -> APIRouter:
    """``GET /v1/models`` and ``GET /v1/models/{id}`` in OpenAI's shape.

    Args:
        names: returns the model ids served now (called per request: names may change after start-up).
        card: builds one model object (``{"id", "object": "model", "created", "owned_by", …}``).
    """
    router = APIRouter(tags=["models"])

    @router.get("/v1/models", summary="The models this server serves.", response_model=ModelList)
    async def list_models() -> JSONResponse:
        return JSONResponse({"object": "list", "data": [card(n) for n in sorted(names())]})

    @router.get("/v1/models/{model:path}", summary="One model.", response_model=Model, responses=error_responses(404))
    async def get_model(model: str) -> JSONResponse:
        if model not in set(names()):
            raise NotFoundError(f"The model '{model}' does not exist.", param="model")
        return JSONResponse(card(model))

    return router


def openapi_document(app: FastAPI, *, secured: bool) -> dict[str, Any]:
    """FastAPI's OpenAPI document of ``app``, made true to how Chorus answers.

    FastAPI's 422 responses go (validation errors are 400 in OpenAI's shape, declared by each route);
    with API keys, bearer authentication and a 401 response are added to every route outside
    ``OPEN_PATHS``, and those are marked open (``security: []``).
    """
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
    if secured:
        doc["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer", "description": "one of the server's API keys"}
        }
        doc["security"] = [{"bearer": []}]
        error_schema = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in error_schema.pop("$defs", {}).items():
            schemas.setdefault(name, sub)
        schemas.setdefault("ErrorResponse", error_schema)
    for path, operations in doc.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            if secured and path in OPEN_PATHS:
                operation["security"] = []
            elif secured:
                responses["401"] = {
                    "description": ERROR_STATUS[401],
                    "content": {"application/json": {"schema": error_ref}},
                }
    return doc


def build_app(
    state: ServerState,
    settings: ServerSettings,
    *,
    title: str,
    description: str,
    lifespan: Lifespan[FastAPI] | None,
    routers: Sequence[APIRouter],
) -> FastAPI:
    """A Chorus server: ``routers`` plus ``/health``, ``/ready``, ``/metrics``, ``/openapi.json`` and
    ``/docs``, OpenAI-shaped errors (``server.kit.errors.EXCEPTION_HANDLERS``), API keys from
    ``settings.api_keys`` and the request log.

    Args:
        state: readiness and metrics; kept as ``app.state.chorus``.
        lifespan: loads models at start-up (``/ready`` answers 503 until ``state.ready``).
        routers: the server's own routes (upload routes built with ``upload_route``).
    """
    app = FastAPI(
        title=title,
        description=description,
        version="0.1.0",
        lifespan=lifespan,
        redoc_url=None,
        exception_handlers=dict(EXCEPTION_HANDLERS),
        middleware=[Middleware(ApiKeyMiddleware, keys=settings.api_keys), Middleware(RequestLog, state=state)],
    )
    for router in (*routers, health_router(state)):
        app.include_router(router)
    secured = any(settings.api_keys)
    document: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if not document:
            document.update(openapi_document(app, secured=secured))
        return document

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to customise the document
    app.state.chorus = state
    return app


def configure_logging(level: str) -> None:
    """One log format on stderr for a server process: Chorus's loggers and uvicorn's alike.

    ``level`` is a ``logging`` level name (``info``, ``WARNING``, …). httpx/httpcore stay at WARNING or
    above: one INFO line per call the router makes to a backend (and per ``/ready`` poll at start-up)
    drowned the request log; failures still surface as warnings from ``chorus.clients``.
    """
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def uvicorn_server(app: ASGIApp, settings: ServerSettings) -> Any:
    """The ``uvicorn.Server`` that ``serve`` runs.

    uvicorn's access log is off: it wrote a line for every ``/ready`` poll (1,238 during one start-up
    under ``chorus up``); the request log is ``RequestLog``'s one line per API request, with its
    duration and RTFx. uvicorn's own lines go through the root logger (:func:`configure_logging`):
    with its default ``log_config`` uvicorn (0.54) runs ``logging.config.dictConfig``, which closes
    every handler already installed, absl's among them, and absl's ``PythonHandler.close`` closes
    its stream when that is not the current ``sys.stderr``.
    """
    import uvicorn

    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,
        timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout_s),
        access_log=False,
    )
    return uvicorn.Server(config)


def serve(app: ASGIApp, settings: ServerSettings) -> int:
    """Run ``app`` with uvicorn on ``settings.host:port`` until SIGTERM or SIGINT, then drain.

    On the signal uvicorn closes the listening socket (new connections are refused), closes idle
    keep-alive connections, waits up to ``settings.shutdown_timeout_s`` for requests in flight to
    finish, cancels what is left, and runs the app's lifespan shutdown (the whisper server stops its
    engine's scheduler there).

    Returns:
        The process exit code: 0 after a drained stop; uvicorn itself exits 3 when start-up fails.
    """
    server = uvicorn_server(app, settings)
    # uvicorn re-raises the signal it caught once it has shut down, to the handler in force before it
    # started; a no-op handler there turns the drained stop into a normal return (exit 0) instead of
    # a death by SIGTERM (-15) or a KeyboardInterrupt traceback.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
