"""The HTTP application: `create_app(container=None)`.

With no container, the lifespan opens the resources from the environment (embedded services
when no URLs are set), runs the consumers, the relay and the jobs, and closes everything on
shutdown — after uvicorn has drained in-flight requests.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import msgspec
from litestar import Litestar, Request, Response, get
from litestar.di import NamedDependency, Provide
from litestar.enums import ScopeType
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import CONTENT_TYPE_LATEST

from marketplace_pay.bootstrap import Container, bootstrap
from marketplace_pay.bootstrap.web import ROUTES, dependencies
from marketplace_pay.entrypoints.errors import EXCEPTION_HANDLERS, PROBLEM_BASE, PROBLEM_JSON, instance_of
from marketplace_pay.entrypoints.jobs import running
from marketplace_pay.infra import metrics
from marketplace_pay.infra.logs import setup_logging
from marketplace_pay.infra.openapi import PROBLEM_JSON as DOC_PROBLEM_JSON
from marketplace_pay.infra.openapi import component_schemas, documented
from marketplace_pay.infra.resources import open_resources
from marketplace_pay.infra.telemetry import current_ids, flush_tracing, server_span, setup_tracing, trace_id_of
from marketplace_pay.settings import Settings

log = logging.getLogger(__name__)


# W3C trace context: version (not ff), trace id, parent id, flags; a later version may append
# fields. Anything else is ignored: a client's broken header must not cost it its request.
_TRACEPARENT = re.compile(rb"(?!ff)[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}(?:-[\x21-\x7e]*)?")
_TRACEPARENT_LENGTH_MAX = 512


def incoming_traceparent(headers: Any) -> str | None:
    """The request's traceparent header if it is a well-formed W3C one, else None."""
    raw = None
    for name, value in headers or ():
        if name == b"traceparent":
            if raw is not None:
                return None  # several: which one is the parent is anyone's guess
            raw = value
    if raw is None or len(raw) > _TRACEPARENT_LENGTH_MAX or _TRACEPARENT.fullmatch(raw) is None:
        return None
    return bytes(raw).decode("ascii")


