"""The jobs each context needs, with their intervals (or cron schedules) from the settings.
`exclusive`: once per cluster at a time (the scheduler takes an advisory lock); the others are
safe in every process (they claim rows with leases or SKIP LOCKED, or only read)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from marketplace_pay.balances import Balances
from marketplace_pay.ledger import Treasury
from marketplace_pay.payments import Payments
from marketplace_pay.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Job:
    """Runs every `every_ms`, or — with `cron` (5 fields, UTC) — on that schedule."""

    name: str
    every_ms: int
    run: Callable[[], Awaitable[Any]]
    exclusive: bool = False
    cron: str | None = None


def payments_jobs(s: Settings, payments: Payments) -> list[Job]:
    return [
        Job("payments-resolve-pending-auth", s.pending_auth.poll_ms, payments.resolve_pending_authorizations),
        Job("payments-retry-dispatch", s.retry.poll_ms, payments.dispatch_due_retries),
        Job("refunds-dispatch", s.retry.poll_ms, payments.dispatch_due_refunds),
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


def treasury_jobs(s: Settings, treasury: Treasury) -> list[Job]:
    async def scheduled_payouts() -> None:
        paid = await treasury.run_scheduled_payouts()
        log.info("scheduled payouts", extra={"payouts": len(paid), "minor": sum(p.amount.amount_minor for p in paid)})

    async def settlement() -> None:
        done = await treasury.settle()
        log.info("settlement", extra={"settlements": [(x.currency.value, x.gross_minor) for x in done]})

    jobs = [Job("payouts-dispatch", s.retry.poll_ms, treasury.dispatch_due_payouts)]
    if s.payout.schedule:
        jobs.append(Job("payouts-scheduled", 0, scheduled_payouts, exclusive=True, cron=s.payout.schedule))
    if s.settlement.schedule:
        jobs.append(Job("psp-settlement", 0, settlement, exclusive=True, cron=s.settlement.schedule))
    return jobs


def balances_jobs(s: Settings, balances: Balances) -> list[Job]:
    async def reconcile() -> None:
        report = await balances.reconcile_since_last_run()
        if not report.ok:
            log.error("reconciliation found differences", extra={"drift": report.differences()[:50]})

    return [
        Job("balances-fold", s.balance.fold_ms, balances.fold),
        Job("balances-overlay-sweep", 60_000, balances.sweep_overlay),
        Job("balances-reconcile", s.reconcile.interval_s * 1000, reconcile, exclusive=True),
    ]
