"""Use case: create a payment and authorize it synchronously at the PSP.

Order of decisions:
1. the request's own rules (sellers unique, lines add up to the total, one currency) → 400;
2. the Idempotency-Key, before anything that depends on stored state: a key already used answers
   from what was stored — the first response, even if the sellers changed since — or refuses
   (another body: 422, still running: 409);
3. the sellers (known, ACTIVE, settling in the payment's currency) → 422;
4. the payment is committed as PENDING_AUTH *before* the PSP is called, so there is never a hold
   at the PSP without a payment here; the PSP's answer and PaymentAuthorized commit together.

At most one authorization per payment: only the request that inserted the payment calls the PSP
(a repeat finds the payment under its key), and the PSP call is idempotent per payment id. A
payment left PENDING_AUTH (timeout, crash, PSP down) is finished by
`resolve_pending_authorizations`, which asks the PSP what it did.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta

import msgspec

from marketplace_pay.infra import metrics
from marketplace_pay.infra.telemetry import client_span, span_for
from marketplace_pay.payments.application.ports import (
    AuthorizationGateway,
    AuthorizationOutcome,
    IdGenerator,
    Keyed,
    PaymentStore,
    PspTimeout,
    PspUnavailable,
    SellerDirectory,
    StoredPayment,
)
from marketplace_pay.payments.domain.payment import Payment, PaymentLine, PaymentStatus
from marketplace_pay.shared.clock import Clock
from marketplace_pay.shared.envelope import envelope
from marketplace_pay.shared.errors import ConflictError, FieldError, UnprocessableError, ValidationError
from marketplace_pay.shared.faults import faults
from marketplace_pay.shared.ids import coord_shard, seller_shard
from marketplace_pay.shared.money import Money

log = logging.getLogger(__name__)


class LineRequest(msgspec.Struct, frozen=True):
    seller_id: str
    amount: Money


class CreatePayment(msgspec.Struct, frozen=True):
    buyer_id: str
    order_id: str
    total: Money
    lines: list[LineRequest]
    keyed: Keyed
    trace_id: str
    traceparent: str | None = None


class Created(msgspec.Struct, frozen=True):
    """A payment this request created or found. `replayed`: it existed before this request."""

    payment: Payment
    replayed: bool


class Replayed(msgspec.Struct, frozen=True):
    """The stored first response for this Idempotency-Key."""

    status: int
    body: bytes


CreatePaymentResult = Created | Replayed
Render = Callable[[Payment], tuple[int, bytes]]


def check_business_rules(cmd: CreatePayment) -> None:
    """The request's own rules, in order; the first broken one is reported."""
    seen: set[str] = set()
    for i, line in enumerate(cmd.lines):
        if line.seller_id in seen:
            raise ValidationError(
                "Duplicate seller ids are not allowed in a single payment",
                errors=[FieldError(f"paymentOrders[{i}].sellerId", f"seller {line.seller_id} appears twice")],
            )
        seen.add(line.seller_id)
    total = sum(line.amount.amount_minor for line in cmd.lines)
    if total != cmd.total.amount_minor:
        raise ValidationError(
            f"Sum of payment order amounts ({total}) must equal total amount ({cmd.total.amount_minor})",
            errors=[FieldError("totalAmount.quantity", f"must equal the sum of the payment orders ({total})")],
        )
    for i, line in enumerate(cmd.lines):
        if line.amount.currency != cmd.total.currency:
            raise ValidationError(
                f"PaymentOrder for seller {line.seller_id} has {line.amount.currency}, "
                f"but payment currency is {cmd.total.currency}",
                errors=[FieldError(f"paymentOrders[{i}].amount.currency", f"must be {cmd.total.currency}")],
            )


