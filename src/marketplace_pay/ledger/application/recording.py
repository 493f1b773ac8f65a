"""Recording money movements: the payments context's events become journals.

    PaymentAuthorized      ──▶ AUTH:<paymentId>
    PaymentOrderFinalized  ──▶ CAPTURE:<orderId> (+ COMMISSION:<orderId>) | AUTH_RELEASE:<orderId>
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
from marketplace_pay.ledger.domain import journal as journals
from marketplace_pay.ledger.domain.events import LedgerEntriesRecorded, LedgerEntryData, PostingData
from marketplace_pay.ledger.domain.journal import JournalEntry
from marketplace_pay.payments import PaymentAuthorized, PaymentOrderFinalized, PaymentOrderStatus
from marketplace_pay.shared.clock import Clock
from marketplace_pay.shared.envelope import Envelope, envelope
from marketplace_pay.shared.ids import id_timestamp_ms
from marketplace_pay.shared.money import Currency, Money

log = logging.getLogger(__name__)

# Consumer names (Kafka consumer groups).
RECORD_AUTHORIZATIONS = "ledger-record-authorizations"
RECORD_FINALIZATIONS = "ledger-record-finalizations"


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


class JournalRepository(Protocol):
    async def add_all(self, items: Sequence[tuple[JournalEntry, JournalRef]]) -> dict[str, StoredJournal]:
        """Write the journals not recorded yet, with their postings; return every given journal
        as stored (those recorded before, as they were recorded)."""
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


async def _record(recordings: Sequence[Recording], *, uow: Callable[[], LedgerUnitOfWork], clock: Clock) -> None:
    if not recordings:
        return
    now = clock.now()
    async with uow() as tx:
        stored = await tx.journals.add_all([(j, r.ref) for r in recordings for j in r.journals])
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
    captured = sorted({e.data.seller_id for e in events if e.data.status == PaymentOrderStatus.CAPTURED})
    bps = await rates.commission_bps(captured)
    if missing := [s for s in captured if s not in bps]:
        for seller_id in missing:  # perhaps onboarded a moment ago in another process: no cached "unknown"
            rates.forget(seller_id)
        # sellers are never removed: a capture for one the directory does not know is a fault
        # to surface (retried, then dead-lettered), never a capture recorded without commission
        raise UnknownSeller(f"no commission rate for seller(s) {', '.join(missing)}")
    await _record([_finalization(e, bps.get(e.data.seller_id, 0)) for e in events], uow=uow, clock=clock)
    # Settled: the order's final journal is in the ledger. The lag runs from the payment's
    # creation, which its id records (a redelivery after a crash counts the order again).
    now_ms = clock.now().timestamp() * 1000
    for e in events:
        metrics.ORDERS_SETTLED.labels(e.data.status).inc()
        metrics.SETTLE_LAG.observe(max(0.0, now_ms - id_timestamp_ms(int(e.data.payment_id))) / 1000)


def _once(batch: Sequence[Envelope[Any]]) -> list[Envelope[Any]]:
    """Each event once (a batch may hold an event twice after a redelivery)."""
    return list({e.event_id: e for e in batch}.values())
