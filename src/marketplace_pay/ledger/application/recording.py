"""Recording money movements: the payments context's events become journals.

    PaymentAuthorized      ──▶ AUTH:<paymentId>
    PaymentOrderFinalized  ──▶ CAPTURE:<orderId> (+ COMMISSION:<orderId>) | AUTH_RELEASE:<orderId>
    RefundSucceeded        ──▶ REFUND:<refundId> (+ COMMISSION_REFUND:<refundId>)
    every recording        ──▶ LedgerEntriesRecorded (the balances consume it)

Recording is idempotent by journal id: an event seen again finds its journals and announces them
again, so LedgerEntriesRecorded is never lost (a repeat after a crash between the journals'
commit and the event's delivery still reaches the balances). One LedgerEntriesRecorded carries
every journal of a handler batch; its id is derived from the journals it names. Journals,
postings and the event commit together.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol

import msgspec

from marketplace_pay.infra import metrics
from marketplace_pay.infra.failures import TransientError
from marketplace_pay.ledger.domain import journal as journals
from marketplace_pay.ledger.domain.events import LedgerEntriesRecorded, LedgerEntryData, PostingData
from marketplace_pay.ledger.domain.journal import JournalEntry
from marketplace_pay.payments import PaymentAuthorized, PaymentOrderFinalized, PaymentOrderStatus, RefundSucceeded
from marketplace_pay.shared.clock import Clock
from marketplace_pay.shared.envelope import Envelope, envelope
from marketplace_pay.shared.ids import id_timestamp_ms
from marketplace_pay.shared.money import Currency, Money

log = logging.getLogger(__name__)

# Consumer names (Kafka consumer groups).
RECORD_AUTHORIZATIONS = "ledger-record-authorizations"
RECORD_FINALIZATIONS = "ledger-record-finalizations"
RECORD_REFUNDS = "ledger-record-refunds"


class JournalRef(msgspec.Struct, frozen=True):
    """What a journal is about, for the statement and the journal-entries reads."""

    payment_id: int | None  # None: not about one payment (a payout, a settlement)
    payment_order_id: int | None
    seller_id: str | None
    source_event_id: str


class StoredJournal(msgspec.Struct, frozen=True):
    journal: JournalEntry
    seq: int
    tx: int
    created_at: datetime


class OrderCommission(msgspec.Struct, frozen=True):
    """What the ledger holds about one payment order's commission."""

    captured: bool  # its CAPTURE journal is recorded
    fee_minor: int  # its COMMISSION journal's amount (0: none)
    fee_refunded_minor: int  # given back by its refunds' COMMISSION_REFUND journals so far


class JournalRepository(Protocol):
    async def add_all(self, items: Sequence[tuple[JournalEntry, JournalRef]]) -> dict[str, StoredJournal]:
        """Write the journals not recorded yet, with their postings; return every given journal
        as stored (those recorded before, as they were recorded)."""
        ...

    async def order_commission(self, payment_id: int, payment_order_id: int, *, excluding: str) -> OrderCommission:
        """The order's commission, ignoring the journal `excluding`; the order's commission
        refunds are serialized from here until commit."""
        ...


class LedgerUnitOfWork(Protocol):
    @property
    def journals(self) -> JournalRepository: ...

    async def __aenter__(self) -> LedgerUnitOfWork: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    def publish(self, *envelopes: Envelope[Any]) -> None: ...

    async def commit(self) -> None: ...


class CommissionRates(Protocol):
    def forget(self, seller_id: str) -> None:
        """Ask the directory itself next time (the answer may be out of date)."""
        ...

    async def commission_bps(self, seller_ids: Sequence[str]) -> dict[str, int]:
        """Each seller's commission rate (basis points); may answer from a short-lived cache."""
        ...


class Recording(msgspec.Struct, frozen=True):
    """One fact to record: its journals and the event that caused it."""

    journals: list[JournalEntry]
    ref: JournalRef
    cause: Envelope[Any]


class UnknownSeller(LookupError):
    """A captured order's seller is missing from the account directory."""


class UnknownRecording(ValueError):
    """An event this ledger does not know how to record (dead-lettered, not dropped)."""


def _authorization(e: Envelope[PaymentAuthorized]) -> Recording:
    d = e.data
    amount = Money(d.total_amount_minor, Currency(d.currency))
    return Recording(
        [journals.auth_hold(int(d.payment_id), amount)], JournalRef(int(d.payment_id), None, None, e.event_id), e
    )


def _finalization(e: Envelope[PaymentOrderFinalized], commission_bps: int) -> Recording:
    d = e.data
    amount = Money(d.amount_minor, Currency(d.currency))
    order_id = int(d.payment_order_id)
    if d.status == PaymentOrderStatus.CAPTURED:
        fee = journals.commission(order_id, d.seller_id, amount, commission_bps)
        entries = [journals.capture(order_id, d.seller_id, amount), *([fee] if fee else [])]
    elif d.status == PaymentOrderStatus.CAPTURE_FAILED:
        entries = [journals.auth_release(order_id, amount)]
    else:
        raise UnknownRecording(f"cannot record final status {d.status!r}")
    return Recording(entries, JournalRef(int(d.payment_id), order_id, d.seller_id, e.event_id), e)


def entry_data(stored: StoredJournal) -> LedgerEntryData:
    j = stored.journal
    return LedgerEntryData(
        seq=stored.seq,
        tx=stored.tx,
        journal_entry_id=j.journal_id,
        journal_type=j.type.value,
        currency=j.currency.value,
        created_at=stored.created_at,
        postings=[PostingData(p.account.code, p.signed_amount_minor) for p in j.postings],
    )