def observe(app: ASGIApp) -> ASGIApp:
    """One server span per request (joining an incoming traceparent) and the latency metric."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        incoming = incoming_traceparent(scope.get("headers"))
        method = scope["method"]
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-trace-id", trace_id_of(span).encode())]
            await send(message)

        with server_span(f"{method} {scope.get('path_template', 'unmatched')}", incoming) as span:
            try:
                await app(scope, receive, send_wrapper)
            finally:
                route = scope.get("path_template", "unmatched")
                span.update_name(f"{method} {route}")
                span.set_attribute("http.response.status_code", status)
                metrics.HTTP_LATENCY.labels(metrics.http_method(method), route, str(status)).observe(
                    time.perf_counter() - started
                )

    return middleware


class Liveness(msgspec.Struct, frozen=True):
    status: str


class Readiness(msgspec.Struct, frozen=True):
    status: str
    checks: dict[str, str]


class NotReady(msgspec.Struct, frozen=True):
    """A problem (RFC 9457) with the checks as an extension member."""

    type: str
    title: str
    status: int
    detail: str
    instance: str
    traceId: str  # noqa: N815 - wire name
    checks: dict[str, str]


_NOT_READY = {
    "description": "A dependency is down (problem+json with the checks); retry after Retry-After seconds",
    "headers": {"Retry-After": {"required": True, "schema": {"type": "string"}}},
    "content": {DOC_PROBLEM_JSON: {"schema": msgspec.json.schema(NotReady)["$defs"]["NotReady"]}},
}


class _ReadyOperation(documented(public=True)):  # type: ignore[misc]
    def to_schema(self) -> dict[str, Any]:
        result: dict[str, Any] = super().to_schema()
        result["responses"]["503"] = _NOT_READY
        return result


@get(
    "/health/live",
    summary="Liveness",
    tags=["operations"],
    sync_to_thread=False,
    operation_id="live",
    operation_class=documented(public=True),
)
def live() -> Liveness:
    return Liveness("ok")


@get(
    "/health/ready",
    summary="Readiness: database, Redis and the bus",
    tags=["operations"],
    operation_id="ready",
    operation_class=_ReadyOperation,
)
async def ready(request: Request[Any, Any, Any], container: NamedDependency[Container]) -> Response[Readiness]:
    checks: dict[str, str] = {}

    async def check(name: str, probe: Any) -> None:
        try:
            ok = await asyncio.wait_for(probe(), timeout=2)
            checks[name] = "ok" if ok else "down"
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            checks[name] = f"down: {type(exc).__name__}"

    for name, probe in container.probes().items():
        await check(name, probe)
    if all(v == "ok" for v in checks.values()):
        return Response(Readiness("ok", checks))
    down = ", ".join(name for name, v in checks.items() if v != "ok")
    not_ready = NotReady(
        type=PROBLEM_BASE + "unavailable",
        title="Service unavailable",
        status=503,
        detail=f"Not ready: {down}",
        instance=instance_of(request),
        traceId=current_ids()[0],
        checks=checks,
    )
    return Response(
        msgspec.json.encode(not_ready),  # type: ignore[arg-type]
        status_code=503,
        media_type=PROBLEM_JSON,
        headers={"Retry-After": "1"},
    )


@get(
    "/metrics",
    summary="Prometheus metrics",
    tags=["operations"],
    sync_to_thread=False,
    media_type=CONTENT_TYPE_LATEST,
    operation_id="metrics",
    operation_class=documented(public=True),
)
def prometheus() -> Response[bytes]:
    body, content_type = metrics.exposition()
    return Response(body, media_type=content_type)


class Running:
    """The container the application runs, once its lifespan has started it."""

    def __init__(self) -> None:
        self.container: Container | None = None

    def __call__(self) -> Container:
        if self.container is None:
            raise RuntimeError("the application has not started")
        return self.container


def attach(app: Litestar, container: Container) -> None:
    """Make `container` the one the request handlers use (and the token guard's verifier)."""
    app.state.running.container = container
    app.state.verifier = container.verifier


def _worker_setup() -> Settings:
    """In a worker of `serve --workers N` (a fresh process): logging, and death with the parent —
    `kill -9` of the service must take its workers with it, as it takes a single process."""
    settings = Settings.from_env()
    setup_logging(settings.log.level, settings.log.format)
    supervisor = int(os.environ.get("MP_SUPERVISED", "0") or 0)  # the pid of `serve`
    if supervisor and sys.platform == "linux":
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        # The parent died before prctl: follow it. (Compared with its pid, not with 1: in a
        # container `serve` itself is pid 1.)
        if os.getppid() != supervisor:
            os.kill(os.getpid(), signal.SIGKILL)
    return settings


def create_api_app() -> Litestar:
    """A worker of `serve --workers N` that serves the API on the shared port, and nothing else."""
    return create_app(settings=_worker_setup().with_(role="api"))


def create_pipeline_app() -> Litestar:
    """A worker of `serve --workers N` that runs the pipeline (outbox shards, handlers, jobs); it
    listens on a loopback port of its own, so no API traffic reaches it."""
    return create_app(settings=_worker_setup().with_(role="pipeline"))


def create_app(container: Container | None = None, *, settings: Settings | None = None) -> Litestar:
    if container is None and settings is None:
        settings = _worker_setup()
    setup_tracing((settings if settings is not None else container.settings).process.instance_name)  # type: ignore[union-attr]
    metrics.setup_metrics()

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        owned = None
        active = container
        if active is None:
            active_settings = settings or Settings.from_env()
            owned = await open_resources(active_settings)
            active = bootstrap(active_settings, owned)
        attach(app, active)
        try:
            async with running(active):
                log.info("marketplace-pay ready", extra={"instance": active.settings.process.instance_name})
                metrics.WORKER_PROCESSES.set(1)
                gc.collect()
                gc.freeze()  # what start-up built lives for good: the collector need not scan it again
                # Almost nothing here forms reference cycles (reference counting frees it); the
                # default threshold runs the cycle collector every 700 allocations, several times
                # per request, and promotes in-flight request state to older generations.
                gc.set_threshold(50_000, 20, 50)
                yield
        finally:
            metrics.WORKER_PROCESSES.set(0)
            if owned is not None:
                await owned.close()
            flush_tracing()
            log.info("marketplace-pay stopped")

    running_container = Running()
    app = Litestar(
        route_handlers=[*ROUTES, live, ready, prometheus],
        dependencies={**dependencies(running_container), "container": Provide(running_container, sync_to_thread=False)},
        lifespan=[lifespan],
        exception_handlers=cast("Any", EXCEPTION_HANDLERS),
        middleware=[observe],
        openapi_config=OpenAPIConfig(
            title="marketplace-pay",
            version="0.1.0",
            path="/schema",
            render_plugins=[SwaggerRenderPlugin()],
            components=Components(
                security_schemes={"bearer": SecurityScheme(type="http", scheme="bearer", bearer_format="JWT")},
            ),
            security=[{"bearer": []}],
        ),
        logging_config=None,
        debug=False,
    )
    app.state.running = running_container
    # Request bodies we decode ourselves (strictly) are described by msgspec; Litestar builds
    # its component registry from handler signatures only, so add them to the cached document.
    generated = app.openapi_schema.components
    generated.schemas = {**(generated.schemas or {}), **component_schemas()}
    return app
