"""Fakes of the ledger context's ports."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self

import msgspec

from marketplace_pay.ledger.application.directory import OnboardSeller, Seller, seller_account_code
from marketplace_pay.ledger.application.recording import JournalRef, StoredJournal
from marketplace_pay.ledger.domain.accounts import AccountStatus
from marketplace_pay.ledger.domain.journal import JournalEntry
from marketplace_pay.shared.clock import Clock, FixedClock
from marketplace_pay.shared.money import Currency
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
                self._t.journals[journal.journal_id] = (StoredJournal(journal, self._t.seq, self._tx, self._clock.now()), ref)
            out[journal.journal_id] = self._t.journals[journal.journal_id][0]
        return out


class FakeLedgerUnitOfWork(FakeUnitOfWork):
    async def __aenter__(self) -> Self:
        await super().__aenter__()
        self.journals = FakeJournalRepository(self.tables, tx=self.xid, clock=self._db.clock)
        return self


def postings(tables: Tables) -> list[tuple[Any, Any]]:
    """(stored journal, posting) of every journal, in recording order."""
    return [(stored, p) for stored, _ in sorted(tables.journals.values(), key=lambda j: j[0].seq) for p in stored.journal.postings]
