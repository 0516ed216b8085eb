"""Chorus on Ray Serve: replicas of the whisper server and the sidecar behind the router's OpenAI API.

    chorus serve ray --port 8000 --whisper-replicas 2 --sidecar-replicas 1      # one machine
    serve run bench/ray/serve_config.yaml                                        # the same, from a config
    serve deploy bench/ray/serve_config.yaml --address http://HEAD:8265          # a running cluster

Three deployments in one Serve application (``APP_NAME``):

- ``whisper``: one ``WhisperEngine`` per replica (its batching scheduler inside), serving the whisper
  server's own app (``jax_models.whisper_app``) in-process;
- ``sidecar``: the torch sidecar's app (``torch_models.sidecar_app``) in-process;
- ``router``: the ingress. It is the router's app (``server.router.app``), unchanged, whose two
  backend clients reach the other deployments through ``DeploymentHandle``s instead of HTTP
  (``HandleTransport``): the upload bytes travel in Ray's object store, no socket, no second HTTP
  server. Each backend replica runs the same request validation, admission and error mapping as the
  plain server, so the OpenAI errors are the same.

Replica counts and autoscaling come from ``RayServeSettings``; ``max_ongoing_requests`` of a whisper
replica is tied to its engine's queue (``settings.whisper.max_concurrent``): Serve sends no more than
the engine admits, and the rest wait in Serve's queue, where autoscaling can see them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field

from server.kit.settings import RouterSettings, WhisperSettings

log = logging.getLogger("chorus.ray")

APP_NAME = "chorus"
WHISPER = "whisper"
SIDECAR = "sidecar"


class Autoscaling(BaseModel):
    """Ray Serve's ``autoscaling_config`` of one deployment (``None`` replicas count: fixed).

    ``target_ongoing_requests``: requests in flight per replica that Serve aims for; above it, after
    ``upscale_delay_s``, it adds replicas up to ``max_replicas``; below it, after ``downscale_delay_s``,
    it removes them down to ``min_replicas``.
    """

    model_config = ConfigDict(extra="forbid")

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(2, ge=1)
    target_ongoing_requests: float = Field(2.0, gt=0)
    upscale_delay_s: float = Field(5.0, ge=0)
    downscale_delay_s: float = Field(60.0, ge=0)
    metrics_interval_s: float = Field(10.0, gt=0, description="How often replicas report their load (s).")
    look_back_period_s: float = Field(30.0, gt=0, description="The window the load is averaged over (s).")

    def config(self) -> dict[str, Any]:
        """The dict Serve's ``autoscaling_config`` takes."""
        return self.model_dump()


class DeploymentSettings(BaseModel):
    """Replicas and resources of one backend deployment.

    Args:
        replicas: fixed replica count (ignored when ``autoscaling`` is set).
        num_cpus, num_gpus: Ray resources each replica reserves (``ray_actor_options``); a fractional
            GPU packs several replicas on one device.
        autoscaling: replace the fixed count by Serve's autoscaler.
    """

    model_config = ConfigDict(extra="forbid")

    replicas: int = Field(1, ge=1)
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    autoscaling: Autoscaling | None = None

    def options(self, max_ongoing_requests: int) -> dict[str, Any]:
        """Keyword arguments of ``Deployment.options`` for these settings."""
        opts: dict[str, Any] = {
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
            "max_ongoing_requests": max_ongoing_requests,
            "health_check_period_s": 5,
        }
        if self.autoscaling is not None:
            opts["autoscaling_config"] = self.autoscaling.config()
        else:
            opts["num_replicas"] = self.replicas
        return opts


class RayServeSettings(BaseModel):
    """Everything ``build_app`` needs; JSON-serialisable, so it travels to every replica.

    The nested server settings are the plain servers' own (``WhisperSettings``, ``SidecarSettings``,
    ``RouterSettings``), given as dicts of their fields; their URLs and ports are unused here.
    """

    model_config = ConfigDict(extra="forbid")

    whisper: dict[str, Any] = Field(default_factory=dict, description="WhisperSettings fields")
    sidecar: dict[str, Any] = Field(default_factory=dict, description="SidecarSettings fields")
    router: dict[str, Any] = Field(default_factory=dict, description="RouterSettings fields")
    whisper_deployment: DeploymentSettings = Field(default_factory=DeploymentSettings)
    sidecar_deployment: DeploymentSettings = Field(default_factory=DeploymentSettings)
    router_replicas: int = Field(1, ge=1)
    ready_timeout_s: float = Field(900.0, gt=0, description="How long a backend replica may take to load and warm up.")
    version: str | None = Field(
        None,
        description="Pin the deployments' code version, so that `serve.run` of settings that change only replica "
        "counts or autoscaling updates the running replicas in place instead of restarting them (Serve 2.54 "
        "warns that `version` is deprecated, but honours it; `serve deploy` of a config file does this itself).",
    )


