"""Fakes of the ledger's treasury ports: payouts, settlements, their reads, and a scripted bank.
They run on the same fake database as the journals, so a payout and its journal commit together."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Self

import msgspec

from marketplace_pay.ledger.application.ports import (
    BankOutcome,
    BankTimeout,
    Keyed,
    KeyedPayout,
    NewSettlement,
    OpenPayout,
    PayableSeller,
    Unsettled,
)
from marketplace_pay.ledger.application.views import PayoutView, SettlementView, payout_view
from marketplace_pay.ledger.domain.accounts import AccountStatus, AccountType
from marketplace_pay.ledger.domain.journal import JournalType
from marketplace_pay.ledger.domain.payout import Payout, PayoutStatus
from marketplace_pay.shared.ids import public_settlement_id
from marketplace_pay.shared.money import AmountView, Money
from tests.fakes.db import FakeDatabase, Tables
from tests.fakes.ledger import FakeLedgerUnitOfWork, FakeSellerStore, postings

# -- treasury: payouts and settlement ----------------------------------------------------------


@dataclass
class StoredPayout:
    payout: Payout
    account_code: str
    keyed: Keyed
    response: tuple[int, bytes] | None
    trace_id: str
    traceparent: str | None


def _next_id(tables: Tables, sequence: str) -> int:
    tables.next_ids[sequence] = tables.next_ids.get(sequence, 0) + 1
    return tables.next_ids[sequence]


def exact_balance(tables: Tables, account_code: str) -> int:
    """Σ of the account's committed postings: what an exact read in Postgres answers."""
    return sum(p.signed_amount_minor for _, p in postings(tables) if p.account.code == account_code)


class FakePayoutRepository:
    """Units of work run one after another here, so the locks have nothing to wait for."""

    def __init__(self, tables: Tables, sellers: FakeSellerStore, held: set[tuple[str, str]]) -> None:
        self._t = tables
        self._sellers = sellers
        self._held = held

    async def lock_key(self, client_id: str, idempotency_key: str) -> bool:
        return (client_id, idempotency_key) not in self._held

    async def by_key(self, client_id: str, idempotency_key: str) -> KeyedPayout | None:
        for s in self._t.payouts.values():
            if (s.keyed.client_id, s.keyed.idempotency_key) == (client_id, idempotency_key):
                return KeyedPayout(s.payout, s.keyed.fingerprint, s.response)
        return None

    async def lock_seller(self, seller_id: str) -> PayableSeller | None:
        seller = self._sellers.sellers.get(seller_id)
        if seller is None:
            return None
        return PayableSeller(seller.seller_id, seller.account_code, seller.currency, seller.status)

    async def available_minor(self, account_code: str) -> int:
        return exact_balance(self._t, account_code)

    async def next_id(self) -> int:
        return _next_id(self._t, "payout")

    async def add(
        self,
        payout: Payout,
        *,
        account_code: str,
        keyed: Keyed,
        response: tuple[int, bytes] | None,
        trace_id: str,
        traceparent: str | None,
    ) -> None:
        if keyed.idempotency_key is not None and await self.by_key(keyed.client_id, keyed.idempotency_key):
            raise AssertionError("unique (client, key) violated")
        self._t.payouts[payout.payout_id] = StoredPayout(
            copy.deepcopy(payout), account_code, keyed, response, trace_id, traceparent
        )

    async def save(self, payout: Payout, *, before: tuple[PayoutStatus, int]) -> bool:
        stored = self._t.payouts.get(payout.payout_id)
        if stored is None or stored.payout.state() != before or stored.payout.status.final:
            return False
        stored.payout = copy.deepcopy(payout)
        return True

    async def claim_due(self, *, now: datetime, stuck_before: datetime, limit: int) -> list[OpenPayout]:
        due = []
        for payout_id in sorted(self._t.payouts):
            s = self._t.payouts[payout_id]
            p = s.payout
            if p.status is not PayoutStatus.PENDING:
                continue
            if (p.next_retry_at is not None and p.next_retry_at <= now) or (
                p.next_retry_at is None and p.updated_at < stuck_before
            ):
                p.next_retry_at = None
                p.updated_at = max(p.updated_at, now)
                due.append(OpenPayout(copy.deepcopy(p), s.trace_id, s.traceparent))
        return due[:limit]


class FakeSettlementRepository:
    def __init__(self, tables: Tables, *, now: datetime) -> None:
        self._t = tables
        self._now = now

    async def lock(self) -> None:
        return None

    async def unsettled(self) -> list[Unsettled]:
        return [
            Unsettled(stored.journal.journal_id, stored.journal.currency, p.signed_amount_minor)
            for stored, p in postings(self._t)
            if p.account.type is AccountType.PSP_RECEIVABLES
            and stored.journal.type in (JournalType.CAPTURE, JournalType.REFUND)
            and stored.journal.journal_id not in self._t.settled
        ]

    async def next_id(self) -> int:
        return _next_id(self._t, "settlement")

    async def add(self, settlement: NewSettlement) -> None:
        if any(j in self._t.settled for j in settlement.journal_ids):
            raise AssertionError("a journal settled twice")
        self._t.settlements[settlement.settlement_id] = (settlement, self._now)
        for journal_id in settlement.journal_ids:
            self._t.settled[journal_id] = settlement.settlement_id


