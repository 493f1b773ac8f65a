"""Seller payouts: creation (by request or schedule), the bank calls, their retries.

    create_payout ──one transaction──▶ payout PENDING + PAYOUT:<id> journal + PayoutRequested
                                       + LedgerEntriesRecorded          (the money is unavailable at once)
    PayoutRequested / PayPayout(n) ──pay_*──▶ bank call n (outside any transaction), then one
        transaction, guarded on (PENDING, n): PAID + PAYOUT_PAID + PayoutPaid | FAILED +
        PAYOUT_RETURNED + PayoutFailed | PENDING(n+1) with its next call due
    dispatch_due_payouts (job) ──▶ PayPayout(n) for every due (or stuck) payout, through the outbox

**Never below zero.** Creating a payout locks the seller's account row, then reads the seller's
exact balance (committed postings: the folded snapshot plus everything above the horizon —
never the Redis overlay) and writes the PAYOUT journal before the lock is released at commit.
The next payout of the seller waits for the lock and reads a balance with the previous one
deducted. Captures never touch that row. (A refund may still take a seller below zero: the seller
then owes the platform, and the balance shows it.)

Both handlers are idempotent by state guards: a call is made only for a payout waiting for
exactly that call, and its answer written only if the payout is still in the state the call
started from. The bank's key changes only after a definite "not paid", so a repeat (a redelivery,
a crash before the answer was written) asks the same key again: the money is sent at most once.
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
from marketplace_pay.ledger.application.ports import (
    BankGateway,
    BankOutcome,
    BankTimeout,
    BankUnavailable,
    Keyed,
    OpenPayout,
    PayableSeller,
    TreasuryReads,
    TreasuryUnitOfWork,
)
from marketplace_pay.ledger.application.recording import JournalRef, StoredJournal, entry_data
from marketplace_pay.ledger.domain import journal as journals
from marketplace_pay.ledger.domain.accounts import AccountStatus
from marketplace_pay.ledger.domain.events import (
    LedgerEntriesRecorded,
    PayoutFailed,
    PayoutMessage,
    PayoutPaid,
    PayoutRequested,
    PayPayout,
)
from marketplace_pay.ledger.domain.payout import BankResult, Payout, PayoutStatus
from marketplace_pay.shared.backoff import equal_jitter_backoff_ms
from marketplace_pay.shared.clock import Clock
from marketplace_pay.shared.envelope import Envelope, envelope
from marketplace_pay.shared.errors import ConflictError, FieldError, NotFoundError, UnprocessableError
from marketplace_pay.shared.faults import faults
from marketplace_pay.shared.money import Money

log = logging.getLogger(__name__)

# Consumer names (Kafka consumer groups).
PAY_PAYOUTS = "ledger-pay-payouts"
PAY_PAYOUT_RETRIES = "ledger-pay-payout-retries"

Render = Callable[[Payout], tuple[int, bytes]]


class CreatePayout(msgspec.Struct, frozen=True):
    seller_id: str
    amount: Money | None  # None: everything available
    keyed: Keyed
    trace_id: str
    traceparent: str | None = None


class Created(msgspec.Struct, frozen=True):
    """A payout this request created, or found under its key (`replayed`)."""

    payout: Payout
    replayed: bool


class Replayed(msgspec.Struct, frozen=True):
    """The stored first response for this Idempotency-Key."""

    status: int
    body: bytes


# -- creation ------------------------------------------------------------------------------------


def _payout_fields(payout: Payout, now: datetime) -> dict[str, Any]:
    return {
        "payout_id": str(payout.payout_id),
        "public_payout_id": payout.public_id,
        "seller_id": payout.seller_id,
        "amount_minor": payout.amount.amount_minor,
        "currency": payout.amount.currency.value,
        "timestamp": now,
    }


def announce(tx: TreasuryUnitOfWork, stored: Sequence[StoredJournal], *, now: datetime, cause: Envelope[Any]) -> None:
    """Queue the LedgerEntriesRecorded of journals written in `tx` (the balances apply them)."""
    recorded = LedgerEntriesRecorded(
        ledger_entries=[entry_data(s) for s in stored], traceparents=[cause.traceparent] if cause.traceparent else []
    )
    tx.publish(
        envelope(
            recorded, aggregate_id=recorded.partition_key(), timestamp=now, trace_id=cause.trace_id, caused_by=cause
        )
    )


def _amount_error(message: str) -> UnprocessableError:
    return UnprocessableError(message, errors=[FieldError("amount.quantity", message)])


def _amount_to_pay(seller: PayableSeller, requested: Money | None, available_minor: int) -> Money:
    if seller.status is not AccountStatus.ACTIVE:
        raise UnprocessableError(
            f"Seller {seller.seller_id} is {seller.status}: only an ACTIVE seller is paid out",
            errors=[FieldError("sellerId", f"seller {seller.seller_id} is not active ({seller.status})")],
        )
    if requested is None:
        if available_minor <= 0:
            raise _amount_error(f"Nothing available to pay out (available: {available_minor})")
        return Money(available_minor, seller.currency)
    if requested.currency is not seller.currency:
        raise UnprocessableError(
            f"Seller {seller.seller_id} is paid in {seller.currency}, not {requested.currency}",
            errors=[FieldError("amount.currency", f"must be {seller.currency}")],
        )
    if requested.amount_minor > available_minor:
        raise _amount_error(f"Amount {requested.amount_minor} exceeds the available balance {available_minor}")
    return requested


async def _write(
    tx: TreasuryUnitOfWork,
    seller: PayableSeller,
    amount: Money,
    cmd: CreatePayout,
    *,
    now: datetime,
    render: Render | None = None,
) -> Payout:
    """The payout, its PAYOUT journal and their events, in the caller's transaction."""
    payout = Payout.create(payout_id=await tx.payouts.next_id(), seller_id=seller.seller_id, amount=amount, now=now)
    requested = envelope(
        PayoutRequested(**_payout_fields(payout, now)),
        aggregate_id=str(payout.payout_id),
        timestamp=now,
        trace_id=cmd.trace_id,
        traceparent=cmd.traceparent,
    )
    ref = JournalRef(None, None, seller.seller_id, requested.event_id)
    stored = await tx.journals.add_all([(journals.payout(payout.payout_id, seller.seller_id, amount), ref)])
    keep = render(payout) if render is not None and cmd.keyed.idempotency_key is not None else None
    await tx.payouts.add(
        payout,
        account_code=seller.account_code,
        keyed=cmd.keyed,
        response=keep,
        trace_id=cmd.trace_id,
        traceparent=cmd.traceparent,
    )
    tx.publish(requested)
    announce(tx, list(stored.values()), now=now, cause=requested)
    return payout


