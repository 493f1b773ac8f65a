"""Fakes of the ledger context's ports."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Self

import msgspec

from marketplace_pay.ledger.application.directory import OnboardSeller, Seller, seller_account_code
from marketplace_pay.ledger.application.recording import JournalRef, StoredJournal
from marketplace_pay.ledger.application.views import JournalView, PostingLine
from marketplace_pay.ledger.domain.accounts import AccountStatus
from marketplace_pay.ledger.domain.journal import JournalEntry
from marketplace_pay.shared.clock import Clock, FixedClock
from marketplace_pay.shared.ids import public_payment_id, public_payment_order_id
from marketplace_pay.shared.money import AmountView, Currency
from tests.fakes.db import FakeUnitOfWork, Tables


class FakeSellerStore:
    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock or FixedClock()
        self.sellers: dict[str, Seller] = {}
        self.reads = 0
        for seller_id in ("SELLER-111", "SELLER-222", "SELLER-333"):
            self._put(OnboardSeller(seller_id, Currency.EUR, 500))

    def _put(self, cmd: OnboardSeller) -> Seller:
        now = self._clock.now()
        seller = Seller(
            cmd.seller_id,
            seller_account_code(cmd.seller_id, cmd.currency),
            cmd.currency,
            AccountStatus.ACTIVE,
            cmd.commission_bps,
            now,
            now,
        )
        self.sellers[cmd.seller_id] = seller
        return seller

    async def add(self, cmd: OnboardSeller) -> Seller | None:
        return None if cmd.seller_id in self.sellers else self._put(cmd)

    async def get(self, seller_id: str) -> Seller | None:
        return self.sellers.get(seller_id)

    async def set_status(self, seller_id: str, status: AccountStatus) -> Seller | None:
        seller = self.sellers.get(seller_id)
        if seller is None:
            return None
        self.sellers[seller_id] = msgspec.structs.replace(seller, status=status, updated_at=self._clock.now())
        return self.sellers[seller_id]

    async def many(self, seller_ids: Sequence[str]) -> list[Seller]:
        self.reads += 1
        return [self.sellers[s] for s in dict.fromkeys(seller_ids) if s in self.sellers]  # each once, as Postgres

    async def list(self) -> list[Seller]:
        return [self.sellers[k] for k in sorted(self.sellers)]


class FakeJournalRepository:
    def __init__(self, tables: Tables, *, tx: int, clock: Clock) -> None:
        self._t = tables
        self._tx = tx
        self._clock = clock

    async def add_all(self, items: Sequence[tuple[JournalEntry, JournalRef]]) -> dict[str, StoredJournal]:
        out = {}
        for journal, ref in items:
            if journal.journal_id not in self._t.journals:
                self._t.seq += 1
                self._t.journals[journal.journal_id] = (
                    StoredJournal(journal, self._t.seq, self._tx, self._clock.now()),
                    ref,
                )
            out[journal.journal_id] = self._t.journals[journal.journal_id][0]
        return out


class FakeLedgerUnitOfWork(FakeUnitOfWork):
    async def __aenter__(self) -> Self:
        await super().__aenter__()
        self.journals = FakeJournalRepository(self.tables, tx=self.xid, clock=self._db.clock)
        return self


def postings(tables: Tables) -> list[tuple[Any, Any]]:
    """(stored journal, posting) of every journal, in recording order."""
    return [
        (stored, p)
        for stored, _ in sorted(tables.journals.values(), key=lambda j: j[0].seq)
        for p in stored.journal.postings
    ]


class FakeLedgerReads:
    """The ledger reads, over the fake tables: statements and a payment's journals."""

    def __init__(self, tables: Callable[[], Tables]) -> None:
        self._tables = tables  # the current tables (a commit swaps them)

    def _lines(self, payment_id: int | None = None) -> list[tuple[Any, PostingLine]]:
        lines = []
        for stored, ref in sorted(self._tables().journals.values(), key=lambda j: j[0].seq):
            if payment_id is not None and ref.payment_id != payment_id:
                continue
            for i, p in enumerate(stored.journal.postings):
                ccy = stored.journal.currency.value
                lines.append(
                    (
                        stored,
                        PostingLine(
                            posting_id=str(stored.seq * 100 + i),
                            journal_entry_id=stored.journal.journal_id,
                            journal_type=stored.journal.type.value,
                            account_code=p.account.code,
                            direction=p.direction.value,
                            amount=AmountView(p.amount_minor, ccy),
                            signed_amount=AmountView(p.signed_amount_minor, ccy),
                            created_at=stored.created_at,
                            payment_id=public_payment_id(ref.payment_id) if ref.payment_id is not None else None,
                            payment_order_id=public_payment_order_id(ref.payment_order_id)
                            if ref.payment_order_id
                            else None,
                        ),
                    )
                )
        return lines

    async def account_exists(self, account_code: str) -> bool:
        return any(line.account_code == account_code for _, line in self._lines())

    async def postings(
        self, account_code: str, *, limit: int, before_posting_id: int | None
    ) -> tuple[list[PostingLine], bool]:
        lines = [
            line
            for _, line in reversed(self._lines())
            if line.account_code == account_code
            and (before_posting_id is None or int(line.posting_id) < before_posting_id)
        ]
        return lines[:limit], len(lines) > limit

    async def payment_journals(self, payment_id: int) -> list[JournalView]:
        views: dict[str, JournalView] = {}
        for stored, line in self._lines(payment_id):
            view = views.setdefault(
                line.journal_entry_id,
                JournalView(
                    journal_entry_id=line.journal_entry_id,
                    journal_type=line.journal_type,
                    name=stored.journal.name,
                    ledger_seq=stored.seq,
                    created_at=stored.created_at,
                    payment_order_id=line.payment_order_id,
                    postings=[],
                ),
            )
            view.postings.append(line)
        return list(views.values())
