"""The capture pipeline: two idempotent handlers and the retry jobs.

    PaymentAuthorized ──capture_authorized_payments──▶ one order per line (CAPTURE_REQUESTED),
                                                       attempt 0 at the PSP, its answer applied
    due retry ──dispatch_due_retries (outbox)──▶ CapturePaymentOrder(n)
    CapturePaymentOrder(n) ──capture_due_orders──▶ attempt n at the PSP, its answer applied
    answer applied: PENDING_CAPTURE(n+1) + a retry in Redis,
                    or CAPTURED / CAPTURE_FAILED + PaymentOrderFinalized (+ the payment's roll-up)

Both handlers are idempotent by state guards: orders are created under ids that travel in the
event, an attempt is made only for an order waiting for exactly that attempt, and its answer is
written only if the order is still in the state the attempt started from (one statement, with
the events it causes). The PSP is called outside any transaction, with a key that changes only
after a definite "not captured" (see domain/payment_order.py): a repeat — a redelivery, a crash
between the PSP call and the write — asks the same key again and gets the same answer.
Postgres, not Redis, says which retries are pending (`next_retry_at`): Redis is the timer, and
a job puts back what Redis lost. A sweeper re-drives orders that stopped moving.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from marketplace_pay.infra import metrics
from marketplace_pay.infra.telemetry import client_span
from marketplace_pay.payments.application.ports import (
    CaptureGateway,
    CaptureOutcome,
    CaptureStore,
    NewOrder,
    OrderChange,
    PspTimeout,
    PspUnavailable,
    RetryUnitOfWork,
)
from marketplace_pay.payments.domain.events import CapturePaymentOrder, PaymentAuthorized, PaymentOrderFinalized
from marketplace_pay.payments.domain.payment_order import CaptureResult, PaymentOrder
from marketplace_pay.shared.backoff import equal_jitter_backoff_ms
from marketplace_pay.shared.clock import Clock
from marketplace_pay.shared.envelope import Envelope, envelope
from marketplace_pay.shared.faults import faults
from marketplace_pay.shared.money import Currency, Money
from marketplace_pay.shared.remote_call import backoff_step

log = logging.getLogger(__name__)

# Consumer names (Kafka consumer groups).
CAPTURE_AUTHORIZED = "payments-capture-authorized"
CAPTURE_RETRIES = "payments-capture-retries"


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


@dataclass(frozen=True, slots=True)
class CapturePolicy:
    timeout_ms: int  # budget of one PSP call
    max_retries: int  # retries after the first attempt before a definite "not captured" fails the order
    base_ms: int  # back-off: base · 2^(n-1), capped, equal jitter
    cap_ms: int


_RESULT_OF = {
    CaptureOutcome.CAPTURED: CaptureResult.CAPTURED,
    CaptureOutcome.DECLINED: CaptureResult.DECLINED,
    CaptureOutcome.RETRYABLE: CaptureResult.RETRYABLE,
    None: CaptureResult.RETRYABLE,  # a status query: the PSP never received the key, nothing was taken
}


def order_fields(order: PaymentOrder, now: datetime) -> dict[str, Any]:
    return {
        "payment_order_id": str(order.payment_order_id),
        "public_payment_order_id": order.public_id,
        "payment_id": str(order.payment_id),
        "public_payment_id": order.public_payment_id,
        "seller_id": order.seller_id,
        "amount_minor": order.amount.amount_minor,
        "currency": order.amount.currency.value,
        "timestamp": now,
    }


class Capturer:
    """Makes capture attempts and applies their answers (shared by both handlers)."""

    def __init__(
        self,
        *,
        store: CaptureStore,
        psp: CaptureGateway,
        retries: RetryQueue,
        clock: Clock,
        policy: CapturePolicy,
        inflight: asyncio.Semaphore,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.psp = psp
        self.retries = retries
        self.clock = clock
        self.policy = policy
        self._inflight = inflight
        self._rng = rng

    async def call_psp(self, order: PaymentOrder) -> CaptureResult:
        asks_status = order.asks_status(self.policy.max_retries)
        operation = "capture_status" if asks_status else "capture"
        async with self._inflight:  # PSP calls in flight are bounded by a setting, not by the bus
            try:
                async with asyncio.timeout(self.policy.timeout_ms / 1000):
                    if asks_status:
                        outcome = await self.psp.capture_status(
                            idempotency_key=order.psp_key, payment_order_id=order.public_id, amount=order.amount
                        )
                    else:
                        outcome = await self.psp.capture(
                            idempotency_key=order.psp_key, payment_order_id=order.public_id, amount=order.amount
                        )
            except (TimeoutError, PspTimeout, PspUnavailable):
                metrics.PSP_UNKNOWN_ANSWERS.labels(operation).inc()
                return CaptureResult.UNKNOWN  # it may have been captured: never a failure
        return _RESULT_OF[outcome]

    async def traced_call(self, order: PaymentOrder, traceparent: str | None) -> CaptureResult:
        """`call_psp` in a span of the trace of the event it serves (`traceparent`)."""
        operation = "psp capture_status" if order.asks_status(self.policy.max_retries) else "psp capture"
        with client_span(
            operation, traceparent, {"payment.id": order.public_payment_id, "payment_order.id": order.public_id}
        ) as span:
            result = await self.call_psp(order)
            span.set_attribute("psp.result", result.value)
            return result

    async def attempt(self, todo: Sequence[tuple[PaymentOrder, Envelope[Any]]]) -> None:
        """Call the PSP for every order (concurrently) and apply the answers in one statement."""
        if not todo:
            return
        results = await asyncio.gather(*(self.traced_call(order, cause.traceparent) for order, cause in todo))
        faults.hit("capture.after_psp")
        now = self.clock.now()
        p = self.policy
        changes: list[OrderChange] = []
        events: list[Envelope[Any]] = []
        scheduled: list[tuple[int, int, int]] = []
        for (order, cause), result in zip(todo, results, strict=True):
            before = order.state()
            step = backoff_step(
                unanswered=result is CaptureResult.UNKNOWN,
                answered_before=not order.psp_outcome_unknown,
                attempt=order.retry_count,
            )
            status = order.apply_result(
                result,
                attempt=order.retry_count,
                now=now,
                max_retries=p.max_retries,
                retry_delay_ms=equal_jitter_backoff_ms(step, base_ms=p.base_ms, cap_ms=p.cap_ms, rng=self._rng),
            )
            changes.append((order, before))
            if status.terminal:
                finalized = PaymentOrderFinalized(
                    **order_fields(order, now), status=status, retry_count=order.retry_count
                )
                events.append(
                    envelope(
                        finalized,
                        aggregate_id=str(order.payment_order_id),
                        timestamp=now,
                        trace_id=cause.trace_id,
                        caused_by=cause,
                    )
                )
            else:
                assert order.next_retry_at is not None
                scheduled.append(
                    (order.payment_order_id, order.retry_count, int(order.next_retry_at.timestamp() * 1000))
                )
        applied = await self.store.save_attempts(changes, events)
        faults.hit("capture.after_commit")
        scheduled = [item for item in scheduled if item[0] in applied]
        if scheduled:
            try:
                await self.retries.schedule(scheduled)
            except Exception as exc:  # noqa: BLE001 - Postgres has next_retry_at; the requeue job repairs
                log.warning(
                    "could not schedule retries in Redis", extra={"retries": len(scheduled), "error": repr(exc)}
                )


# -- 1. PaymentAuthorized → orders → attempt 0 -----------------------------------------------


async def capture_authorized_payments(batch: Sequence[Envelope[PaymentAuthorized]], *, capturer: Capturer) -> None:
    faults.hit("capture.before_orders")
    now = capturer.clock.now()
    new: list[NewOrder] = []
    causes: dict[int, Envelope[PaymentAuthorized]] = {}
    for e in batch:
        for line in e.data.payment_lines:
            order = PaymentOrder.create(
                payment_order_id=int(line.payment_order_id),
                payment_id=int(e.data.payment_id),
                seller_id=line.seller_id,
                amount=Money(line.amount_minor, Currency(line.currency)),
                now=now,
            )
            order.request_capture(now)
            if order.payment_order_id not in causes:
                new.append(NewOrder(order, e.trace_id, e.traceparent))
            causes[order.payment_order_id] = e
    # The ids come from the event: a repeat creates nothing, and only orders still waiting for
    # attempt 0 are attempted (a crash after the insert and before the answer leaves them so).
    waiting = await capturer.store.open_orders(new)
    await capturer.attempt([(order, causes[order.payment_order_id]) for order in waiting])


# -- 2. CapturePaymentOrder(n) → attempt n ------------------------------------------------------


async def capture_due_orders(batch: Sequence[Envelope[CapturePaymentOrder]], *, capturer: Capturer) -> None:
    latest: dict[int, Envelope[CapturePaymentOrder]] = {}
    for e in batch:
        latest[int(e.data.payment_order_id)] = e
    orders = await capturer.store.orders(list(latest))
    await capturer.attempt(
        [
            (order, e)
            for order_id, e in latest.items()
            if (order := orders.get(order_id)) is not None and order.expects(e.data.attempt)
        ]
    )


# -- retries ----------------------------------------------------------------------------------


async def dispatch_due_retries(
    *, uow: Callable[[], RetryUnitOfWork], retries: RetryQueue, clock: Clock, limit: int = 500
) -> int:
    """Due retries → capture commands, through the outbox. Returns how many were dispatched."""
    due = await retries.pop_due(now_ms=clock.now_ms(), limit=limit)
    if not due:
        return 0
    dispatched = await _command(uow, dict(due), clock=clock, touch=False)
    faults.hit("retry.after_dispatch")
    await retries.ack(due)
    return dispatched


async def _command(uow: Callable[[], RetryUnitOfWork], attempts: dict[int, int], *, clock: Clock, touch: bool) -> int:
    """Publish CapturePaymentOrder for each order still waiting for the given attempt."""
    now = clock.now()
    dispatched = []
    async with uow() as tx:
        locked = await tx.lock_orders(list(attempts))
        for order_id, attempt in attempts.items():
            found = locked.get(order_id)
            if found is None or not found[0].expects(attempt):
                continue  # finished, or superseded meanwhile
            order, trace_id, traceparent = found
            if not touch and order.next_retry_at is None:
                continue  # this retry was dispatched already (a duplicate timer, a second dispatcher)
            tx.publish(
                envelope(
                    CapturePaymentOrder(**order_fields(order, now), attempt=attempt),
                    aggregate_id=str(order_id),
                    timestamp=now,
                    trace_id=trace_id,
                    traceparent=traceparent,
                )
            )
            dispatched.append(order_id)
        await tx.mark_dispatched(dispatched, touch=touch)
        await tx.commit()
    return len(dispatched)


async def requeue_lost_retries(
    *, store: CaptureStore, retries: RetryQueue, clock: Clock, overdue_ms: int, limit: int = 1000
) -> int:
    """Postgres is the truth about pending retries: put back in Redis any retry overdue by more
    than `overdue_ms` that was never dispatched (Redis restarted empty, or the process died
    between the commit and scheduling)."""
    overdue = await store.overdue_retries(before=clock.now() - timedelta(milliseconds=overdue_ms), limit=limit)
    if overdue:
        log.warning("requeueing retries missing from Redis", extra={"retries": len(overdue)})
        await retries.schedule(overdue)
    return len(overdue)


async def sweep_stuck_orders(
    *,
    store: CaptureStore,
    uow: Callable[[], RetryUnitOfWork],
    clock: Clock,
    stuck_after_s: int,
    redrive_authorizations: Callable[[datetime], Awaitable[int]] | None = None,
    limit: int = 1000,
) -> int:
    """Find open orders that have not moved for longer than any schedule allows — their command
    was dead-lettered or lost — and drive them again (a capture command for the attempt they
    wait for). Authorized payments whose PaymentAuthorized was dead-lettered before they were
    split into orders have no order to find: `redrive_authorizations` delivers those events
    again (once per `stuck_after_s` at most, while they keep failing). Reported in metrics and
    the log. Returns how many orders (and payments) were re-driven."""
    since = clock.now() - timedelta(seconds=stuck_after_s)
    payments = await redrive_authorizations(since) if redrive_authorizations is not None else 0
    if payments:
        log.warning("authorized payments not split into orders; delivering them again", extra={"payments": payments})
    stuck = await store.stuck_orders(unchanged_since=since, limit=limit)
    metrics.STUCK_ORDERS.set(len(stuck))
    metrics.PSP_UNKNOWN.set(await store.unknown_outcomes())
    if not stuck:
        return payments
    log.warning(
        "payment orders stopped moving; driving them again",
        extra={"orders": len(stuck), "examples": [o.public_id for o in stuck[:5]]},
    )
    redriven = await _command(uow, {o.payment_order_id: o.retry_count for o in stuck}, clock=clock, touch=True)
    metrics.STUCK_REDRIVEN.inc(redriven)
    return redriven + payments