async def seller_problems(cmd: CreatePayment, directory: SellerDirectory) -> list[FieldError]:
    accounts = await directory.sellers([line.seller_id for line in cmd.lines])
    errors: list[FieldError] = []
    for i, line in enumerate(cmd.lines):
        account = accounts.get(line.seller_id)
        field = f"paymentOrders[{i}].sellerId"
        if account is None:
            errors.append(FieldError(field, f"seller {line.seller_id} is not known"))
        elif not account.active:
            errors.append(FieldError(field, f"seller {line.seller_id} is not active ({account.status})"))
        elif account.currency != cmd.total.currency:
            errors.append(
                FieldError(
                    field, f"seller {line.seller_id} settles in {account.currency}, payment is in {cmd.total.currency}"
                )
            )
    return errors


def new_payment(cmd: CreatePayment, *, ids: IdGenerator, clock: Clock) -> Payment:
    return Payment.create(
        payment_id=ids.next_id(coord_shard(cmd.buyer_id, cmd.order_id)),
        buyer_id=cmd.buyer_id,
        order_id=cmd.order_id,
        total=cmd.total,
        lines=[
            PaymentLine(
                payment_order_id=ids.next_id(seller_shard(line.seller_id)), seller_id=line.seller_id, amount=line.amount
            )
            for line in cmd.lines
        ],
        now=clock.now(),
    )


async def ask_psp(payment: Payment, *, psp: AuthorizationGateway, timeout_s: float) -> AuthorizationOutcome | None:
    """The PSP's answer, or None when it did not answer in time (the payment stays PENDING_AUTH)."""
    try:
        async with asyncio.timeout(timeout_s):
            return await psp.authorize(payment_id=payment.payment_id, buyer_id=payment.buyer_id, amount=payment.total)
    except (TimeoutError, PspTimeout):
        log.info("psp authorization timed out", extra={"paymentId": payment.public_id})
    except PspUnavailable:
        log.warning("psp unavailable for authorization", extra={"paymentId": payment.public_id})
    return None


async def record_outcome(
    store: PaymentStore,
    payment: Payment,
    outcome: AuthorizationOutcome,
    *,
    clock: Clock,
    trace_id: str,
    traceparent: str | None,
    render: Render | None = None,
) -> Payment:
    """Store AUTHORIZED/DECLINED with PaymentAuthorized (and, with `render`, the response to keep
    for the key). If another actor finished the payment first, returns the stored payment."""
    now = clock.now()
    if outcome is AuthorizationOutcome.APPROVED:
        payment.authorize(now)
    else:
        payment.decline(now)
    events = [
        envelope(e, aggregate_id=e.payment_id, timestamp=now, trace_id=trace_id, traceparent=traceparent)
        for e in payment.pull_events()
    ]
    if await store.record_authorization(payment, events, render(payment) if render else None):
        return payment
    stored = await store.get(payment.payment_id)
    assert stored is not None
    if render is not None:
        await store.keep_response(payment.payment_id, render(stored))
    return stored


def answer_repeat(
    stored: StoredPayment, cmd: CreatePayment, *, clock: Clock, in_progress_ms: int
) -> CreatePaymentResult:
    """The answer to a request whose payment already exists under its key."""
    if cmd.keyed.idempotency_key is None:
        return Created(payment=stored.payment, replayed=True)
    if stored.fingerprint != cmd.keyed.fingerprint:
        raise UnprocessableError("Idempotency-Key was already used with a different request body")
    if stored.response is not None:
        status, body = stored.response
        return Replayed(status=status, body=body)
    running_since = clock.now() - stored.payment.created_at
    if stored.payment.status is PaymentStatus.PENDING_AUTH and running_since < timedelta(milliseconds=in_progress_ms):
        raise ConflictError("A request with this Idempotency-Key is still being processed")
    return Created(payment=stored.payment, replayed=True)


