"""`marketplace-pay serve`: the API, the pipeline and the jobs, in one process or several.

With `--workers N` (N ≥ 2) the processes have roles: API workers share the listening port; the
pipeline workers (half of them, rounded down) share the outbox shards and run the handlers and the
jobs, each on a loopback port of its own (health, metrics), so the API's load does not shrink the
pipeline's batches. A supervisor replaces a worker that dies with one of the same role.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from typing import Any

import uvicorn

from marketplace_pay.entrypoints.http_protocol import CoalescingHttpToolsProtocol
from marketplace_pay.infra import metrics
from marketplace_pay.infra.logs import setup_logging, startup_fields
from marketplace_pay.infra.tracing_config import TracingConfigError, tracing_config
from marketplace_pay.settings import Settings

MAX_DEFAULT_WORKERS = 4


def default_workers() -> int:
    """One process per core this process may run on, at most 4 (each holds a pool of PostgreSQL
    connections; more is a choice: `--workers`). From two on, `serve` splits them into API and
    pipeline workers: on the 2-core development machine, one of each (PostgreSQL on the same
    cores) accepted and settled 30-60 % more than one process doing both."""
    return max(1, min(len(os.sched_getaffinity(0)), MAX_DEFAULT_WORKERS))


def pipeline_workers(workers: int) -> int:
    """How many of `workers` run the pipeline; the others serve the API."""
    return workers // 2


def serve(args: argparse.Namespace, settings: Settings) -> int:
    """`marketplace-pay serve`: one process, or a supervisor of API and pipeline workers."""

    class DrainingServer(uvicorn.Server):
        """SIGTERM/SIGINT: stop accepting, finish in-flight requests, run the shutdown (relay and
        consumers drain), then exit 0 — instead of re-raising the signal as uvicorn does."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            with super().capture_signals():
                try:
                    yield
                finally:
                    self._captured_signals.clear()

    setup_logging(settings.log.level, settings.log.format)
    role = settings.process.role
    # MP_ROLE is one process's role; with several workers `serve` gives them their roles itself
    workers = args.workers or settings.process.workers or (default_workers() if role == "all" else 1)
    if role != "all" and workers > 1:
        sys.exit(
            f"marketplace-pay: MP_ROLE={role} is the role of a single process; "
            f"with --workers {workers} serve sets its workers' roles itself"
        )
    try:
        tracing = tracing_config()
    except TracingConfigError as exc:
        sys.exit(f"marketplace-pay: {exc}")
    # Several workers write their metrics to one directory, so that any of them answers a scrape
    # with all of them (a single worker keeps them in memory, unless the operator chose a directory).
    metrics_dir, metrics_dir_made = (
        metrics.prepare_multiprocess_dir() if workers > 1 or metrics.multiprocess_dir() else (None, False)
    )
    listen = f"http://{args.host}:{args.port}"
    logging.getLogger("marketplace_pay.serve").info(
        f"marketplace-pay serving {listen} with {workers} worker{'s' if workers > 1 else ''}",
        extra=startup_fields(
            settings,
            listen=listen,
            workers=workers,
            tracing=tracing.describe(),
            metrics=f"{listen}/metrics" + (" (all workers)" if metrics_dir else ""),
        ),
    )
    common: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "loop": "uvloop",
        "http": CoalescingHttpToolsProtocol,  # httptools, one write per response
        "ws": "none",  # no WebSocket routes: an upgrade request is answered as plain HTTP
        "lifespan": "on",
        "log_config": None,
        "access_log": False,
        "timeout_graceful_shutdown": settings.shutdown.grace_s,
        # longer than clients keep idle connections (httpx: 5 s, the same as uvicorn's default,
        # which races: the client reuses a connection the server is closing, and a POST fails)
        "timeout_keep_alive": 75,
        "backlog": 2048,
    }
    if workers == 1:
        from marketplace_pay.entrypoints.http import create_app

        server = DrainingServer(uvicorn.Config(create_app(settings=settings), **common))
        try:
            server.run()
        finally:
            if metrics_dir_made and metrics_dir is not None:
                metrics.remove_multiprocess_dir(metrics_dir)
        return 0 if server.started else 1

    # Several workers: the API workers share the listening socket; the pipeline workers share the
    # outbox shards and the jobs, each on a loopback port of its own (health, metrics), so that the
    # API's load does not slow the pipeline's batches down. The embedded services start (and
    # migrations run) once, here.
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess
    from uvicorn.supervisors.multiprocess import Process

    from marketplace_pay.infra.auth import resolve_jwt_secret
    from marketplace_pay.infra.resources import resolve_services

    dsn, redis_url, embedded_redis = asyncio.run(resolve_services(settings))
    os.environ.update(DATABASE_URL=dsn, REDIS_URL=redis_url, MP_SUPERVISED=str(os.getpid()))
    if not settings.jwt.jwks_url:
        os.environ["MP_JWT_SECRET"] = resolve_jwt_secret(settings.jwt.secret, settings.process.data_dir)

    serve_log = logging.getLogger("marketplace_pay.serve")
    factory = "marketplace_pay.entrypoints.http:"
    api = uvicorn.Config(factory + "create_api_app", factory=True, **common)
    slots = [(api, [api.bind_socket()])] * (workers - pipeline_workers(workers))
    for _ in range(pipeline_workers(workers)):
        loopback = {**common, "host": "127.0.0.1", "port": 0}
        pipeline = uvicorn.Config(factory + "create_pipeline_app", factory=True, **loopback)
        sock = pipeline.bind_socket()
        slots.append((pipeline, [sock]))
        serve_log.info(f"pipeline worker on http://127.0.0.1:{sock.getsockname()[1]} (health, metrics)")

    class Supervisor(Multiprocess):
        """uvicorn's supervisor with a role per worker slot; a worker that died or was replaced is
        replaced in its slot, and leaves the live metrics."""

        def init_processes(self) -> None:
            for config, sockets in slots:
                process = Process(config, sockets)
                process.start()
                self.processes.append(process)

        def keep_subprocess_alive(self) -> None:
            for idx, process in enumerate(self.processes):
                if self.should_exit.is_set():
                    return
                if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                    continue
                process.kill()  # hung or dead
                process.join()
                metrics.forget_processes({process.pid})
                if process.exitcode == STARTUP_FAILURE:  # it would fail the same way again
                    serve_log.error("a worker failed to start; stopping", extra={"pid": process.pid})
                    self.failed = True
                    self.should_exit.set()
                    return
                serve_log.warning("worker died; replacing it", extra={"pid": process.pid})
                replacement = Process(*slots[idx])
                replacement.start()
                self.processes[idx] = replacement

        failed = False

        def handle_ttin(self) -> None:  # uvicorn's "one more worker": the layout is fixed here
            serve_log.warning("SIGTTIN ignored: the workers and their roles are set by --workers")

        def handle_ttou(self) -> None:
            serve_log.warning("SIGTTOU ignored: the workers and their roles are set by --workers")

        def restart_all(self) -> None:  # SIGHUP
            for idx, old in enumerate(self.processes):
                replacement = Process(*slots[idx])
                replacement.start()
                if not replacement.wait_until_ready(self.config.timeout_worker_healthcheck, self.should_exit):
                    serve_log.error(
                        "a new worker was not ready in time; the restart stops here", extra={"pid": old.pid}
                    )
                    replacement.kill()
                    replacement.join()
                    return
                old.terminate()
                old.join()
                metrics.forget_processes({old.pid})
                self.processes[idx] = replacement

    supervisor = Supervisor(api, sockets=slots[0][1])
    try:
        supervisor.run()
    finally:
        if embedded_redis is not None:
            embedded_redis.stop()
        if metrics_dir_made and metrics_dir is not None:
            metrics.remove_multiprocess_dir(metrics_dir)
    return 1 if supervisor.failed else 0
