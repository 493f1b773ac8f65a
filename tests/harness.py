"""Running the service for tests: in-process (`start_service`) or as a real process
(`ServiceProcess`, for kill -9 tests)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec

from marketplace_pay.bootstrap import Container, bootstrap
from marketplace_pay.entrypoints.http import attach, create_app
from marketplace_pay.entrypoints.jobs import running
from marketplace_pay.infra.auth import issue_token
from marketplace_pay.infra.resources import Resources, open_resources
from marketplace_pay.settings import Settings
from tests.services import free_port


def payment_body(
    buyer: str = "BUYER-1",
    order: str = "ORDER-1",
    lines: list[tuple[str, int]] | None = None,
    currency: str = "EUR",
) -> dict[str, Any]:
    lines = lines or [("SELLER-111", 1000), ("SELLER-222", 2000)]
    return {
        "buyerId": buyer,
        "orderId": order,
        "totalAmount": {"quantity": sum(q for _, q in lines), "currency": currency},
        "paymentOrders": [{"sellerId": s, "amount": {"quantity": q, "currency": currency}} for s, q in lines],
    }


class PspCall(msgspec.Struct, frozen=True):
    """One line of the simulated PSP's call log (MP_PSP_CALL_LOG): the PSP's own record (and the
    bank simulator's: `payoutId`)."""

    op: str
    key: str
    result: str
    answered: bool
    paymentOrderId: str | None = None  # noqa: N815 - the log's field name
    paymentId: str | None = None  # noqa: N815
    payoutId: str | None = None  # noqa: N815
    refundId: str | None = None  # noqa: N815


def psp_calls(path: Path, op: str | None = None) -> list[PspCall]:
    if not path.exists():
        return []
    calls = [msgspec.json.decode(line, type=PspCall) for line in path.read_bytes().splitlines() if line.strip()]
    return [c for c in calls if op is None or c.op == op]


async def outbox_backlog(pool: Any) -> int:
    return int(
        await pool.fetchval(
            "SELECT count(*) FROM outbox o JOIN outbox_cursors c USING (shard) WHERE (o.tx, o.id) > (c.tx, c.id)"
        )
    )


async def rows_of(dsn: str, query: str, *args: Any) -> list[Any]:
    """One query on a connection of its own (for tests that watch a service from outside)."""
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


def auth(secret: str, *roles: str, seller: str | None = None, sub: str = "tests") -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(secret, roles=roles, seller_id=seller, subject=sub)}"}


