"""HTTP pieces every Chorus server composes: uploads, limits, auth, health, readiness, metrics,
the OpenAPI document, and running under uvicorn with a graceful drain."""

from __future__ import annotations

import asyncio
import hmac
import logging
import signal
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from server.kit.errors import (
    EXCEPTION_HANDLERS,
    ApiError,
    AuthenticationError,
    NotFoundError,
    NotReadyError,
    OverloadedError,
)
from server.kit.openapi import ApiDoc, standard_operations
from server.kit.settings import ServerSettings

log = logging.getLogger("chorus.http")

OPEN_PATHS = frozenset({"/health", "/ready", "/metrics", "/openapi.json"})


class ApiKeyMiddleware:
    """Rejects requests without ``Authorization: Bearer <key>`` for one of ``keys`` (401).

    Health, readiness and metrics stay open. Keys are compared in constant time.
    """

    def __init__(self, app: ASGIApp, keys: list[str]) -> None:
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
            await JSONResponse(err.body(), status_code=401)(scope, receive, send)
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
            raise OverloadedError(
                "The server is at capacity; retry after a short wait.", headers={"Retry-After": "1"}
            )
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
            "chorus_request_seconds", "Request wall time (s)", ["route"], registry=self.registry,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600),
        )
        self.audio_seconds = Counter(
            "chorus_audio_seconds", "Seconds of audio processed", ["route"], registry=self.registry
        )

    def require_ready(self) -> None:
        """Raises ``NotReadyError`` (503) until start-up (model load and warm-up) finished."""
        if not self.ready:
            raise NotReadyError(f"The {self.name} server is not ready yet ({self.detail}).",
                                headers={"Retry-After": "5"})


def health_routes(state: ServerState) -> list[Route]:
    """``GET /health`` (liveness), ``/ready`` (200 only once warmed up), ``/metrics`` (Prometheus)."""

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "server": state.name})

    async def ready(request: Request) -> Response:
        body = {"ready": state.ready, "server": state.name, "detail": state.detail}
        return JSONResponse(body, status_code=200 if state.ready else 503)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(state.registry), media_type=CONTENT_TYPE_LATEST)

    return [
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]


def timed(state: ServerState, route: str) -> Callable[[Callable[[Request], Awaitable[Response]]], Callable]:
    """Wrap an endpoint: count it by status, time it, and log one line per request."""

    def wrap(fn: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            t0 = time.perf_counter()
            status = 500
            try:
                response = await fn(request)
                status = response.status_code
                return response
            except ApiError as exc:
                status = exc.status_code
                raise
            finally:
                dt = time.perf_counter() - t0
                state.requests.labels(route, str(status)).inc()
                state.latency.labels(route).observe(dt)
                audio_s = request.scope.get("chorus.audio_seconds")
                rtfx = f" rtfx={audio_s / dt:.1f}" if audio_s and dt > 0 else ""
                log.info("%s %s status=%d wall=%.3fs audio=%ss%s", request.method, route, status, dt,
                         f"{audio_s:.1f}" if audio_s else "-", rtfx)
                if audio_s:
                    state.audio_seconds.labels(route).inc(audio_s)

        endpoint.__name__ = getattr(fn, "__name__", route)
        return endpoint

    return wrap


def model_routes(names: Callable[[], Iterable[str]], card: Callable[[str], dict]) -> list[Route]:
    """``GET /v1/models`` and ``GET /v1/models/{id}`` in OpenAI's shape.

    Args:
        names: returns the model ids served now (called per request: names may change after start-up).
        card: builds one model object (``{"id", "object": "model", "created", "owned_by", …}``).
    """

    async def list_models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [card(n) for n in sorted(names())]})

    async def get_model(request: Request) -> Response:
        name = request.path_params["model"]
        if name not in set(names()):
            raise NotFoundError(f"The model '{name}' does not exist.", param="model")
        return JSONResponse(card(name))

    return [
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", get_model, methods=["GET"]),
    ]


def build_app(state: ServerState, settings: ServerSettings, routes: list[Route], lifespan, doc: ApiDoc) -> Starlette:
    """A Chorus server: ``routes`` plus health/ready/metrics, ``/openapi.json``, OpenAI-shaped errors, API keys.

    Args:
        doc: the OpenAPI description of ``routes``; the standard routes are added to it here.

    Raises:
        ValueError: a route is missing from ``doc`` or ``doc`` describes a route that is not served.
    """
    standard_operations(doc)
    document = doc.document(secured=bool([k for k in settings.api_keys if k]))

    async def openapi(request: Request) -> Response:
        return JSONResponse(document)

    all_routes = [*routes, *health_routes(state), Route("/openapi.json", openapi, methods=["GET"])]
    doc.check((r.path, r.methods or ()) for r in all_routes)
    app = Starlette(
        routes=all_routes,
        exception_handlers=EXCEPTION_HANDLERS,
        middleware=[Middleware(ApiKeyMiddleware, keys=settings.api_keys)],
        lifespan=lifespan,
    )
    app.state.chorus = state
    return app


def uvicorn_server(app: Starlette, settings: ServerSettings) -> Any:
    """The ``uvicorn.Server`` that ``serve`` runs.

    uvicorn's access log is off: it wrote a line for every ``/ready`` poll (1,238 during one start-up
    under ``chorus up``); the request log is ``timed``'s one line per API request, with its duration and
    RTFx.
    """
    import uvicorn

    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            timeout_graceful_shutdown=settings.shutdown_timeout_s, access_log=False)
    return uvicorn.Server(config)


def serve(app: Starlette, settings: ServerSettings) -> int:
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