# ---------------------------------------------------------------------------------------------
# Backend replicas: a Chorus server app served in-process


def _build_backend_app(kind: str, fields: dict[str, Any]) -> Any:
    """The whisper server's or the sidecar's app, built from its settings' fields."""
    if kind == WHISPER:
        from jax_models.whisper_app import create_app, enable_compilation_cache

        settings = WhisperSettings(**fields)
        enable_compilation_cache(settings.cache_dir)
        return create_app(settings)
    if kind == SIDECAR:
        from torch_models.settings import SidecarSettings
        from torch_models.sidecar_app import create_app as create_sidecar

        return create_sidecar(SidecarSettings(**fields))
    raise ValueError(f"unknown backend kind {kind!r}")


class BackendReplica:
    """One Serve replica of a backend (``kind``: ``"whisper"`` or ``"sidecar"``).

    Holds the backend's app, runs its lifespan (model load, warm-up) in the replica's constructor and
    answers ``request(method, path, headers, body)`` by calling the app in-process (ASGI), so the
    replica validates, admits and answers exactly as the plain server does. Serve marks the replica
    healthy once the constructor returns, i.e. once the app's ``/ready`` is 200.

    Raises:
        TimeoutError: ``/ready`` was not 200 within ``ready_timeout_s`` (Serve restarts the replica).
    """

    async def __init__(self, kind: str, fields: dict[str, Any], ready_timeout_s: float = 900.0) -> None:
        self.kind = kind
        self.app = _build_backend_app(kind, fields)
        self._lifespan = self.app.router.lifespan_context(self.app)
        await self._lifespan.__aenter__()
        self.http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app), base_url=f"http://{kind}", timeout=None
        )
        self.replica = _replica_tag()
        deadline = time.monotonic() + ready_timeout_s
        while True:
            r = await self.http.get("/ready")
            if r.status_code == 200:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{kind} replica not ready after {ready_timeout_s:g} s: {r.text[:200]}")
            await asyncio.sleep(0.5)
        log.info("%s replica %s ready", kind, self.replica)

    async def request(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """Serve one HTTP request in-process.

        Args:
            method, path: e.g. ``"POST"``, ``"/v1/audio/transcriptions?x=1"``.
            headers: the request's headers (``content-type`` with the multipart boundary, authorization).
            body: the request body (the multipart upload: audio bytes and form fields).

        Returns:
            ``(status, headers, body)``; the headers carry ``x-chorus-replica`` naming this replica.
        """
        r = await self.http.request(method, path, headers=headers, content=body)
        out = [(k, v) for k, v in r.headers.items() if k.lower() not in ("content-length", "transfer-encoding")]
        out.append(("x-chorus-replica", self.replica))
        return r.status_code, out, r.content

    async def check_health(self) -> None:
        """Serve's health check: raises while the app's ``/ready`` is not 200 (after start-up, a
        failed engine)."""
        r = await self.http.get("/ready")
        if r.status_code != 200:
            raise RuntimeError(f"{self.kind} replica not ready: {r.text[:200]}")

    async def __del__(self) -> None:
        await self._lifespan.__aexit__(None, None, None)


def _replica_tag() -> str:
    try:
        from ray import serve

        return serve.get_replica_context().replica_tag
    except Exception:  # outside a replica (tests call the class directly)
        return "local"


# ---------------------------------------------------------------------------------------------
# The router's side: httpx requests become handle calls


class HandleTransport(httpx.AsyncBaseTransport):
    """An httpx transport that sends each request to a Serve deployment through its handle.

    The router's ``WhisperClient``/``SidecarClient`` keep their logic (deadlines, one retry on a
    connection error, error mapping) and reach a replica instead of a URL. A replica that dies with
    the request becomes ``httpx.ConnectError``, which the client retries once (Serve routes the retry
    to a live replica); Serve's back-pressure becomes a 503 with ``Retry-After``.

    Args:
        handle: the deployment's ``DeploymentHandle`` (its ``request`` method is ``BackendReplica.request``).
        name: the deployment's name, for messages.
        on_response: called with ``(name, replica tag)`` after each answered POST (the router's metrics).
    """

    def __init__(self, handle: Any, name: str, on_response: Callable[[str, str], None] | None = None) -> None:
        self.handle = handle
        self.name = name
        self.on_response = on_response

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        from ray import exceptions as ray_exceptions
        from ray.serve import exceptions as serve_exceptions

        body = await request.aread()
        path = request.url.raw_path.decode()
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in ("host", "content-length")]
        timeout = (request.extensions.get("timeout") or {}).get("read")
        response = self.handle.request.remote(request.method, path, headers, body)
        try:
            status, out_headers, content = await asyncio.wait_for(response, timeout)
        except TimeoutError:
            response.cancel()
            raise httpx.ReadTimeout(f"{self.name}: no answer in {timeout:g} s", request=request) from None
        except serve_exceptions.BackPressureError as exc:
            body_ = {
                "error": {
                    "message": f"The {self.name} deployment is at capacity: {exc}",
                    "type": "server_error",
                    "param": None,
                    "code": "overloaded",
                }
            }
            return httpx.Response(503, json=body_, headers={"Retry-After": "1"}, request=request)
        except (
            ray_exceptions.RayActorError,
            ray_exceptions.ActorUnavailableError,
            serve_exceptions.DeploymentUnavailableError,
        ) as exc:
            raise httpx.ConnectError(f"{self.name} replica unavailable: {type(exc).__name__}", request=request) from exc
        if self.on_response is not None and request.method != "GET":  # not the /ready and /v1/models polls
            self.on_response(self.name, dict(out_headers).get("x-chorus-replica", "?"))
        return httpx.Response(status, headers=out_headers, content=content, request=request)


