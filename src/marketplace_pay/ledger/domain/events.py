"""Events of the ledger context, with deterministic ids: recording the same fact again announces it
under the same id."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

import msgspec

from marketplace_pay.shared.envelope import Event


class PostingData(msgspec.Struct, frozen=True, rename="camel"):
    account_code: str
    account_type: str
    direction: str
    amount_minor: int
    signed_amount_minor: int  # the effect on the account's balance
    currency: str


class LedgerEntryData(msgspec.Struct, frozen=True, rename="camel"):
    seq: int  # the journal's position in the ledger: increases with every journal
    tx: int  # the transaction that wrote it (balances fold by transaction horizon)
    journal_entry_id: str
    journal_type: str
    journal_name: str
    created_at: datetime
    postings: list[PostingData]


class LedgerEntriesRecorded(Event, frozen=True):
    event_type: ClassVar[str] = "ledger_entries_recorded"
    topic: ClassVar[str] = "ledger_entries_recorded_topic"

    ledger_batch_id: str  # "ledger-batch:<subject>:<what>": the same recording, the same id
    payment_id: str
    ledger_entries: list[LedgerEntryData]
    seller_id: str | None = None

    def event_id(self) -> str:
        return f"{self.ledger_batch_id}:ledger_entries_recorded"

    def partition_key(self) -> str:
        return self.seller_id or self.payment_id
