"""The capture pipeline (SPEC §4, seed §4.1): four idempotent handlers and the retry jobs.

    PaymentAuthorized ──expand──▶ PaymentOrderCreated (one per line)
    PaymentOrderCreated ──request──▶ CAPTURE_REQUESTED + PaymentOrderCaptureCommand(0)
    PaymentOrderCaptureCommand(n) ──PSP──▶ PaymentOrderPspResultUpdated(n)
    PaymentOrderPspResultUpdated(n) ──apply──▶ PENDING_CAPTURE(n+1) + retry in Redis
                                            or CAPTURED/CAPTURE_FAILED + PaymentOrderFinalized
    due retry ──dispatch (outbox)──▶ PaymentOrderCaptureCommand(n+1)

Every handler records its inbox row in the same transaction as its effects and its events, so a
redelivered or duplicated event changes nothing. The PSP is called outside any transaction; a
capture command already handled (inbox) is not sent to the PSP again, and the PSP call is
idempotent per (order, attempt), so a crash between the PSP call and the commit repeats the call
with the same answer and the result is applied once. Postgres, not Redis, says which retries are
pending (`next_retry_at`): Redis is the timer, and a job puts back what Redis lost.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

from marketplace_pay.payments.application.ports import (
    CaptureGateway,
    CaptureOutcome,
    PaymentsUnitOfWork,
    PspTimeout,
    PspUnavailable,
)
from marketplace_pay.payments.domain.events import (
    PaymentAuthorized,
    PaymentOrderCaptureCommand,
    PaymentOrderCreated,
    PaymentOrderEvent,
    PaymentOrderFinalized,
    PaymentOrderPspResultUpdated,
)
from marketplace_pay.payments.domain.payment_order import (
    CaptureResult,
    PaymentOrder,
    PaymentOrderStatus,
    equal_jitter_backoff_ms,
)
from marketplace_pay.shared.clock import Clock
from marketplace_pay.shared.envelope import Envelope, envelope, first_seen
from marketplace_pay.shared.faults import faults
from marketplace_pay.shared.money import Currency, Money

log = logging.getLogger(__name__)

# Consumer names: inbox rows and Kafka consumer groups (the seed's group names).
EXPAND = "payment-authorized-expander-consumer-group"
ENQUEUE = "payment-order-enqueuer-consumer-group"
CAPTURE = "payment-order-capture-executor-consumer-group"
APPLY = "payment-order-psp-result-updated-consumer-group"


class RetryQueue(Protocol):
    """Capture retries waiting for their time (Redis ZSET + an in-flight ZSET).

    An item is (payment order id, attempt); scheduling the same item twice keeps one. Items
    move atomically from waiting to in flight when popped, and leave when acknowledged."""

    async def schedule(self, items: Sequence[tuple[int, int, int]]) -> None:
        """(payment order id, attempt, due epoch ms) for each item."""
        ...

    async def pop_due(self, *, now_ms: int, limit: int) -> list[tuple[int, int]]: ...

    async def ack(self, items: Sequence[tuple[int, int]]) -> None: ...

    async def reclaim(self, *, now_ms: int, older_than_ms: int, limit: int = 1000) -> int:
        """Put items in flight for longer than `older_than_ms` back in the queue."""
        ...

    async def sizes(self) -> tuple[int, int]:
        """(waiting, in flight)."""
        ...


def _order_fields(order: PaymentOrder, now: datetime) -> dict[str, Any]:
    return {
        "payment_order_id": str(order.payment_order_id),
        "public_payment_order_id": order.public_id,
        "payment_id": str(order.payment_id),
        "public_payment_id": order.public_payment_id,
        "seller_id": order.seller_id,
        "amount_value": order.amount.amount_minor,
        "currency": order.amount.currency.value,
        "timestamp": now,
    }


def _order_id(e: Envelope[PaymentOrderEvent]) -> int:
    return int(e.data.payment_order_id)


# -- 1. PaymentAuthorized → payment orders ---------------------------------------------------


async def expand_authorized_payments(
    batch: Sequence[Envelope[PaymentAuthorized]], *, uow: Callable[[], PaymentsUnitOfWork], clock: Clock
) -> None:
    now = clock.now()
    async with uow() as tx:
        fresh = first_seen(batch, await tx.claim_inbox(EXPAND, [e.event_id for e in batch]))
        orders: list[tuple[PaymentOrder, Envelope[PaymentAuthorized]]] = []
        for e in fresh:
            for line in e.data.payment_lines:
                order = PaymentOrder.create(
                    payment_order_id=int(line.payment_order_id),
                    payment_id=int(e.data.payment_id),
                    seller_id=line.seller_id,
                    amount=Money(line.amount_value, Currency(line.currency)),
                    now=now,
                )
                orders.append((order, e))
        # The ids come from the event: a replay inserts nothing and announces nothing.
        created = await tx.orders.add_all([(o, e.trace_id, e.traceparent) for o, e in orders])
        for order, cause in orders:
            if order.payment_order_id in created:
                tx.publish(
                    envelope(
                        PaymentOrderCreated(**_order_fields(order, now)),
                        aggregate_id=str(order.payment_order_id),
                        timestamp=now,
                        trace_id=cause.trace_id,
                        caused_by=cause,
                    )
                )
        await tx.commit()


# -- 2. PaymentOrderCreated → CAPTURE_REQUESTED + capture command 0 --------------------------


async def request_captures(
    batch: Sequence[Envelope[PaymentOrderCreated]], *, uow: Callable[[], PaymentsUnitOfWork], clock: Clock
) -> None:
    now = clock.now()
    async with uow() as tx:
        fresh = first_seen(batch, await tx.claim_inbox(ENQUEUE, [e.event_id for e in batch]))
        orders = await tx.orders.get_many([_order_id(e) for e in fresh], for_update=True)
        changed = []
        for e in fresh:
            order = orders.get(_order_id(e))
            if order is None or order.status is not PaymentOrderStatus.INITIATED_PENDING:
                log.warning("capture already requested or order missing", extra={"eventId": e.event_id})
                continue
            before = (order.status, order.retry_count)
            order.request_capture(now)
            changed.append((order, before))
            tx.publish(
                envelope(
                    PaymentOrderCaptureCommand(**_order_fields(order, now), attempt=0),
                    aggregate_id=e.aggregate_id,
                    timestamp=now,
                    trace_id=e.trace_id,
                    caused_by=e,
                )
            )
        await tx.orders.save_all(changed)
        await tx.commit()


# -- 3. capture command → PSP → result -------------------------------------------------------

_RESULT_OF = {
    CaptureOutcome.CAPTURED: (CaptureResult.CAPTURED, None),
    CaptureOutcome.DECLINED: (CaptureResult.CAPTURE_FAILED, "PSP_DECLINED"),
    CaptureOutcome.RETRYABLE: (CaptureResult.PENDING_CAPTURE, "PSP_RETRYABLE"),
}


async def _capture_once(
    command: PaymentOrderCaptureCommand, *, psp: CaptureGateway, timeout_s: float
) -> tuple[CaptureResult, str | None, int]:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout_s):
            outcome = await psp.capture(
                idempotency_key=f"{command.payment_order_id}:{command.attempt}",
                amount=Money(command.amount_value, Currency(command.currency)),
            )
        result, reason = _RESULT_OF[outcome]
    except (TimeoutError, PspTimeout):
        result, reason = CaptureResult.PENDING_CAPTURE, "PSP_TIMEOUT"  # retryable, never dropped
    except PspUnavailable:
        result, reason = CaptureResult.PENDING_CAPTURE, "PSP_UNAVAILABLE"
    return result, reason, int((time.perf_counter() - started) * 1000)


async def capture_payment_orders(
    batch: Sequence[Envelope[PaymentOrderCaptureCommand]],
    *,
    uow: Callable[[], PaymentsUnitOfWork],
    psp: CaptureGateway,
    clock: Clock,
    timeout_ms: int,
) -> None:
    async with uow() as tx:  # a short read: what was handled already, what the orders expect
        handled = await tx.seen(CAPTURE, [e.event_id for e in batch])
        orders = await tx.orders.get_many([_order_id(e) for e in batch])
    todo = [
        e
        for e in first_seen(batch, {e.event_id for e in batch} - handled)
        if (order := orders.get(_order_id(e))) is not None and order.expects(e.data.attempt)
    ]
    # Outside any transaction: the PSP may take its time.
    results = await asyncio.gather(*(_capture_once(e.data, psp=psp, timeout_s=timeout_ms / 1000) for e in todo))
    faults.hit("capture.after_psp")
    now = clock.now()
    async with uow() as tx:
        fresh = await tx.claim_inbox(CAPTURE, [e.event_id for e in batch])  # stale ones too: seen
        for e, (result, reason, latency_ms) in zip(todo, results, strict=True):
            if e.event_id not in fresh:  # a concurrent delivery won: its (identical) result stands
                continue
            tx.publish(
                envelope(
                    PaymentOrderPspResultUpdated(
                        **_order_fields_of(e.data, now),
                        psp_status=result.value,
                        attempt=e.data.attempt,
                        latency_ms=latency_ms,
                        reason=reason,
                    ),
                    aggregate_id=e.aggregate_id,
                    timestamp=now,
                    trace_id=e.trace_id,
                    caused_by=e,
                )
            )
        await tx.commit()


def _order_fields_of(event: PaymentOrderEvent, now: datetime) -> dict[str, Any]:
    return {
        "payment_order_id": event.payment_order_id,
        "public_payment_order_id": event.public_payment_order_id,
        "payment_id": event.payment_id,
        "public_payment_id": event.public_payment_id,
        "seller_id": event.seller_id,
        "amount_value": event.amount_value,
        "currency": event.currency,
        "timestamp": now,
    }


# -- 4. result → retry or final --------------------------------------------------------------


async def apply_capture_results(
    batch: Sequence[Envelope[PaymentOrderPspResultUpdated]],
    *,
    uow: Callable[[], PaymentsUnitOfWork],
    retries: RetryQueue,
    clock: Clock,
    max_retries: int,
    base_ms: int,
    cap_ms: int,
    rng: random.Random | None = None,
) -> None:
    now = clock.now()
    scheduled: list[tuple[int, int, int]] = []
    async with uow() as tx:
        fresh = first_seen(batch, await tx.claim_inbox(APPLY, [e.event_id for e in batch]))
        orders = await tx.orders.get_many([_order_id(e) for e in fresh], for_update=True)
        changed: list[tuple[PaymentOrder, tuple[PaymentOrderStatus, int]]] = []
        finished: list[PaymentOrder] = []
        for e in fresh:
            order = orders.get(_order_id(e))
            if order is None or not order.expects(e.data.attempt):
                continue  # stale attempt, or already terminal: no effect
            before = (order.status, order.retry_count)
            status = order.apply_result(
                CaptureResult(e.data.psp_status),
                attempt=e.data.attempt,
                now=now,
                max_retries=max_retries,
                retry_delay_ms=equal_jitter_backoff_ms(e.data.attempt + 1, base_ms=base_ms, cap_ms=cap_ms, rng=rng),
            )
            changed.append((order, before))
            if status is PaymentOrderStatus.PENDING_CAPTURE:
                assert order.next_retry_at is not None
                scheduled.append((order.payment_order_id, order.retry_count, int(order.next_retry_at.timestamp() * 1000)))
                continue
            finished.append(order)
            tx.publish(
                envelope(
                    PaymentOrderFinalized(**_order_fields(order, now), status=status.value, retry_count=order.retry_count),
                    aggregate_id=e.aggregate_id,
                    timestamp=now,
                    trace_id=e.trace_id,
                    caused_by=e,
                )
            )
        await tx.orders.save_all(changed)
        await _roll_up(tx, finished, now)
        await tx.commit()
    faults.hit("apply.after_commit")
    if scheduled:
        try:
            await retries.schedule(scheduled)
        except Exception as exc:  # noqa: BLE001 - Postgres has next_retry_at; the requeue job repairs
            log.warning("could not schedule retries in Redis", extra={"retries": len(scheduled), "error": repr(exc)})


async def _roll_up(tx: PaymentsUnitOfWork, finished: Sequence[PaymentOrder], now: datetime) -> None:
    """Move each payment whose last order just finished to CAPTURED/CAPTURED_PARTIALLY/CAPTURE_FAILED."""
    if not finished:
        return
    payments = await tx.payments.get_many(sorted({o.payment_id for o in finished}), for_update=True)
    for order in finished:
        payment = payments[order.payment_id]
        captured = order.amount if order.status is PaymentOrderStatus.CAPTURED else None
        payment.record_order_outcome(captured=captured, now=now)
    for payment in payments.values():
        await tx.payments.save_roll_up(payment)


# -- retries ------------------------------------------------------------------------------------


def retry_parent_event_id(order_public_id: str, attempt: int) -> str:
    """The PspResultUpdated that asked for retry `attempt` (its id is deterministic)."""
    return f"{order_public_id}:payment_order_psp_result_updated:{CaptureResult.PENDING_CAPTURE.value}:{attempt - 1}"


async def dispatch_due_retries(
    *, uow: Callable[[], PaymentsUnitOfWork], retries: RetryQueue, clock: Clock, limit: int = 500
) -> int:
    """Due retries → capture commands, through the outbox (deterministic ids: dispatching an item
    twice, e.g. by two dispatchers, publishes it once). Returns how many were dispatched."""
    due = await retries.pop_due(now_ms=clock.now_ms(), limit=limit)
    if not due:
        return 0
    now = clock.now()
    dispatched = []
    async with uow() as tx:
        orders = await tx.orders.get_many([po for po, _ in due], for_update=True)
        traces = await tx.orders.traces([po for po, _ in due])
        for po, attempt in due:
            order = orders.get(po)
            if order is None or order.status is not PaymentOrderStatus.PENDING_CAPTURE or order.retry_count != attempt:
                continue  # finished, or superseded meanwhile
            trace_id, traceparent = traces[po]
            tx.publish(
                envelope(
                    PaymentOrderCaptureCommand(**_order_fields(order, now), attempt=attempt),
                    aggregate_id=str(po),
                    timestamp=now,
                    trace_id=trace_id,
                    traceparent=traceparent,
                    parent_event_id=retry_parent_event_id(order.public_id, attempt),
                )
            )
            dispatched.append(po)
        await tx.orders.mark_retries_dispatched(dispatched)
        await tx.commit()
    faults.hit("retry.after_dispatch")
    await retries.ack(due)
    return len(dispatched)


async def requeue_lost_retries(
    *, uow: Callable[[], PaymentsUnitOfWork], retries: RetryQueue, clock: Clock, overdue_ms: int, limit: int = 1000
) -> int:
    """Postgres is the truth about pending retries: put back in Redis any retry overdue by more
    than `overdue_ms` that was never dispatched (Redis restarted empty, or the process died
    between the commit and scheduling)."""
    async with uow() as tx:
        overdue = await tx.orders.overdue_retries(before=clock.now() - timedelta(milliseconds=overdue_ms), limit=limit)
    if overdue:
        log.warning("requeueing retries missing from Redis", extra={"retries": len(overdue)})
        await retries.schedule(overdue)
    return len(overdue)
