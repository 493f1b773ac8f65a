"""Use case: create a payment and authorize it synchronously at the PSP (SPEC §3.3).

Crash safety: the payment is committed as PENDING_AUTH *before* the PSP is called, so there
is never a hold at the PSP without a payment here. If the process dies after that commit,
`resolve_pending_authorizations` asks the PSP for the outcome. The outcome and the
PaymentAuthorized event commit in one transaction (outbox).

At most one authorization per payment: only the request that inserted the payment (or, with
an Idempotency-Key, the request that holds the key) calls the PSP; concurrent repeats see the
existing payment. The PSP call itself is idempotent per payment id as a second line of defence.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta

import msgspec

from marketplace_pay.payments.application.ports import (
    Acquired,
    AuthorizationGateway,
    AuthorizationOutcome,
    IdGenerator,
    KeyInProgress,
    KeyMismatch,
    PaymentsUnitOfWork,
    PspTimeout,
    PspUnavailable,
    Replay,
    SellerDirectory,
)
from marketplace_pay.payments.domain.payment import Payment, PaymentLine, PaymentStatus
from marketplace_pay.shared.clock import Clock
from marketplace_pay.shared.envelope import envelope
from marketplace_pay.shared.faults import faults
from marketplace_pay.shared.errors import ConflictError, FieldError, UnprocessableError, ValidationError
from marketplace_pay.shared.ids import coord_shard, seller_shard
from marketplace_pay.shared.money import Money

log = logging.getLogger(__name__)


class LineRequest(msgspec.Struct, frozen=True):
    seller_id: str
    amount: Money


class IdempotencyRequest(msgspec.Struct, frozen=True):
    scope: str
    key: str
    fingerprint: bytes

    @property
    def stored_key(self) -> str:
        return f"{self.scope}\x1f{self.key}"


class CreatePayment(msgspec.Struct, frozen=True):
    buyer_id: str
    order_id: str
    total: Money
    lines: list[LineRequest]
    trace_id: str
    traceparent: str | None = None
    idempotency: IdempotencyRequest | None = None


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
    """The stateless rules, in the order SPEC §3.3 gives them; the first broken one is reported."""
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


async def check_sellers(cmd: CreatePayment, directory: SellerDirectory) -> None:
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
                FieldError(field, f"seller {line.seller_id} settles in {account.currency}, payment is in {cmd.total.currency}")
            )
    if errors:
        raise UnprocessableError("One or more sellers cannot be paid", errors=errors)


def new_payment(cmd: CreatePayment, *, ids: IdGenerator, clock: Clock) -> Payment:
    return Payment.create(
        payment_id=ids.next_id(coord_shard(cmd.buyer_id, cmd.order_id)),
        buyer_id=cmd.buyer_id,
        order_id=cmd.order_id,
        total=cmd.total,
        lines=[
            PaymentLine(payment_order_id=ids.next_id(seller_shard(line.seller_id)), seller_id=line.seller_id, amount=line.amount)
            for line in cmd.lines
        ],
        now=clock.now(),
    )


async def ask_psp(
    payment: Payment, *, psp: AuthorizationGateway, timeout_s: float
) -> AuthorizationOutcome | None:
    """The PSP's answer, or None when it did not answer in time (the payment stays PENDING_AUTH)."""
    try:
        async with asyncio.timeout(timeout_s):
            return await psp.authorize(payment_id=payment.payment_id, buyer_id=payment.buyer_id, amount=payment.total)
    except (TimeoutError, PspTimeout):
        log.info("psp authorization timed out", extra={"paymentId": payment.public_id})
    except PspUnavailable:
        log.warning("psp unavailable for authorization", extra={"paymentId": payment.public_id})
    return None


def apply_outcome(payment: Payment, outcome: AuthorizationOutcome, clock: Clock) -> None:
    if outcome is AuthorizationOutcome.APPROVED:
        payment.authorize(clock.now())
    else:
        payment.decline(clock.now())


async def record_outcome(
    uow: PaymentsUnitOfWork,
    payment: Payment,
    outcome: AuthorizationOutcome,
    *,
    clock: Clock,
    trace_id: str,
    traceparent: str | None,
) -> Payment:
    """Within `uow`: store AUTHORIZED/DECLINED and queue PaymentAuthorized. If another actor
    finished the payment first, returns the stored payment instead."""
    apply_outcome(payment, outcome, clock)
    if not await uow.payments.save_authorization(payment):
        stored = await uow.payments.get(payment.payment_id)
        assert stored is not None
        return stored
    for event in payment.pull_events():
        uow.publish(
            envelope(
                event,
                aggregate_id=event.payment_id,
                timestamp=clock.now(),
                trace_id=trace_id,
                traceparent=traceparent,
            )
        )
    return payment