async def create_payout(
    cmd: CreatePayout, *, uow: Callable[[], TreasuryUnitOfWork], render: Render, clock: Clock
) -> Created | Replayed:
    """Order of decisions: the Idempotency-Key (a running duplicate: 409; another body: 422; the
    same body: the first response), then the seller (unknown: 404; not ACTIVE, other currency:
    422), then the amount against the exact available balance (422). Nothing is written unless
    everything passes."""
    keyed = cmd.keyed
    async with uow() as tx:
        if keyed.idempotency_key is not None:
            if not await tx.payouts.lock_key(keyed.client_id, keyed.idempotency_key):
                raise ConflictError("A request with this Idempotency-Key is still being processed")
            found = await tx.payouts.by_key(keyed.client_id, keyed.idempotency_key)
            if found is not None:
                if found.fingerprint != keyed.fingerprint:
                    raise UnprocessableError("Idempotency-Key was already used with a different request body")
                if found.response is not None:
                    return Replayed(*found.response)
                return Created(found.payout, replayed=True)
        seller = await tx.payouts.lock_seller(cmd.seller_id)
        if seller is None:
            raise NotFoundError(f"Seller {cmd.seller_id} not found")
        available = await tx.payouts.available_minor(seller.account_code)
        amount = _amount_to_pay(seller, cmd.amount, available)
        payout = await _write(tx, seller, amount, cmd, now=clock.now(), render=render)
        await tx.commit()
    metrics.PAYOUTS_CREATED.inc()
    faults.hit("payout.after_create")
    return Created(payout, replayed=False)


