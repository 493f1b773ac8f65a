"""The jobs each context needs, with their intervals from the settings. `exclusive`: once per
cluster at a time (the scheduler takes an advisory lock); the others are safe in every process
(they claim rows with leases or SKIP LOCKED, or only read)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from marketplace_pay.balances import Balances
from marketplace_pay.payments import Payments
from marketplace_pay.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Job:
    name: str
    every_ms: int
    run: Callable[[], Awaitable[Any]]
    exclusive: bool = False


def payments_jobs(s: Settings, payments: Payments) -> list[Job]:
    return [
        Job("payments-resolve-pending-auth", s.pending_auth.poll_ms, payments.resolve_pending_authorizations),
        Job("payments-retry-dispatch", s.retry.poll_ms, payments.dispatch_due_retries),
        Job("payments-retry-requeue", max(1000, s.retry.requeue_after_ms // 2), payments.requeue_lost_retries),
        Job("payments-retry-reclaim", max(1000, s.retry.inflight_timeout_ms // 4), payments.reclaim_retries),
        Job("payments-retry-gauge", 5000, payments.retry_queue_sizes),
        Job(
            "payments-sweep-stuck-orders",
            max(1000, s.sweep.stuck_after_s * 250),
            payments.sweep_stuck_orders,
            exclusive=True,
        ),
    ]


def balances_jobs(s: Settings, balances: Balances) -> list[Job]:
    async def reconcile() -> None:
        report = await balances.reconcile()
        if not report.ok:
            log.error("reconciliation found differences", extra={"drift": report.differences()[:50]})

    return [
        Job("balances-fold", s.balance.fold_ms, balances.fold),
        Job("balances-overlay-sweep", 60_000, balances.sweep_overlay),
        Job("balances-reconcile", s.reconcile.interval_s * 1000, reconcile, exclusive=True),
    ]
