"""What the ledger's reads answer: an account's statement, a payment's journals, payouts and
settlements."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

import msgspec

from marketplace_pay.ledger.domain.payout import Payout
from marketplace_pay.shared.money import AmountView


class PostingLine(msgspec.Struct, frozen=True, rename="camel"):
    posting_id: str
    journal_entry_id: str
    journal_type: str
    account_code: str
    direction: str
    amount: AmountView
    signed_amount: AmountView
    created_at: datetime
    payment_id: str | None
    payment_order_id: str | None


class JournalView(msgspec.Struct, frozen=True, rename="camel"):
    journal_entry_id: str
    journal_type: str
    name: str
    ledger_seq: int  # the journal's place in the ledger's recording order
    created_at: datetime
    payment_order_id: str | None
    postings: list[PostingLine]


class PayoutView(msgspec.Struct, frozen=True, rename="camel"):
    payout_id: str  # pout_…
    seller_id: str
    amount: AmountView
    status: str  # PENDING, PAID, FAILED
    created_at: datetime
    updated_at: datetime


class SettlementView(msgspec.Struct, frozen=True, rename="camel"):
    settlement_id: str  # stl_…
    journal_entry_id: str  # SETTLEMENT:<internal id>
    currency: str
    gross: AmountView  # captured minus refunded, as covered
    fee: AmountView  # the PSP's fee
    net: AmountView  # paid into PLATFORM_CASH
    fee_bps: int
    journals_covered: int
    created_at: datetime


class LedgerReads(Protocol):
    async def account_exists(self, account_code: str) -> bool: ...

    async def postings(
        self, account_code: str, *, limit: int, before_posting_id: int | None
    ) -> tuple[list[PostingLine], bool]:
        """The account's postings, newest first, keyset-paged by posting id: (lines, has_more)."""
        ...

    async def payment_journals(self, payment_id: int) -> list[JournalView]:
        """Every journal of the payment in recording order, with its postings."""
        ...


def payout_view(payout: Payout) -> PayoutView:
    return PayoutView(
        payout_id=payout.public_id,
        seller_id=payout.seller_id,
        amount=AmountView.of(payout.amount),
        status=payout.status.value,
        created_at=payout.created_at,
        updated_at=payout.updated_at,
    )
