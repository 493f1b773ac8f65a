"""Events of the ledger context (seed §4.3), with deterministic ids — including
LedgerEntriesRecorded, whose id the seed drew from a random batch UUID."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

import msgspec

from marketplace_pay.shared.envelope import Event


class LedgerRecordingCommand(Event, frozen=True):
    """Record what happened to a payment (AUTHORIZED) or to one of its orders (CAPTURED,
    CAPTURE_FAILED). Keyed by seller (SPEC §6); a payment-level command by payment."""

    event_type: ClassVar[str] = "ledger_recording_requested"
    topic: ClassVar[str] = "ledger_record_request_queue_topic"

    final_status: str
    payment_id: str
    public_payment_id: str
    amount_value: int
    currency: str
    timestamp: datetime
    payment_order_id: str | None = None
    public_payment_order_id: str | None = None
    seller_id: str | None = None

    @property
    def subject(self) -> str:
        return self.public_payment_order_id or self.public_payment_id

    def event_id(self) -> str:
        return f"{self.subject}:ledger_recording_requested:{self.final_status}"

    def partition_key(self) -> str:
        return self.seller_id or self.payment_id


class PostingData(msgspec.Struct, frozen=True, rename="camel"):
    account_code: str
    account_type: str
    direction: str
    amount: int
    signed_amount: int  # the effect on the account's balance
    currency: str


class LedgerEntryData(msgspec.Struct, frozen=True, rename="camel"):
    ledger_entry_id: int  # the journal's position (seq): increases with every journal
    journal_entry_id: str
    journal_type: str
    journal_name: str
    created_at: datetime
    postings: list[PostingData]


class LedgerEntriesRecorded(Event, frozen=True):
    event_type: ClassVar[str] = "ledger_entries_recorded"
    topic: ClassVar[str] = "ledger_entries_recorded_topic"

    ledger_batch_id: str  # "ledger-batch:<subject>:<status>": the same recording, the same id
    payment_id: str
    ledger_entries: list[LedgerEntryData]
    seller_id: str | None = None

    def event_id(self) -> str:
        return f"{self.ledger_batch_id}:ledger_entries_recorded"

    def partition_key(self) -> str:
        return self.seller_id or self.payment_id
