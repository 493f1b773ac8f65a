"""The in-process jobs (APScheduler 3, AsyncIOScheduler) and the service lifecycle.

The jobs are the ones bootstrap built (`Container.jobs`), each on an interval or a cron schedule
(5 fields, UTC). A job marked exclusive runs once per cluster at a time (a Postgres advisory
lock); the others are safe in every process (they claim rows with leases or SKIP LOCKED, or only
read).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from marketplace_pay.bootstrap import Container
from marketplace_pay.infra.failures import is_transient

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
            except Exception as exc:
                level = logging.WARNING if is_transient(exc) else logging.ERROR
                log.log(level, "job failed", extra={"job": name, "error": repr(exc)}, exc_info=level >= logging.ERROR)
            finally:
                self.running.discard(task)

        return job

    async def drain(self, timeout_s: float) -> None:
        if self.running:
            await asyncio.wait(list(self.running), timeout=timeout_s)


def build_scheduler(container: Container, runs: JobRuns) -> AsyncIOScheduler:
    scheduler = AsyncIOScheduler(job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30})
    for job in container.jobs:
        trigger: BaseTrigger = (
            CronTrigger.from_crontab(job.cron, timezone="UTC")
            if job.cron
            else IntervalTrigger(seconds=job.every_ms / 1000)
        )
        scheduler.add_job(runs.guarded(job.name, container.scheduled(job)), trigger, id=job.name, name=job.name)
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
        await runs.drain(timeout_s=container.settings.shutdown.grace_s / 2)
        scheduler.shutdown(wait=False)
        await container.stop()