@dataclass
class Service:
    container: Container
    resources: Resources
    client: httpx.AsyncClient

    @property
    def settings(self) -> Settings:
        return self.container.settings

    def auth(self, *roles: str, seller: str | None = None, sub: str = "tests") -> dict[str, str]:
        assert self.settings.jwt.secret
        return auth(self.settings.jwt.secret, *roles, seller=seller, sub=sub)

    async def pay(self, body: dict[str, Any], *, key: str | None = None, **headers: str) -> httpx.Response:
        h = self.auth("payment:write") | headers
        if key is not None:
            h["Idempotency-Key"] = key
        return await self.client.post("/api/v1/payments", json=body, headers=h)

    async def get_payment(self, payment_id: str) -> httpx.Response:
        return await self.client.get(f"/api/v1/payments/{payment_id}", headers=self.auth("payment:read"))

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        return await self.resources.pool.fetch(query, *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        return await self.resources.pool.fetchval(query, *args)

    async def backlog(self) -> int:
        """Outbox rows some shard's cursor has not passed yet: events not yet handled."""
        return await outbox_backlog(self.resources.pool)

    async def until(self, predicate: Any, *, timeout: float = 10.0, interval: float = 0.02) -> None:
        deadline = time.monotonic() + timeout
        while True:
            result = predicate()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
            if time.monotonic() > deadline:
                raise AssertionError("condition not met in time")
            await asyncio.sleep(interval)


@asynccontextmanager
async def start_service(settings: Settings, **overrides: Any) -> AsyncIterator[Service]:
    """The app in this event loop (the pools live here): jobs, relay and consumers running, an
    httpx client talking ASGI to it."""
    resources = await open_resources(settings)
    try:
        container = bootstrap(settings, resources, **overrides)
        app = create_app(container)
        attach(app, container)
        async with running(container):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
                yield Service(container, resources, client)
    finally:
        await resources.close()


class ServiceProcess:
    """`marketplace-pay serve` as a child process, as a user runs it."""

    def __init__(self, settings: Settings, *, extra_env: dict[str, str] | None = None, workers: int = 1) -> None:
        self.settings = settings
        self.workers = workers
        self.port = free_port()
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = settings.process.data_dir / f"serve-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        s = self.settings
        env = {k: v for k, v in os.environ.items() if not k.startswith("MP_")}
        env.update(
            {
                "DATABASE_URL": s.services.database_url or "",
                "REDIS_URL": s.services.redis_url or "",
                "MP_DATA_DIR": str(s.process.data_dir),
                "MP_REDIS_PREFIX": s.redis.prefix,
                "MP_JWT_SECRET": s.jwt.secret or "",
                "MP_PSP_SCENARIO": s.psp.scenario,
                "MP_RETRY_BASE_MS": str(s.retry.base_ms),
                "MP_RETRY_CAP_MS": str(s.retry.cap_ms),
                "MP_RETRY_POLL_MS": str(s.retry.poll_ms),
                "MP_PENDING_AUTH_CHECK_AFTER_MS": str(s.pending_auth.check_after_ms),
                "MP_PENDING_AUTH_POLL_MS": str(s.pending_auth.poll_ms),
                "MP_OUTBOX_POLL_MS": str(s.outbox.poll_ms),
                "MP_LOG_FORMAT": "text",
                "MP_SHUTDOWN_GRACE_S": str(s.shutdown.grace_s),
                "MP_RETRY_REQUEUE_AFTER_MS": str(s.retry.requeue_after_ms),
                "MP_RETRY_INFLIGHT_TIMEOUT_MS": str(s.retry.inflight_timeout_ms),
            }
        )
        if s.psp.call_log:
            env["MP_PSP_CALL_LOG"] = str(s.psp.call_log)
        if s.services.kafka_bootstrap_servers:
            env["KAFKA_BOOTSTRAP_SERVERS"] = s.services.kafka_bootstrap_servers
            env["MP_KAFKA_TOPIC_PARTITIONS"] = str(s.kafka.topic_partitions or 4)
            env["MP_KAFKA_SESSION_TIMEOUT_MS"] = str(s.kafka.session_timeout_ms)
        else:
            env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
        env.update(self.extra_env)
        return env

    def start(self, *, faults: str | None = None, timeout: float = 30.0) -> ServiceProcess:
        env = self.env()
        if faults:
            env["MP_FAULTS"] = faults
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the child
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "marketplace_pay.entrypoints.cli",
                "serve",
                "--port",
                str(self.port),
                "--workers",
                str(self.workers),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited with {self.proc.returncode}; see {self.log_path}")
            try:
                if httpx.get(f"{self.url}/health/ready", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"service not ready in {timeout}s; see {self.log_path}")

    def crash(self, faults: str, work: Any) -> None:
        """Start with the crash point `faults` armed, run `work(self)`, and expect the process
        to have killed itself there. With several workers, the one that reaches the point dies
        (its supervisor starts another); the whole service is then killed, as a machine dies."""
        self.start(faults=faults)
        work(self)
        if self.workers > 1:
            deadline = time.monotonic() + 30
            while "MP_FAULTS: killing process" not in self.log():
                assert time.monotonic() < deadline, f"no worker died at {faults}; see {self.log_path}"
                time.sleep(0.05)
            self.kill()
            return
        assert self.wait_exit(30) == -signal.SIGKILL, f"did not die at {faults}; see {self.log_path}"

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def wait_exit(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