async def pay_out_available(
    seller_id: str, *, minimum_minor: int, uow: Callable[[], TreasuryUnitOfWork], clock: Clock
) -> Payout | None:
    """A scheduled payout of everything the seller has available, if the seller is ACTIVE and
    that is at least `minimum_minor`; None otherwise. Decided under the seller's lock, so a run
    repeated after a crash pays only what is left."""
    async with uow() as tx:
        seller = await tx.payouts.lock_seller(seller_id)
        if seller is None or seller.status is not AccountStatus.ACTIVE:
            return None
        available = await tx.payouts.available_minor(seller.account_code)
        if available < max(1, minimum_minor):
            return None
        cmd = CreatePayout(seller_id, None, Keyed("scheduler"), trace_id="0" * 32)
        payout = await _write(tx, seller, Money(available, seller.currency), cmd, now=clock.now())
        await tx.commit()
    metrics.PAYOUTS_CREATED.inc()
    return payout


async def run_scheduled_payouts(
    *,
    minimum_minor: int,
    uow: Callable[[], TreasuryUnitOfWork],
    reads: TreasuryReads,
    clock: Clock,
    progress: Callable[[str, Payout | None], None] | None = None,
) -> list[Payout]:
    """Pay out every ACTIVE seller whose available balance is at least `minimum_minor`."""
    paid = []
    for seller_id in await reads.payable_sellers(minimum_minor):
        payout = await pay_out_available(seller_id, minimum_minor=minimum_minor, uow=uow, clock=clock)
        if progress is not None:
            progress(seller_id, payout)
        if payout is not None:
            paid.append(payout)
    return paid


# -- the bank calls ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PayoutPolicy:
    bank_timeout_ms: int  # budget of one bank call
    max_retries: int  # retries after the first call before a definite "not paid" fails the payout
    base_ms: int  # back-off: base · 2^(n-1), capped, equal jitter
    cap_ms: int
    stuck_after_s: int  # a pending payout with no call scheduled, unchanged this long, is driven again


_RESULT_OF = {
    BankOutcome.PAID: BankResult.PAID,
    BankOutcome.FAILED: BankResult.FAILED,
    BankOutcome.RETRYABLE: BankResult.RETRYABLE,
    None: BankResult.RETRYABLE,  # a status query: the bank never received the key, nothing was sent
}


