"""The in-process jobs (APScheduler 3, AsyncIOScheduler) and the service lifecycle.

A job that must run once per cluster takes a Postgres advisory lock (`run_exclusive`); the
others are safe to run in every process (they claim rows with leases or SKIP LOCKED).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from marketplace_pay.balances.application import balances
from marketplace_pay.balances.application.balances import drift_report
from marketplace_pay.bootstrap import Container
from marketplace_pay.infra.db import vacuum_if_autovacuum_off
from marketplace_pay.infra.dispatch import is_transient
from marketplace_pay.infra.locks import run_exclusive
from marketplace_pay.payments.adapters.postgres import prune_idempotency_keys

log = logging.getLogger(__name__)


class JobRuns:
    """The job runs in progress, so that shutdown lets them finish instead of cancelling them."""

    def __init__(self) -> None:
        self.running: set[asyncio.Task[Any]] = set()

    def guarded(self, name: str, fn: Callable[[], Awaitable[Any]]) -> Callable[[], Awaitable[None]]:
        """Log a failing run instead of letting APScheduler print a traceback every tick."""

        async def job() -> None:
            task = asyncio.current_task()
            assert task is not None
            self.running.add(task)
            try:
                await fn()
            except Exception as exc:  # noqa: BLE001 - the next run retries
                level = logging.WARNING if is_transient(exc) else logging.ERROR
                log.log(level, "job failed", extra={"job": name, "error": repr(exc)}, exc_info=level >= logging.ERROR)
            finally:
                self.running.discard(task)

        return job

    async def drain(self, timeout_s: float) -> None:
        if self.running:
            await asyncio.wait(list(self.running), timeout=timeout_s)


def build_scheduler(container: Container, runs: JobRuns) -> AsyncIOScheduler:
    s = container.settings
    scheduler = AsyncIOScheduler(job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30})

    def every(name: str, fn: Callable[[], Awaitable[Any]], *, ms: int) -> None:
        scheduler.add_job(runs.guarded(name, fn), "interval", seconds=ms / 1000, id=name, name=name)

    resources = container.resources
    relay = container.relay
    if resources is not None:
        pool = resources.pool
        every("payments-resolve-pending-auth", container.resolve_pending_authorizations, ms=s.pending_auth_poll_ms)
        every("payments-retry-dispatch", container.dispatch_due_retries, ms=s.retry_poll_ms)
        every("payments-retry-requeue", container.requeue_lost_retries, ms=max(1000, s.retry_requeue_after_ms // 2))

        async def reclaim_retries() -> None:
            await container.retries.reclaim(
                now_ms=container.clock.now_ms(), older_than_ms=s.retry_inflight_timeout_ms
            )

        every("payments-retry-reclaim", reclaim_retries, ms=max(1000, s.retry_inflight_timeout_ms // 4))
        every("payments-retry-gauge", container.retries.sizes, ms=5000)
        every("balances-fold", container.fold_balances, ms=s.balance_fold_ms)

        async def sweep_overlay() -> None:
            await balances.sweep_overlay(store=container.balance_store, overlay=container.overlay)

        async def reconcile() -> None:
            async def run(_: object) -> None:
                report = await container.reconcile()
                if not report.ok:
                    log.error("reconciliation found differences", extra={"drift": drift_report(report)[:50]})

            await run_exclusive(pool, "balances-reconcile", run)

        every("balances-overlay-sweep", sweep_overlay, ms=60_000)
        every("balances-reconcile", reconcile, ms=s.reconcile_interval_s * 1000)

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
        if s.db_vacuum_s > 0:

            async def vacuum() -> None:
                await run_exclusive(pool, "db-vacuum", vacuum_if_autovacuum_off)

            every("db-vacuum", vacuum, ms=s.db_vacuum_s * 1000)
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
    runs = JobRuns()
    scheduler = build_scheduler(container, runs)
    scheduler.start()
    try:
        yield scheduler
    finally:
        scheduler.pause()  # no new runs; the ones in progress finish (bounded)
        await runs.drain(timeout_s=container.settings.shutdown_grace_s / 2)
        scheduler.shutdown(wait=False)
        await container.stop()