def _router_builder(settings: RayServeSettings):
    """A function Serve calls on each router replica to build the ingress app (``serve.ingress``)."""
    fields = dict(settings.router)

    def build() -> Any:
        from prometheus_client import Counter
        from ray import serve

        from server.router.app import create_app

        app_holder: dict[str, Any] = {}

        def count(name: str, replica: str) -> None:
            app_holder["counts"].labels(name, replica).inc()

        transports: dict[str, httpx.AsyncBaseTransport] = {
            name: HandleTransport(serve.get_deployment_handle(name, app_name=APP_NAME), name, on_response=count)
            for name in (WHISPER, SIDECAR)
        }
        app = create_app(
            RouterSettings(**{"whisper_url": "http://whisper", "sidecar_url": "http://sidecar", **fields}),
            transports=transports,
        )
        app_holder["counts"] = Counter(
            "chorus_ray_backend_requests",
            "Backend requests by deployment and replica",
            ["deployment", "replica"],
            registry=app.state.chorus.registry,
        )
        return app

    return build


def build_app(args: dict[str, Any] | RayServeSettings | None = None) -> Any:
    """The Serve application: whisper and sidecar deployments and the router ingress.

    Also Serve's application builder (``import_path: server.ray_app:build_app`` with ``args`` in a
    Serve config file): ``args`` are ``RayServeSettings`` fields.

    Returns:
        A bound ``ray.serve.Application`` for ``serve.run`` (name ``APP_NAME``, route prefix ``/``).
    """
    from ray import serve

    from torch_models.settings import SidecarSettings

    settings = args if isinstance(args, RayServeSettings) else RayServeSettings(**(args or {}))
    whisper_settings = WhisperSettings(**settings.whisper)
    pinned = {"version": settings.version} if settings.version else {}
    whisper = serve.deployment(BackendReplica, name=WHISPER, **pinned).options(
        **settings.whisper_deployment.options(max_ongoing_requests=whisper_settings.max_concurrent)
    )
    sidecar = serve.deployment(BackendReplica, name=SIDECAR, **pinned).options(
        **settings.sidecar_deployment.options(max_ongoing_requests=SidecarSettings(**settings.sidecar).max_concurrent)
    )
    ingress = serve.deployment(serve.ingress(_router_builder(settings))(), name="router", **pinned).options(
        num_replicas=settings.router_replicas,
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=256,
    )
    return ingress.bind(
        whisper.bind(WHISPER, settings.whisper, settings.ready_timeout_s),
        sidecar.bind(SIDECAR, settings.sidecar, settings.ready_timeout_s),
    )


def run(
    settings: RayServeSettings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    address: str | None = None,
    stop: Callable[[], bool] | None = None,
) -> int:
    """Start (or join) a Ray cluster, run the application on ``host:port`` and block until SIGTERM/SIGINT.

    Args:
        address: ``None`` starts a local Ray instance; ``"auto"`` joins the cluster this machine is
            part of; ``"ray://HOST:10001"`` a remote one through Ray Client.
        stop: polled every 0.5 s; the loop ends when it returns True (tests).

    Returns:
        The process exit code (0 after a clean shutdown of the application).
    """
    import signal

    import ray
    from ray import serve

    ray.init(address=address, ignore_reinit_error=True, logging_level=logging.WARNING)
    serve.start(http_options={"host": host, "port": port})
    serve.run(build_app(settings), name=APP_NAME, route_prefix="/", blocking=False)
    log.info("chorus on Ray Serve: http://%s:%d/v1 (dashboard: ray dashboard; status: serve status)", host, port)
    stopped = {"flag": False}

    def on_signal(*_: object) -> None:
        stopped["flag"] = True

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not stopped["flag"] and not (stop is not None and stop()):
            time.sleep(0.5)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        serve.delete(APP_NAME)
        serve.shutdown()
        if address is None:
            ray.shutdown()
    return 0