class FakeTreasuryUnitOfWork(FakeLedgerUnitOfWork):
    def __init__(self, db: FakeDatabase, sellers: FakeSellerStore) -> None:
        super().__init__(db)
        self._sellers = sellers

    async def __aenter__(self) -> Self:
        await super().__aenter__()
        self.payouts = FakePayoutRepository(self.tables, self._sellers, self._db.held_locks)
        self.settlements = FakeSettlementRepository(self.tables, now=self._db.clock.now())
        return self


class FakeTreasuryReads:
    def __init__(self, db: FakeDatabase, sellers: FakeSellerStore) -> None:
        self._db = db
        self._sellers = sellers

    async def payouts(self, payout_ids: Sequence[int]) -> dict[int, OpenPayout]:
        t = self._db.tables
        return {
            i: OpenPayout(copy.deepcopy(s.payout), s.trace_id, s.traceparent)
            for i in payout_ids
            if (s := t.payouts.get(i)) is not None
        }

    async def payout(self, payout_id: int) -> PayoutView | None:
        s = self._db.tables.payouts.get(payout_id)
        return None if s is None else payout_view(s.payout)

    async def payouts_of(
        self, seller_id: str, *, limit: int, before_payout_id: int | None
    ) -> tuple[list[PayoutView], bool]:
        found = [
            payout_view(s.payout)
            for i, s in sorted(self._db.tables.payouts.items(), reverse=True)
            if s.payout.seller_id == seller_id and (before_payout_id is None or i < before_payout_id)
        ]
        return found[:limit], len(found) > limit

    async def settlements(self, *, limit: int, before_settlement_id: int | None) -> tuple[list[SettlementView], bool]:
        found = [
            settlement_view(s, at)
            for i, (s, at) in sorted(self._db.tables.settlements.items(), reverse=True)
            if before_settlement_id is None or i < before_settlement_id
        ]
        return found[:limit], len(found) > limit

    async def payable_sellers(self, minimum_minor: int) -> list[str]:
        return [
            s.seller_id
            for s in await self._sellers.list()
            if s.status is AccountStatus.ACTIVE and exact_balance(self._db.tables, s.account_code) >= minimum_minor
        ]


def settlement_view(s: NewSettlement, created_at: datetime) -> SettlementView:
    c = s.currency.value
    return SettlementView(
        settlement_id=public_settlement_id(s.settlement_id),
        journal_entry_id=f"SETTLEMENT:{s.settlement_id}",
        currency=c,
        gross=AmountView(s.gross_minor, c),
        fee=AmountView(s.fee_minor, c),
        net=AmountView(s.net_minor, c),
        fee_bps=s.fee_bps,
        journals_covered=len(s.journal_ids),
        created_at=created_at,
    )


class BankCall(msgspec.Struct, frozen=True):
    op: str  # payout | payout_status
    key: str
    payout_id: str
    did: BankOutcome | None  # what the bank did under the key (None: nothing, it never received it)
    answered: bool


class LostAnswer(msgspec.Struct, frozen=True):
    """A scripted bank call whose answer never reaches the caller; the bank did `did` all the same."""

    did: BankOutcome


class ScriptedBank:
    """An idempotent bank the test scripts per payout amount, one item per call: an outcome
    (answered) or `LostAnswer(outcome)`. A repeated key replays what the bank did the first time
    under it. Default: PAID. Records every call."""

    def __init__(self, answers: dict[int, list[BankOutcome | LostAnswer]] | None = None) -> None:
        self.answers = answers or {}
        self.done: dict[str, BankOutcome] = {}
        self.calls: list[BankCall] = []
        self._used: dict[int, int] = {}

    def _next(self, amount: Money) -> BankOutcome | LostAnswer:
        script = self.answers.get(amount.amount_minor, [BankOutcome.PAID])
        n = self._used.get(amount.amount_minor, 0)
        self._used[amount.amount_minor] = n + 1
        return script[min(n, len(script) - 1)]

    async def pay(self, *, idempotency_key: str, payout_id: str, seller_id: str, amount: Money) -> BankOutcome:
        item = self._next(amount)
        did = self.done.setdefault(idempotency_key, item.did if isinstance(item, LostAnswer) else item)
        lost = isinstance(item, LostAnswer)
        self.calls.append(BankCall("payout", idempotency_key, payout_id, did, not lost))
        if lost:
            raise BankTimeout(idempotency_key)
        return did

    async def payment_status(
        self, *, idempotency_key: str, payout_id: str, seller_id: str, amount: Money
    ) -> BankOutcome | None:
        did = self.done.get(idempotency_key)
        self.calls.append(BankCall("payout_status", idempotency_key, payout_id, did, True))
        return did

    def paid(self) -> dict[str, list[str]]:
        """Payout id → the keys under which the bank sent money."""
        sent: dict[str, list[str]] = {}
        for key, did in self.done.items():
            if did is BankOutcome.PAID:
                sent.setdefault(key.rsplit(":", 1)[0], []).append(key)
        return sent