def _announce(
    tx: LedgerUnitOfWork, recordings: Sequence[Recording], stored: dict[str, StoredJournal], now: datetime
) -> None:
    recorded = LedgerEntriesRecorded(
        ledger_entries=[entry_data(stored[j.journal_id]) for r in recordings for j in r.journals],
        traceparents=list(dict.fromkeys(tp for r in recordings if (tp := r.cause.traceparent))),
    )
    first = recordings[0].cause
    tx.publish(
        envelope(
            recorded, aggregate_id=recorded.partition_key(), timestamp=now, trace_id=first.trace_id, caused_by=first
        )
    )


async def _record(recordings: Sequence[Recording], *, uow: Callable[[], LedgerUnitOfWork], clock: Clock) -> None:
    if not recordings:
        return
    async with uow() as tx:
        stored = await tx.journals.add_all([(j, r.ref) for r in recordings for j in r.journals])
        _announce(tx, recordings, stored, clock.now())
        await tx.commit()


async def record_authorizations(
    batch: Sequence[Envelope[PaymentAuthorized]], *, uow: Callable[[], LedgerUnitOfWork], clock: Clock
) -> None:
    await _record([_authorization(e) for e in _once(batch)], uow=uow, clock=clock)


async def record_finalizations(
    batch: Sequence[Envelope[PaymentOrderFinalized]],
    *,
    uow: Callable[[], LedgerUnitOfWork],
    rates: CommissionRates,
    clock: Clock,
) -> None:
    events = _once(batch)
    bps = await _commission_rates(
        {e.data.seller_id for e in events if e.data.status == PaymentOrderStatus.CAPTURED}, rates
    )
    await _record([_finalization(e, bps.get(e.data.seller_id, 0)) for e in events], uow=uow, clock=clock)
    # Settled: the order's final journal is in the ledger. The lag runs from the payment's
    # creation, which its id records (a redelivery after a crash counts the order again).
    now_ms = clock.now().timestamp() * 1000
    for e in events:
        metrics.ORDERS_SETTLED.labels(e.data.status).inc()
        metrics.SETTLE_LAG.observe(max(0.0, now_ms - id_timestamp_ms(int(e.data.payment_id))) / 1000)


class CaptureNotRecorded(TransientError):
    """A refund arrived before its order's capture was recorded: tried again (with back-off,
    without counting attempts) until it is — the PSP has refunded, so the refund must reach the
    books, never a dead-letter queue for lack of patience."""


async def record_refunds(
    batch: Sequence[Envelope[RefundSucceeded]],
    *,
    uow: Callable[[], LedgerUnitOfWork],
    rates: CommissionRates,
    clock: Clock,
) -> None:
    """REFUND:<refundId>, and the commission given back pro rata as COMMISSION_REFUND:<refundId>:
    f = min(fee left, (r × commissionBps + 5000) // 10000), and all the fee left when the refund
    leaves nothing captured on the order. Read and written in one transaction, refunds of one
    order one after the other, so the fee given back never exceeds the fee taken."""
    events = _once(batch)
    if not events:
        return
    bps = await _commission_rates({e.data.seller_id for e in events}, rates)
    recordings = []
    stored: dict[str, StoredJournal] = {}
    async with uow() as tx:
        for e in events:
            d = e.data
            refund_id, order_id = int(d.refund_id), int(d.payment_order_id)
            amount = Money(d.amount_minor, Currency(d.currency))
            commission = await tx.journals.order_commission(
                int(d.payment_id), order_id, excluding=f"COMMISSION_REFUND:{refund_id}"
            )
            if not commission.captured:
                raise CaptureNotRecorded(f"the capture of {d.public_payment_order_id} is not recorded yet")
            fee = journals.refunded_fee(
                d.amount_minor,
                commission_bps=bps[d.seller_id],
                fee_minor=commission.fee_minor,
                fee_refunded_minor=commission.fee_refunded_minor,
                rest_minor=d.order_amount_minor - d.order_refunded_minor,
            )
            fee_entry = journals.commission_refund(refund_id, d.seller_id, Money(fee, amount.currency))
            recording = Recording(
                [journals.refund(refund_id, d.seller_id, amount), *([fee_entry] if fee_entry else [])],
                JournalRef(int(d.payment_id), order_id, d.seller_id, e.event_id),
                e,
            )
            stored |= await tx.journals.add_all([(j, recording.ref) for j in recording.journals])
            recordings.append(recording)
        _announce(tx, recordings, stored, clock.now())
        await tx.commit()


async def _commission_rates(seller_ids: set[str], rates: CommissionRates) -> dict[str, int]:
    """Every given seller's commission rate. Sellers are never removed: one the directory does
    not know is a fault to surface (retried, then dead-lettered), never money recorded without
    its commission."""
    bps = await rates.commission_bps(sorted(seller_ids))
    if missing := sorted(s for s in seller_ids if s not in bps):
        for seller_id in missing:  # perhaps onboarded a moment ago in another process: no cached "unknown"
            rates.forget(seller_id)
        raise UnknownSeller(f"no commission rate for seller(s) {', '.join(missing)}")
    return bps


def _once(batch: Sequence[Envelope[Any]]) -> list[Envelope[Any]]:
    """Each event once (a batch may hold an event twice after a redelivery)."""
    return list({e.event_id: e for e in batch}.values())