async def create_payment(
    cmd: CreatePayment,
    *,
    render: Render,
    store: PaymentStore,
    sellers: SellerDirectory,
    psp: AuthorizationGateway,
    ids: IdGenerator,
    clock: Clock,
    auth_timeout_ms: int,
    in_progress_ms: int,
) -> CreatePaymentResult:
    check_business_rules(cmd)
    problems = await seller_problems(cmd, sellers)
    keyed = cmd.keyed

    async def repeat() -> CreatePaymentResult | None:
        stored = await store.find(keyed, buyer_id=cmd.buyer_id, order_id=cmd.order_id, total=cmd.total)
        return None if stored is None else answer_repeat(stored, cmd, clock=clock, in_progress_ms=in_progress_ms)

    if problems:
        # The key decides first: a payment stored under it is answered even if a seller changed.
        if keyed.idempotency_key is not None and (answer := await repeat()) is not None:
            return answer
        raise UnprocessableError("One or more sellers cannot be paid", errors=problems)

    payment = new_payment(cmd, ids=ids, clock=clock)
    if not await store.add(payment, keyed=keyed, trace_id=cmd.trace_id, traceparent=cmd.traceparent):
        answer = await repeat()
        if answer is None:  # the conflicting payment went away meanwhile: cannot happen, payments stay
            raise ConflictError("A concurrent request for the same payment is being processed; retry")
        return answer
    faults.hit("payments.after_insert")

    keep = render if keyed.idempotency_key is not None else None
    with client_span("psp authorize", attributes={"payment.id": payment.public_id}) as span:
        outcome = await ask_psp(payment, psp=psp, timeout_s=auth_timeout_ms / 1000)
        span.set_attribute("psp.result", outcome.value if outcome is not None else "TIMEOUT")
    if outcome is None:
        if keep is not None:
            await store.keep_response(payment.payment_id, keep(payment))
        metrics.PAYMENTS_CREATED.labels(PaymentStatus.PENDING_AUTH.value).inc()
        return Created(payment=payment, replayed=False)
    payment = await record_outcome(
        store, payment, outcome, clock=clock, trace_id=cmd.trace_id, traceparent=cmd.traceparent, render=keep
    )
    metrics.PAYMENTS_CREATED.labels(payment.status.value).inc()
    return Created(payment=payment, replayed=False)


async def resolve_pending_authorizations(
    *,
    store: PaymentStore,
    psp: AuthorizationGateway,
    clock: Clock,
    older_than_ms: int,
    lease_ms: int = 5000,
    limit: int = 100,
) -> int:
    """Ask the PSP for the outcome of payments left PENDING_AUTH (timeout, crash, PSP down) and
    finish them. Returns how many were finished.

    Payments are claimed with a lease (committed), so concurrent resolvers never ask about the
    same payment at once and a PSP that keeps failing is asked again only after the lease; the
    PSP is called outside any transaction; each answer is applied guarded on PENDING_AUTH."""
    claimed = await store.claim_pending_authorizations(
        created_before=clock.now() - timedelta(milliseconds=older_than_ms), lease_ms=lease_ms, limit=limit
    )
    finished = 0
    for pending in claimed:
        # in the payment's trace: its span (when sampled) and its trace id in the logs
        with span_for("resolve pending authorization", pending.traceparent, {"payment.id": pending.payment.public_id}):
            outcome = await _final_outcome(pending.payment, psp)
            if outcome is None:
                continue
            await record_outcome(
                store, pending.payment, outcome, clock=clock, trace_id=pending.trace_id, traceparent=pending.traceparent
            )
            finished += 1
    return finished


async def _final_outcome(payment: Payment, psp: AuthorizationGateway) -> AuthorizationOutcome | None:
    try:
        async with asyncio.timeout(5):
            status = await psp.authorization_status(
                payment_id=payment.payment_id, buyer_id=payment.buyer_id, amount=payment.total
            )
            if status is None:  # the PSP never saw it (we died before asking): ask now, same key
                status = await psp.authorize(
                    payment_id=payment.payment_id, buyer_id=payment.buyer_id, amount=payment.total
                )
            return status
    except (TimeoutError, PspTimeout, PspUnavailable):
        log.warning("psp status unavailable, will retry", extra={"paymentId": payment.public_id})
        return None
