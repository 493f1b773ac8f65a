"""Events of the ledger context, with deterministic ids: recording the same fact again announces it
under the same id.

LedgerEntriesRecorded  event    journals were recorded (the balances apply them)
PayoutRequested        event    a payout was created, its PAYOUT journal written; the bank is to pay it
PayPayout              command  call the bank again for one payout (a due retry or a re-drive)
PayoutPaid             event    the bank paid the payout (PAYOUT_PAID written)
PayoutFailed           event    the bank refused it; the money went back to the seller (PAYOUT_RETURNED)
SettlementRecorded     event    the PSP settled captured money into the platform's cash (SETTLEMENT)
"""

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


class PayoutMessage(Event, frozen=True):
    """Fields every payout message carries. Keyed by the payout: its messages stay in order."""

    payout_id: str  # internal, decimal
    public_payout_id: str
    seller_id: str
    amount_minor: int
    currency: str
    timestamp: datetime

    def partition_key(self) -> str:
        return self.payout_id


class PayoutRequested(PayoutMessage, frozen=True):
    event_type: ClassVar[str] = "payout_requested"
    topic: ClassVar[str] = "payout_requested_topic"

    def event_id(self) -> str:
        return f"{self.public_payout_id}:requested"


class PayPayout(PayoutMessage, frozen=True):
    """Make bank call `attempt` of a payout (or ask the bank about it, once its retries are used
    up on unanswered calls)."""

    event_type: ClassVar[str] = "pay_payout"
    topic: ClassVar[str] = "payout_pay_request_queue_topic"

    attempt: int = 0

    def event_id(self) -> str:
        return f"{self.public_payout_id}:pay:{self.attempt}"


class PayoutPaid(PayoutMessage, frozen=True):
    event_type: ClassVar[str] = "payout_paid"
    topic: ClassVar[str] = "payout_finalized_topic"

    def event_id(self) -> str:
        return f"{self.public_payout_id}:paid"


class PayoutFailed(PayoutMessage, frozen=True):
    event_type: ClassVar[str] = "payout_failed"
    topic: ClassVar[str] = "payout_finalized_topic"

    def event_id(self) -> str:
        return f"{self.public_payout_id}:failed"


class SettlementRecorded(Event, frozen=True):
    event_type: ClassVar[str] = "settlement_recorded"
    topic: ClassVar[str] = "settlement_recorded_topic"

    settlement_id: str  # internal, decimal
    public_settlement_id: str
    currency: str
    gross_minor: int
    fee_minor: int
    net_minor: int
    journals_covered: int
    timestamp: datetime

    def event_id(self) -> str:
        return f"{self.public_settlement_id}:recorded"

    def partition_key(self) -> str:
        return self.settlement_id
