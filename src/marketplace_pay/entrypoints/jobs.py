"""The in-process jobs (APScheduler 3, AsyncIOScheduler) and the service lifecycle.

A job that must run once per cluster takes a Postgres advisory lock (`run_exclusive`); the
others are safe to run in every process (they claim rows with leases or SKIP LOCKED).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from marketplace_pay.bootstrap import Container
from marketplace_pay.infra.dispatch import is_transient
from marketplace_pay.infra.locks import run_exclusive
from marketplace_pay.payments.adapters.postgres import prune_idempotency_keys

log = logging.getLogger(__name__)


def _guarded(name: str, fn: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[None]]:
    """Log a failing run instead of letting APScheduler print a traceback every tick."""

    async def job() -> None:
        try:
            await fn()
        except Exception as exc:  # noqa: BLE001 - the next run retries
            level = logging.WARNING if is_transient(exc) else logging.ERROR
            log.log(level, "job failed", extra={"job": name, "error": repr(exc)}, exc_info=level >= logging.ERROR)

    return job


def build_scheduler(container: Container) -> AsyncIOScheduler:
    s = container.settings
    scheduler = AsyncIOScheduler(job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30})

    def every(name: str, fn: Callable[[], Awaitable[Any]], *, ms: int) -> None:
        scheduler.add_job(_guarded(name, fn), "interval", seconds=ms / 1000, id=name, name=name)

    resources = container.resources
    relay = container.relay
    if resources is not None:
        pool = resources.pool
        every("snowflake-lease-heartbeat", resources.ids.heartbeat, ms=int(resources.ids.heartbeat_s * 1000))
        every("payments-resolve-pending-auth", container.resolve_pending_authorizations, ms=s.pending_auth_poll_ms)

        async def prune_inbox() -> None:
            await run_exclusive(
                pool,
                "prune-inbox",
                lambda conn: conn.execute(
                    "DELETE FROM inbox WHERE processed_at < now() - make_interval(hours => $1)", s.inbox_retention_hours
                ),
            )

        async def prune_keys() -> None:
            await prune_idempotency_keys(pool, ttl_hours=s.idempotency_ttl_hours)

        every("inbox-prune", prune_inbox, ms=3_600_000)
        every("idempotency-keys-prune", prune_keys, ms=3_600_000)
    if relay is not None:

        async def supervise() -> None:
            relay.ensure_running()

        async def prune_outbox() -> None:
            await relay.prune(retention_s=s.outbox_retention_s)

        async def reclaim() -> None:
            await relay.reclaim_stuck(older_than_s=60)

        every("outbox-relay", supervise, ms=2000)
        every("outbox-reclaim", reclaim, ms=30_000)
        every("outbox-prune", prune_outbox, ms=60_000)
        every("outbox-backlog", relay.backlog, ms=5000)
    return scheduler


@asynccontextmanager
async def running(container: Container) -> AsyncIterator[AsyncIOScheduler]:
    """Run the consumers, the relay and the jobs; stop them (gracefully) on exit."""
    await container.start()
    scheduler = build_scheduler(container)
    scheduler.start()
    try:
        yield scheduler
    finally:
        scheduler.shutdown(wait=False)
        await container.stop()
