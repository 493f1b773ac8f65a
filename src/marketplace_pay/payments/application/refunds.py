"""Refunds: the request, the PSP calls, their retries.

    request_refund ──one transaction, under the order's row lock──▶ refund PENDING, its amount
                   reserved on the order, RefundRequested
    RefundRequested / CallRefund(n) ──call_*──▶ PSP call n (outside any transaction), then one
        transaction, guarded on (PENDING, n): SUCCEEDED + the amount refunded on the order and
        its payment + RefundSucceeded | FAILED + the reservation released + RefundFailed |
        PENDING(n+1) with its next call due
    dispatch_due_refunds (job) ──▶ CallRefund(n) for every due (or stuck) refund, through the outbox

**Never more than was captured.** What an order can still refund is its captured amount minus
what it refunded minus what pending refunds reserved, read and reserved under the order's row
lock: of two concurrent refunds of the last euro, one is refused (422). The capture pipeline no
longer writes an order once it is CAPTURED, so the lock never slows it.

Both handlers are idempotent by state guards, like capture: a call is made only for a refund
waiting for exactly that call, and its answer is written only if the refund is still in the
state the call started from. The PSP key changes only after a definite "not refunded", so a
repeat — a redelivery, a crash between the PSP's answer and the write — asks the same key again
and gets the same answer: the shopper is refunded at most once.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import msgspec

from marketplace_pay.infra import metrics
from marketplace_pay.infra.telemetry import client_span
from marketplace_pay.payments.application.create_payment import Replayed
from marketplace_pay.payments.application.ports import (
    Keyed,
    OpenRefund,
    PspTimeout,
    PspUnavailable,
    RefundGateway,
    RefundOutcome,
    RefundReads,
    RefundUnitOfWork,
)
from marketplace_pay.payments.domain.events import (
    CallRefund,
    RefundFailed,
    RefundMessage,
    RefundRequested,
    RefundSucceeded,
)
from marketplace_pay.payments.domain.payment_order import PaymentOrderStatus
from marketplace_pay.payments.domain.refund import Refund, RefundStatus
from marketplace_pay.shared.backoff import equal_jitter_backoff_ms
from marketplace_pay.shared.clock import Clock
from marketplace_pay.shared.envelope import Envelope, envelope
from marketplace_pay.shared.errors import ConflictError, FieldError, NotFoundError, UnprocessableError
from marketplace_pay.shared.faults import faults
from marketplace_pay.shared.money import Money
from marketplace_pay.shared.remote_call import CallResult, backoff_step

log = logging.getLogger(__name__)

# Consumer names (Kafka consumer groups).
CALL_REQUESTED_REFUNDS = "payments-refund-requested"
CALL_REFUND_RETRIES = "payments-refund-retries"

Render = Callable[[Refund], tuple[int, bytes]]


class RequestRefund(msgspec.Struct, frozen=True):
    payment_id: int
    payment_order_id: int
    amount: Money
    reason: str | None
    keyed: Keyed
    trace_id: str
    traceparent: str | None = None


class Requested(msgspec.Struct, frozen=True):
    """A refund this request created, or found under its key (`replayed`)."""

    refund: Refund
    replayed: bool


def refund_fields(refund: Refund, now: datetime) -> dict[str, Any]:
    return {
        "refund_id": str(refund.refund_id),
        "public_refund_id": refund.public_id,
        "payment_id": str(refund.payment_id),
        "public_payment_id": refund.public_payment_id,
        "payment_order_id": str(refund.payment_order_id),
        "public_payment_order_id": refund.public_payment_order_id,
        "seller_id": refund.seller_id,
        "amount_minor": refund.amount.amount_minor,
        "currency": refund.amount.currency.value,
        "timestamp": now,
    }


def _amount_error(message: str, field: str = "amount.quantity") -> UnprocessableError:
    return UnprocessableError(message, errors=[FieldError(field, message)])


async def request_refund(
    cmd: RequestRefund,
    *,
    uow: Callable[[], RefundUnitOfWork],
    render: Render,
    clock: Clock,
) -> Requested | Replayed:
    """Order of decisions: the Idempotency-Key (a running duplicate: 409; another body: 422; the
    same body: the first response), then the payment and its order (unknown: 404), then the
    order's state, currency and what it can still refund (422). Nothing is written unless
    everything passes."""
    keyed = cmd.keyed
    async with uow() as tx:
        if keyed.idempotency_key is not None:
            if not await tx.lock_key(keyed.client_id, keyed.idempotency_key):
                raise ConflictError("A request with this Idempotency-Key is still being processed")
            found = await tx.by_key(keyed.client_id, keyed.idempotency_key)
            if found is not None:
                if found.fingerprint != keyed.fingerprint:
                    raise UnprocessableError("Idempotency-Key was already used with a different request body")
                if found.response is not None:
                    return Replayed(*found.response)
                return Requested(found.refund, replayed=True)
        order = await tx.lock_order(cmd.payment_id, cmd.payment_order_id)
        if order is None:
            if not await tx.payment_exists(cmd.payment_id):
                raise NotFoundError("Payment not found")
            raise NotFoundError("The payment has no such payment order")
        if order.status is not PaymentOrderStatus.CAPTURED:
            raise _amount_error(
                f"Only a CAPTURED payment order can be refunded; this one is {order.status}", "paymentOrderId"
            )
        if cmd.amount.currency is not order.amount.currency:
            raise _amount_error(f"The payment order is in {order.amount.currency}", "amount.currency")
        if cmd.amount.amount_minor > order.refundable_minor:
            raise _amount_error(
                f"Amount {cmd.amount.amount_minor} exceeds what the order can still refund: "
                f"{order.refundable_minor} (captured {order.amount.amount_minor}, refunded {order.refunded_minor}, "
                f"pending {order.reserved_minor})"
            )
        now = clock.now()
        refund = Refund(
            refund_id=await tx.next_id(),
            payment_id=order.payment_id,
            payment_order_id=order.payment_order_id,
            seller_id=order.seller_id,
            amount=cmd.amount,
            reason=cmd.reason,
            status=RefundStatus.PENDING,
            created_at=now,
            updated_at=now,
        )
        keep = render(refund) if keyed.idempotency_key is not None else None
        await tx.add(refund, keyed=keyed, response=keep, trace_id=cmd.trace_id, traceparent=cmd.traceparent)
        tx.publish(
            envelope(
                RefundRequested(**refund_fields(refund, now)),
                aggregate_id=str(refund.payment_order_id),
                timestamp=now,
                trace_id=cmd.trace_id,
                traceparent=cmd.traceparent,
            )
        )
        await tx.commit()
    return Requested(refund, replayed=False)


# -- the PSP calls -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RefundPolicy:
    timeout_ms: int  # budget of one PSP call
    max_retries: int  # retries after the first call before a definite "not refunded" fails the refund
    base_ms: int  # back-off: base · 2^(n-1), capped, equal jitter
    cap_ms: int
    stuck_after_s: int  # a pending refund with no call scheduled, unchanged this long, is driven again


_RESULT_OF = {
    RefundOutcome.REFUNDED: CallResult.DONE,
    RefundOutcome.DECLINED: CallResult.REFUSED,
    RefundOutcome.RETRYABLE: CallResult.RETRYABLE,
    None: CallResult.RETRYABLE,  # a status query: the PSP never received the key, nothing was refunded
}


class Refunder:
    """Makes PSP refund calls and applies their answers (shared by both handlers)."""

    def __init__(
        self,
        *,
        uow: Callable[[], RefundUnitOfWork],
        reads: RefundReads,
        psp: RefundGateway,
        clock: Clock,
        policy: RefundPolicy,
        inflight: asyncio.Semaphore,
        rng: random.Random | None = None,
    ) -> None:
        self.uow = uow
        self.reads = reads
        self.psp = psp
        self.clock = clock
        self.policy = policy
        self._inflight = inflight
        self._rng = rng

    async def call_psp(self, refund: Refund) -> CallResult:
        asks_status = refund.asks_status(self.policy.max_retries)
        operation = "refund_status" if asks_status else "refund"
        call = self.psp.refund_status if asks_status else self.psp.refund
        async with self._inflight:  # shares the bound on PSP calls in flight with capture
            try:
                async with asyncio.timeout(self.policy.timeout_ms / 1000):
                    outcome = await call(
                        idempotency_key=refund.psp_key,
                        refund_id=refund.public_id,
                        payment_order_id=refund.public_payment_order_id,
                        amount=refund.amount,
                    )
            except (TimeoutError, PspTimeout, PspUnavailable):
                metrics.PSP_UNKNOWN_ANSWERS.labels(operation).inc()
                return CallResult.UNKNOWN  # it may have been refunded: never a failure
        return _RESULT_OF[outcome]

    async def traced_call(self, refund: Refund, traceparent: str | None) -> CallResult:
        """`call_psp` in a span of the trace of the event it serves (`traceparent`)."""
        operation = "psp refund_status" if refund.asks_status(self.policy.max_retries) else "psp refund"
        attributes = {"refund.id": refund.public_id, "payment.id": refund.public_payment_id}
        with client_span(operation, traceparent, attributes) as span:
            result = await self.call_psp(refund)
            span.set_attribute("psp.result", result.value)
            return result

    async def attempt(self, todo: Sequence[tuple[Refund, Envelope[Any]]]) -> None:
        """Call the PSP for every refund (concurrently), then write each answer."""
        if not todo:
            return
        results = await asyncio.gather(*(self.traced_call(refund, cause.traceparent) for refund, cause in todo))
        faults.hit("refund.after_psp")
        for (refund, cause), result in zip(todo, results, strict=True):
            await self._apply(refund, result, cause)

    async def _apply(self, refund: Refund, result: CallResult, cause: Envelope[Any]) -> None:
        p = self.policy
        now = self.clock.now()
        before = refund.state()
        step = backoff_step(
            unanswered=result is CallResult.UNKNOWN,
            answered_before=not refund.psp_outcome_unknown,
            attempt=refund.attempt,
        )
        delay_ms = equal_jitter_backoff_ms(step, base_ms=p.base_ms, cap_ms=p.cap_ms, rng=self._rng)
        status = refund.apply(
            result, attempt=refund.attempt, now=now, max_retries=p.max_retries, retry_delay_ms=delay_ms
        )
        async with self.uow() as tx:
            if not await tx.save(refund, before=before):
                return  # answered already (a redelivery, a re-drive): nothing more to do
            if status.final:
                event: RefundMessage
                if status is RefundStatus.SUCCEEDED:
                    settled = await tx.settle(refund)
                    event = RefundSucceeded(
                        **refund_fields(refund, now),
                        order_amount_minor=settled.order_amount_minor,
                        order_refunded_minor=settled.order_refunded_minor,
                    )
                else:
                    await tx.release(refund)
                    event = RefundFailed(**refund_fields(refund, now))
                tx.publish(
                    envelope(
                        event,
                        aggregate_id=str(refund.payment_order_id),
                        timestamp=now,
                        trace_id=cause.trace_id,
                        caused_by=cause,
                    )
                )
            await tx.commit()
        faults.hit("refund.after_commit")
        if status.final:
            metrics.REFUND_OUTCOMES.labels(status.value).inc()
            log.info("refund %s", status.value.lower(), extra={"refundId": refund.public_id})


async def call_requested_refunds(batch: Sequence[Envelope[RefundRequested]], *, refunder: Refunder) -> None:
    """RefundRequested → the first PSP call of each refund still waiting for it."""
    await _call({int(e.data.refund_id): (0, e) for e in batch}, refunder)


async def call_due_refunds(batch: Sequence[Envelope[CallRefund]], *, refunder: Refunder) -> None:
    """CallRefund(n) → PSP call n of each refund still waiting for exactly that call."""
    await _call({int(e.data.refund_id): (e.data.attempt, e) for e in batch}, refunder)


async def _call(wanted: dict[int, tuple[int, Envelope[Any]]], refunder: Refunder) -> None:
    found = await refunder.reads.open_refunds(list(wanted))
    await refunder.attempt(
        [
            (open_.refund, cause)
            for refund_id, (attempt, cause) in wanted.items()
            if (open_ := found.get(refund_id)) is not None and open_.refund.expects(attempt)
        ]
    )


async def dispatch_due_refunds(
    *, uow: Callable[[], RefundUnitOfWork], clock: Clock, stuck_after_s: int, limit: int = 200
) -> int:
    """Due PSP calls — and refunds that stopped moving (their event dead-lettered or lost) —
    become CallRefund commands, through the outbox. Returns how many were dispatched."""
    now = clock.now()
    async with uow() as tx:
        due: list[OpenRefund] = await tx.claim_due(
            now=now, stuck_before=now - timedelta(seconds=stuck_after_s), limit=limit
        )
        for open_ in due:
            r = open_.refund
            tx.publish(
                envelope(
                    CallRefund(**refund_fields(r, now), attempt=r.attempt),
                    aggregate_id=str(r.payment_order_id),
                    timestamp=now,
                    trace_id=open_.trace_id,
                    traceparent=open_.traceparent,
                )
            )
        await tx.commit()
    return len(due)
