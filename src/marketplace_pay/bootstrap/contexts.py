"""One wiring function per context: its facade on the given ports and settings. The contexts
meet only here, each through the other's facade or a port the other's facade answers."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from functools import partial

from marketplace_pay.balances import Balances
from marketplace_pay.bootstrap.ports import Ports
from marketplace_pay.infra.dead_letters import DeadLetters
from marketplace_pay.ledger import (
    RECORD_REFUNDS,
    BankGateway,
    CachedSellers,
    Ledger,
    PayoutPolicy,
    Treasury,
    TreasuryPolicy,
)
from marketplace_pay.payments import (
    CAPTURE_AUTHORIZED,
    CapturePolicy,
    Payments,
    PaymentsPolicy,
    PaymentsPorts,
    RefundPolicy,
)
from marketplace_pay.payments.adapters.sellers import LedgerSellerDirectory
from marketplace_pay.payments.application.ports import AuthorizationGateway, CaptureGateway, RefundGateway
from marketplace_pay.settings import Settings
from marketplace_pay.shared.clock import Clock


def wire_payments(
    settings: Settings,
    ports: Ports,
    *,
    directory: CachedSellers,
    authorizer: AuthorizationGateway,
    capturer: CaptureGateway,
    refunder: RefundGateway,
    clock: Clock,
    rng: random.Random | None = None,
) -> Payments:
    s = settings
    return Payments(
        PaymentsPorts(
            store=ports.payments,
            capture=ports.capture,
            retry_uow=ports.retry_uow,
            retries=ports.retries,
            views=ports.payment_views,
            sellers=LedgerSellerDirectory(directory),
            authorizer=authorizer,
            capturer=capturer,
            ids=ports.ids,
            redrive_authorizations=partial(
                _redrive, ports.dead_letters, CAPTURE_AUTHORIZED, attempts_below=3 * s.handler.max_attempts
            ),
            refund_uow=ports.refund_uow,
            refund_reads=ports.refund_reads,
            refunder=refunder,
        ),
        policy=PaymentsPolicy(
            auth_timeout_ms=s.psp.auth_timeout_ms,
            in_progress_ms=s.idempotency.in_progress_ms,
            pending_auth_check_after_ms=s.pending_auth.check_after_ms,
            retry_requeue_after_ms=s.retry.requeue_after_ms,
            retry_inflight_timeout_ms=s.retry.inflight_timeout_ms,
            stuck_after_s=s.sweep.stuck_after_s,
            psp_max_inflight=s.psp.max_inflight,
        ),
        capture_policy=CapturePolicy(
            timeout_ms=s.psp.capture_timeout_ms, max_retries=s.retry.max, base_ms=s.retry.base_ms, cap_ms=s.retry.cap_ms
        ),
        refund_policy=RefundPolicy(  # the same PSP: the capture's call budget and retry schedule
            timeout_ms=s.psp.capture_timeout_ms,
            max_retries=s.retry.max,
            base_ms=s.retry.base_ms,
            cap_ms=s.retry.cap_ms,
            stuck_after_s=s.sweep.stuck_after_s,
        ),
        clock=clock,
        rng=rng,
    )


def wire_ledger(ports: Ports, *, directory: CachedSellers, payments: Payments, clock: Clock) -> Ledger:
    return Ledger(directory=directory, reads=ports.ledger_reads, uow=ports.ledger_uow, payments=payments, clock=clock)


def wire_treasury(
    settings: Settings, ports: Ports, *, bank: BankGateway, clock: Clock, rng: random.Random | None = None
) -> Treasury:
    s = settings
    return Treasury(
        uow=ports.treasury_uow,
        reads=ports.treasury_reads,
        bank=bank,
        sellers=ports.sellers,
        policy=TreasuryPolicy(
            payout=PayoutPolicy(
                bank_timeout_ms=s.payout.bank_timeout_ms,
                max_retries=s.retry.max,
                base_ms=s.retry.base_ms,
                cap_ms=s.retry.cap_ms,
                stuck_after_s=s.sweep.stuck_after_s,
            ),
            payout_minimum_minor=s.payout.minimum_minor,
            psp_fee_bps=s.psp.fee_bps,
        ),
        clock=clock,
        rng=rng,
    )


def wire_balances(ports: Ports, *, ledger: Ledger, clock: Clock) -> Balances:
    return Balances(store=ports.balance_store, overlay=ports.overlay, sellers=ledger, clock=clock)


def redrive_refund_recordings(
    settings: Settings, dead_letters: DeadLetters, clock: Clock
) -> Callable[[], Awaitable[int]]:
    """A job: refunds the PSP made whose recording in the ledger was dead-lettered (a capture
    not recorded for too long, a database fault) are delivered again — money refunded must
    reach the books — until three rounds of attempts failed; then an operator is needed (the
    dead-letter gauge and `dead-letters list` show them)."""

    async def redrive() -> int:
        before = clock.now() - timedelta(seconds=settings.sweep.stuck_after_s)
        return await _redrive(dead_letters, RECORD_REFUNDS, before, attempts_below=3 * settings.handler.max_attempts)

    return redrive


async def _redrive(dead_letters: DeadLetters, consumer: str, before: datetime, *, attempts_below: int) -> int:
    """A dead-lettered event of `consumer` delivered again — until it has failed three rounds of
    attempts; then it waits for an operator (`dead-letters replay`), and the gauge says so."""
    return len(
        await dead_letters.replay(consumer=consumer, older_than=before, attempts_below=attempts_below, limit=100)
    )
