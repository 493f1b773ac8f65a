"""Events of the ledger context, with deterministic ids: recording the same fact again announces it
under the same id."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import ClassVar

import msgspec

from marketplace_pay.shared.envelope import Event


class PostingData(msgspec.Struct, frozen=True, rename="camel"):
    account_code: str
    signed_amount_minor: int  # the effect on the account's balance (+ on its normal side)


class LedgerEntryData(msgspec.Struct, frozen=True, rename="camel"):
    seq: int  # the journal's position in the ledger: increases with every journal
    tx: int  # the transaction that wrote it (balances fold by transaction horizon)
    journal_entry_id: str
    journal_type: str
    currency: str
    created_at: datetime
    postings: list[PostingData]


class LedgerEntriesRecorded(Event, frozen=True):
    """These journals were recorded. One event per recording batch: the balances apply entries
    as set members, so neither their grouping nor their order matters to them."""

    event_type: ClassVar[str] = "ledger_entries_recorded"
    topic: ClassVar[str] = "ledger_entries_recorded_topic"

    ledger_entries: list[LedgerEntryData]
    traceparents: list[str] = msgspec.field(default_factory=list)  # of the events recorded, for tracing links

    def event_id(self) -> str:
        """Derived from the journals it announces: announcing the same journals again (a
        redelivery) gives the same id."""
        ids = "|".join(sorted(e.journal_entry_id for e in self.ledger_entries))
        return f"ledger-entries:{hashlib.sha256(ids.encode()).hexdigest()[:32]}:ledger_entries_recorded"

    def partition_key(self) -> str:
        return self.ledger_entries[0].journal_entry_id if self.ledger_entries else "ledger"