class Payer:
    """Makes bank calls and applies their answers (shared by both handlers)."""

    def __init__(
        self,
        *,
        uow: Callable[[], TreasuryUnitOfWork],
        reads: TreasuryReads,
        bank: BankGateway,
        clock: Clock,
        policy: PayoutPolicy,
        rng: random.Random | None = None,
    ) -> None:
        self.uow = uow
        self.reads = reads
        self.bank = bank
        self.clock = clock
        self.policy = policy
        self._rng = rng

    async def call_bank(self, payout: Payout) -> BankResult:
        asks_status = payout.asks_status(self.policy.max_retries)
        operation = "payout_status" if asks_status else "payout"
        call = self.bank.payment_status if asks_status else self.bank.pay
        try:
            async with asyncio.timeout(self.policy.bank_timeout_ms / 1000):
                outcome = await call(
                    idempotency_key=payout.bank_key,
                    payout_id=payout.public_id,
                    seller_id=payout.seller_id,
                    amount=payout.amount,
                )
        except (TimeoutError, BankTimeout, BankUnavailable):
            metrics.BANK_UNANSWERED_CALLS.labels(operation).inc()
            return BankResult.UNKNOWN  # it may have been paid: never a failure
        return _RESULT_OF[outcome]

    async def traced_call(self, payout: Payout, traceparent: str | None) -> BankResult:
        """`call_bank` in a span of the trace of the event it serves (`traceparent`)."""
        operation = "bank payout_status" if payout.asks_status(self.policy.max_retries) else "bank payout"
        with client_span(operation, traceparent, {"payout.id": payout.public_id}) as span:
            result = await self.call_bank(payout)
            span.set_attribute("bank.result", result.value)
            return result

    async def attempt(self, todo: Sequence[tuple[OpenPayout, Envelope[Any]]]) -> None:
        """Call the bank for every payout (concurrently), then write each answer."""
        if not todo:
            return
        results = await asyncio.gather(*(self.traced_call(o.payout, cause.traceparent) for o, cause in todo))
        faults.hit("payout.after_bank")
        for (open_, cause), result in zip(todo, results, strict=True):
            await self._apply(open_.payout, result, cause)

    async def _apply(self, payout: Payout, result: BankResult, cause: Envelope[Any]) -> None:
        p = self.policy
        now = self.clock.now()
        before = payout.state()
        delay_ms = equal_jitter_backoff_ms(payout.attempt + 1, base_ms=p.base_ms, cap_ms=p.cap_ms, rng=self._rng)
        status = payout.apply(
            result, attempt=payout.attempt, now=now, max_retries=p.max_retries, retry_delay_ms=delay_ms
        )
        async with self.uow() as tx:
            if not await tx.payouts.save(payout, before=before):
                return  # answered already (a redelivery, a re-drive): nothing more to do
            if status.final:
                event: PayoutMessage
                if status is PayoutStatus.PAID:
                    entry = journals.payout_paid(payout.payout_id, payout.amount)
                    event = PayoutPaid(**_payout_fields(payout, now))
                else:
                    entry = journals.payout_returned(payout.payout_id, payout.seller_id, payout.amount)
                    event = PayoutFailed(**_payout_fields(payout, now))
                final = envelope(
                    event, aggregate_id=str(payout.payout_id), timestamp=now, trace_id=cause.trace_id, caused_by=cause
                )
                ref = JournalRef(None, None, payout.seller_id, final.event_id)
                stored = await tx.journals.add_all([(entry, ref)])
                tx.publish(final)
                announce(tx, list(stored.values()), now=now, cause=final)
            await tx.commit()
        if status.final:
            metrics.PAYOUT_OUTCOMES.labels(status.value).inc()
            log.info("payout %s", status.value.lower(), extra={"payoutId": payout.public_id})


async def pay_requested_payouts(batch: Sequence[Envelope[PayoutRequested]], *, payer: Payer) -> None:
    """PayoutRequested → the first bank call of each payout still waiting for it."""
    await _pay({int(e.data.payout_id): (0, e) for e in batch}, payer)


async def pay_due_payouts(batch: Sequence[Envelope[PayPayout]], *, payer: Payer) -> None:
    """PayPayout(n) → bank call n of each payout still waiting for exactly that call."""
    await _pay({int(e.data.payout_id): (e.data.attempt, e) for e in batch}, payer)


async def _pay(wanted: dict[int, tuple[int, Envelope[Any]]], payer: Payer) -> None:
    found = await payer.reads.payouts(list(wanted))
    await payer.attempt(
        [
            (open_, cause)
            for payout_id, (attempt, cause) in wanted.items()
            if (open_ := found.get(payout_id)) is not None and open_.payout.expects(attempt)
        ]
    )


async def dispatch_due_payouts(
    *, uow: Callable[[], TreasuryUnitOfWork], clock: Clock, stuck_after_s: int, limit: int = 200
) -> int:
    """Due bank calls — and payouts that stopped moving (their event dead-lettered or lost) —
    become PayPayout commands, through the outbox. Returns how many were dispatched."""
    now = clock.now()
    async with uow() as tx:
        due = await tx.payouts.claim_due(now=now, stuck_before=now - timedelta(seconds=stuck_after_s), limit=limit)
        for open_ in due:
            p = open_.payout
            tx.publish(
                envelope(
                    PayPayout(**_payout_fields(p, now), attempt=p.attempt),
                    aggregate_id=str(p.payout_id),
                    timestamp=now,
                    trace_id=open_.trace_id,
                    traceparent=open_.traceparent,
                )
            )
        await tx.commit()
    metrics.PAYOUTS_DISPATCHED.inc(len(due))
    return len(due)
