"""Recording money movements (SPEC §5), as in the seed flow:

    PaymentAuthorized      ──dispatch──▶ LedgerRecordingCommand(AUTHORIZED)
    PaymentOrderFinalized  ──dispatch──▶ LedgerRecordingCommand(CAPTURED | CAPTURE_FAILED)
    LedgerRecordingCommand ──record────▶ journals + postings + LedgerEntriesRecorded

Recording is idempotent by journal id (AUTH:<paymentId>, CAPTURE:<orderId>, ...): a command seen
again finds its journals and announces them again under the same event id, so
LedgerEntriesRecorded is never lost (the seed returned an empty list on a duplicate and never
told the balances). Journals, the event and the inbox row commit together.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol

import msgspec

from marketplace_pay.ledger.domain import journal as journals
from marketplace_pay.ledger.domain.events import LedgerEntriesRecorded, LedgerEntryData, LedgerRecordingCommand, PostingData
from marketplace_pay.ledger.domain.journal import JournalEntry
from marketplace_pay.payments import PaymentAuthorized, PaymentOrderFinalized
from marketplace_pay.shared.clock import Clock
from marketplace_pay.shared.envelope import Envelope, envelope, first_seen
from marketplace_pay.shared.money import Currency, Money

log = logging.getLogger(__name__)

DISPATCH_AUTHORIZED = "ledger-auth-recording-request-dispatcher-consumer-group"
DISPATCH_FINALIZED = "ledger-recording-request-dispatcher-consumer-group"
RECORD = "ledger-recording-consumer-group"


class JournalRef(msgspec.Struct, frozen=True):
    """What a journal is about, for the statement and the journal-entries reads."""

    payment_id: int
    payment_order_id: int | None
    seller_id: str | None
    source_event_id: str


class StoredJournal(msgspec.Struct, frozen=True):
    journal: JournalEntry
    seq: int
    created_at: datetime


class JournalRepository(Protocol):
    async def enter_commit_fence(self) -> None:
        """Join the ledger's commit fence for this transaction (before any journal is written):
        the balance fold waits for every writer inside it, so all journals below the horizon it
        takes have committed."""
        ...

    async def add_all(self, items: Sequence[tuple[JournalEntry, JournalRef]]) -> dict[str, StoredJournal]:
        """Write the journals not recorded yet, with their postings; return every given journal
        as stored (those recorded before, as they were recorded)."""
        ...

    async def commission_bps(self, seller_ids: Sequence[str]) -> dict[str, int]: ...


class LedgerUnitOfWork(Protocol):
    journals: JournalRepository

    async def __aenter__(self) -> LedgerUnitOfWork: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    async def claim_inbox(self, consumer: str, event_ids: Sequence[str]) -> set[str]: ...

    def publish(self, *envelopes: Envelope[Any]) -> None: ...

    async def commit(self) -> None: ...


async def _dispatch(
    consumer: str,
    batch: Sequence[Envelope[Any]],
    command: Callable[[Any, datetime], LedgerRecordingCommand],
    *,
    uow: Callable[[], LedgerUnitOfWork],
    clock: Clock,
) -> None:
    now = clock.now()
    async with uow() as tx:
        for e in first_seen(batch, await tx.claim_inbox(consumer, [e.event_id for e in batch])):
            cmd = command(e.data, now)
            tx.publish(envelope(cmd, aggregate_id=cmd.partition_key(), timestamp=now, trace_id=e.trace_id, caused_by=e))
        await tx.commit()


def _for_authorization(event: PaymentAuthorized, now: datetime) -> LedgerRecordingCommand:
    return LedgerRecordingCommand(
        final_status="AUTHORIZED",
        payment_id=event.payment_id,
        public_payment_id=event.public_payment_id,
        amount_value=event.total_amount_value,
        currency=event.currency,
        timestamp=now,
    )


def _for_finalization(event: PaymentOrderFinalized, now: datetime) -> LedgerRecordingCommand:
    return LedgerRecordingCommand(
        final_status=event.status,
        payment_id=event.payment_id,
        public_payment_id=event.public_payment_id,
        amount_value=event.amount_value,
        currency=event.currency,
        timestamp=now,
        payment_order_id=event.payment_order_id,
        public_payment_order_id=event.public_payment_order_id,
        seller_id=event.seller_id,
    )


async def request_recording_of_authorizations(
    batch: Sequence[Envelope[PaymentAuthorized]], *, uow: Callable[[], LedgerUnitOfWork], clock: Clock
) -> None:
    await _dispatch(DISPATCH_AUTHORIZED, batch, _for_authorization, uow=uow, clock=clock)


async def request_recording_of_finalizations(
    batch: Sequence[Envelope[PaymentOrderFinalized]], *, uow: Callable[[], LedgerUnitOfWork], clock: Clock
) -> None:
    await _dispatch(DISPATCH_FINALIZED, batch, _for_finalization, uow=uow, clock=clock)


class UnknownRecording(ValueError):
    """A command this ledger does not know how to record (dead-lettered, not dropped)."""


def journals_for(cmd: LedgerRecordingCommand, commission_bps: int) -> list[JournalEntry]:
    amount = Money(cmd.amount_value, Currency(cmd.currency))
    if cmd.final_status == "AUTHORIZED":
        return [journals.auth_hold(int(cmd.payment_id), amount)]
    if cmd.payment_order_id is None or cmd.seller_id is None:
        raise UnknownRecording(f"{cmd.final_status} needs a payment order and a seller")
    order_id = int(cmd.payment_order_id)
    if cmd.final_status == "CAPTURED":
        fee = journals.commission(order_id, cmd.seller_id, amount, commission_bps)
        return [journals.capture(order_id, cmd.seller_id, amount), *([fee] if fee else [])]
    if cmd.final_status == "CAPTURE_FAILED":
        return [journals.auth_release(order_id, amount)]
    raise UnknownRecording(f"cannot record final status {cmd.final_status!r}")


def entry_data(stored: StoredJournal) -> LedgerEntryData:
    j = stored.journal
    return LedgerEntryData(
        ledger_entry_id=stored.seq,
        journal_entry_id=j.journal_id,
        journal_type=j.type.value,
        journal_name=j.name,
        created_at=stored.created_at,
        postings=[
            PostingData(
                account_code=p.account.code,
                account_type=p.account.type.value,
                direction=p.direction.value,
                amount=p.amount_minor,
                signed_amount=p.signed_amount_minor,
                currency=j.currency.value,
            )
            for p in j.postings
        ],
    )


async def record_ledger_entries(
    batch: Sequence[Envelope[LedgerRecordingCommand]], *, uow: Callable[[], LedgerUnitOfWork], clock: Clock
) -> None:
    now = clock.now()
    async with uow() as tx:
        fresh = first_seen(batch, await tx.claim_inbox(RECORD, [e.event_id for e in batch]))
        if not fresh:
            return
        await tx.journals.enter_commit_fence()
        rates = await tx.journals.commission_bps(sorted({e.data.seller_id for e in fresh if e.data.seller_id}))
        planned: list[tuple[Envelope[LedgerRecordingCommand], list[JournalEntry]]] = []
        for e in fresh:
            cmd = e.data
            planned.append((e, journals_for(cmd, rates.get(cmd.seller_id or "", 0))))
        stored = await tx.journals.add_all(
            [
                (j, JournalRef(int(e.data.payment_id), int(e.data.payment_order_id) if e.data.payment_order_id else None, e.data.seller_id, e.event_id))
                for e, js in planned
                for j in js
            ]
        )
        for e, js in planned:
            cmd = e.data
            recorded = LedgerEntriesRecorded(
                ledger_batch_id=f"ledger-batch:{cmd.subject}:{cmd.final_status}",
                payment_id=cmd.payment_id,
                seller_id=cmd.seller_id,
                ledger_entries=[entry_data(stored[j.journal_id]) for j in js],
            )
            tx.publish(envelope(recorded, aggregate_id=recorded.partition_key(), timestamp=now, trace_id=e.trace_id, caused_by=e))
        await tx.commit()