async def create_payment(
    cmd: CreatePayment,
    *,
    render: Render,
    uow: Callable[[], PaymentsUnitOfWork],
    sellers: SellerDirectory,
    psp: AuthorizationGateway,
    ids: IdGenerator,
    clock: Clock,
    auth_timeout_ms: int,
    idempotency_lease_ms: int,
) -> CreatePaymentResult:
    check_business_rules(cmd)
    await check_sellers(cmd, sellers)

    token: str | None = None
    key = cmd.idempotency
    if key is not None:
        async with uow() as tx:
            begun = await tx.idempotency.begin(
                scope=key.scope, key=key.key, fingerprint=key.fingerprint, lease_ms=idempotency_lease_ms
            )
            await tx.commit()
        match begun:
            case Replay(status=status, body=body):
                return Replayed(status=status, body=body)
            case KeyMismatch():
                raise UnprocessableError("Idempotency-Key was already used with a different request body")
            case KeyInProgress():
                raise ConflictError("A request with this Idempotency-Key is still being processed")
            case Acquired(token=acquired):
                token = acquired

    completed = False
    try:
        result = await _create_and_authorize(
            cmd, render=render, token=token, uow=uow, psp=psp, ids=ids, clock=clock, auth_timeout_ms=auth_timeout_ms
        )
        completed = True
        return result
    finally:
        if key is not None and token is not None and not completed:
            await _release_quietly(uow, key, token)


async def _create_and_authorize(
    cmd: CreatePayment,
    *,
    render: Render,
    token: str | None,
    uow: Callable[[], PaymentsUnitOfWork],
    psp: AuthorizationGateway,
    ids: IdGenerator,
    clock: Clock,
    auth_timeout_ms: int,
) -> Created:
    key = cmd.idempotency
    payment = new_payment(cmd, ids=ids, clock=clock)
    async with uow() as tx:
        existing = await tx.payments.add(
            payment,
            idempotency_key=key.stored_key if key else None,
            trace_id=cmd.trace_id,
            traceparent=cmd.traceparent,
        )
        await tx.commit()
    faults.hit("payments.after_insert")

    if existing is not None and (key is None or existing.status is not PaymentStatus.PENDING_AUTH):
        # A repeat: never a second authorization. With a key, store the response we give.
        if key is not None and token is not None:
            await _complete(uow, key, token, render(existing))
        return Created(payment=existing, replayed=True)

    # Ours to authorize: a new payment, or (with a key whose previous holder died) a
    # payment still PENDING_AUTH.
    replayed = existing is not None
    payment = existing or payment
    outcome = await ask_psp(payment, psp=psp, timeout_s=auth_timeout_ms / 1000)
    if outcome is None:
        if key is not None and token is not None:
            await _complete(uow, key, token, render(payment))
        return Created(payment=payment, replayed=replayed)

    async with uow() as tx:
        payment = await record_outcome(
            tx, payment, outcome, clock=clock, trace_id=cmd.trace_id, traceparent=cmd.traceparent
        )
        if key is not None and token is not None:
            status, body = render(payment)
            await tx.idempotency.complete(scope=key.scope, key=key.key, token=token, status=status, body=body)
        await tx.commit()
    return Created(payment=payment, replayed=replayed)


async def _complete(
    uow: Callable[[], PaymentsUnitOfWork], key: IdempotencyRequest, token: str, response: tuple[int, bytes]
) -> None:
    async with uow() as tx:
        await tx.idempotency.complete(scope=key.scope, key=key.key, token=token, status=response[0], body=response[1])
        await tx.commit()


async def _release_quietly(uow: Callable[[], PaymentsUnitOfWork], key: IdempotencyRequest, token: str) -> None:
    try:
        async with uow() as tx:
            await tx.idempotency.release(scope=key.scope, key=key.key, token=token)
            await tx.commit()
    except Exception:  # the lease expires on its own; the client may retry then
        log.warning("could not release idempotency key", exc_info=True)


async def resolve_pending_authorizations(
    *,
    uow: Callable[[], PaymentsUnitOfWork],
    psp: AuthorizationGateway,
    clock: Clock,
    older_than_ms: int,
    lease_ms: int = 5000,
    limit: int = 100,
) -> int:
    """Ask the PSP for the outcome of payments left PENDING_AUTH (timeout, crash, PSP down)
    and finish them. Returns how many were finished.

    Payments are claimed with a lease (committed), so concurrent resolvers never ask about the
    same payment at once and a PSP that keeps failing is asked again only after the lease; the
    PSP is called outside any transaction; each answer is applied in its own transaction,
    guarded on PENDING_AUTH."""
    async with uow() as tx:
        claimed = await tx.payments.claim_pending_authorizations(
            created_before=clock.now() - timedelta(milliseconds=older_than_ms), lease_ms=lease_ms, limit=limit
        )
        await tx.commit()
    finished = 0
    for pending in claimed:
        outcome = await _final_outcome(pending.payment, psp)
        if outcome is None:
            continue
        async with uow() as tx:
            await record_outcome(
                tx, pending.payment, outcome, clock=clock, trace_id=pending.trace_id, traceparent=pending.traceparent
            )
            await tx.commit()
        finished += 1
    return finished


async def _final_outcome(payment: Payment, psp: AuthorizationGateway) -> AuthorizationOutcome | None:
    try:
        async with asyncio.timeout(5):
            status = await psp.authorization_status(
                payment_id=payment.payment_id, buyer_id=payment.buyer_id, amount=payment.total
            )
            if status is None:  # the PSP never saw it (we died before asking): ask now, same key
                status = await psp.authorize(payment_id=payment.payment_id, buyer_id=payment.buyer_id, amount=payment.total)
            return status
    except (TimeoutError, PspTimeout, PspUnavailable):
        log.warning("psp status unavailable, will retry", extra={"paymentId": payment.public_id})
        return None
