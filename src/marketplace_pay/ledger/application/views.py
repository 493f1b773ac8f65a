"""What the ledger's reads answer: an account's statement and a payment's journals."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

import msgspec

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
