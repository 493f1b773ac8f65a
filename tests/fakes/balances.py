"""Fakes of the balances context's ports."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from marketplace_pay.balances.application.ports import Folded, OverlayUnavailable, Snapshot, TrialBalance, Unfolded
from marketplace_pay.balances.domain.balance import Check, Drift, Entry
from marketplace_pay.ledger.domain.accounts import GLOBAL, AccountType, InvalidAccountCode, parse_account_code
from tests.fakes.db import FakeDatabase
from tests.fakes.ledger import FakeSellerStore, postings


class FakeOverlay:
    """The Redis overlay's contract, in memory (tests/contract keeps them in step). `down`: as
    if Redis could not be reached."""

    def __init__(self) -> None:
        self.horizon = 0
        self.zsets: dict[str, dict[tuple[int, int], int]] = {}  # account → (seq, amount) → tx
        self.down = False

    def _reachable(self) -> None:
        if self.down:
            raise OverlayUnavailable("fake Redis is down")

    async def apply(self, entries: Sequence[Entry]) -> int:
        self._reachable()
        added = 0
        for e in entries:
            members = self.zsets.setdefault(e.account_code, {})
            if e.tx >= self.horizon and (e.seq, e.signed_amount_minor) not in members:
                members[(e.seq, e.signed_amount_minor)] = e.tx
                added += 1
        return added

    async def entries(self, account_code: str) -> list[Entry]:
        self._reachable()
        members = self.zsets.get(account_code, {})
        return sorted(Entry(account_code, tx, seq, amount) for (seq, amount), tx in members.items())

    async def accounts(self) -> list[str]:
        return [c for c, z in self.zsets.items() if z]

    async def prune(self, horizon: int, account_codes: Sequence[str]) -> None:
        self.horizon = max(self.horizon, horizon)
        for code in account_codes or list(self.zsets):
            self.zsets[code] = {m: tx for m, tx in self.zsets.get(code, {}).items() if tx >= horizon}

    async def remove(self, entries: Sequence[Entry]) -> None:
        for e in entries:
            self.zsets.get(e.account_code, {}).pop((e.seq, e.signed_amount_minor), None)


class FakeBalanceStore:
    """Folds the fake ledger's journals. No transaction is ever left running here, so the horizon
    is always past the last commit.

    The accounts that exist, as in the schema: every platform (GLOBAL) account in every currency,
    the sellers of `sellers` (by default a store of just the seeded ones), and any account posted to."""

    def __init__(self, db: FakeDatabase, *, sellers: FakeSellerStore | None = None) -> None:
        self._db = db
        self._sellers = sellers or FakeSellerStore()
        self.folded_tx = 2
        self.balances: dict[str, int] = {}
        self.updated: dict[str, datetime] = {}  # when each snapshot was last written

    def _exists(self, account_code: str) -> bool:
        try:
            account = parse_account_code(account_code)
        except InvalidAccountCode:
            return False
        if account.type is not AccountType.MERCHANT_PAYABLE:
            return account.entity_id == GLOBAL
        seller = self._sellers.sellers.get(account.entity_id)
        known = seller is not None and seller.account_code == account_code
        return known or any(e.account_code == account_code for e, _ in self._entries())

    def _entries(self) -> list[tuple[Entry, object]]:
        return [
            (Entry(p.account.code, stored.tx, stored.seq, p.signed_amount_minor), stored.created_at)
            for stored, p in postings(self._db.tables)
        ]

    def _expected(self) -> dict[str, int]:
        expected: dict[str, int] = {}
        for e, _ in self._entries():
            if e.tx < self.folded_tx:
                expected[e.account_code] = expected.get(e.account_code, 0) + e.signed_amount_minor
        return expected

    async def horizon(self) -> int:
        return self.folded_tx

    async def fold(self) -> Folded:
        horizon = self._db.xid + 1
        touched = set()
        for e, _ in self._entries():
            if self.folded_tx <= e.tx < horizon:
                self.balances[e.account_code] = self.balances.get(e.account_code, 0) + e.signed_amount_minor
                touched.add(e.account_code)
        for code in touched:
            self.updated[code] = self._db.clock.now()
        self.folded_tx = max(self.folded_tx, horizon)
        return Folded(self.folded_tx, sorted(touched))

    async def snapshot(self, account_code: str, *, with_unfolded: bool = False) -> Snapshot | None:
        if not self._exists(account_code):
            return None
        currency = account_code.rsplit(".", 1)[-1]
        unfolded = (
            sum(
                e.signed_amount_minor
                for e, _ in self._entries()
                if e.account_code == account_code and e.tx >= self.folded_tx
            )
            if with_unfolded
            else 0
        )
        balance = self.balances.get(account_code, 0)
        return Snapshot(account_code, currency, balance, self.folded_tx, self.updated.get(account_code), unfolded)

    async def snapshot_drift(self) -> tuple[int, list[Drift]]:
        expected = self._expected()
        accounts = set(expected) | set(self.balances)
        return len(accounts), [
            Drift(Check.SNAPSHOT, c, expected.get(c, 0), self.balances.get(c, 0))
            for c in accounts
            if expected.get(c, 0) != self.balances.get(c, 0)
        ]

    async def trial_balance(self) -> list[TrialBalance]:
        sums: dict[str, list[int]] = {}
        for stored, posting in postings(self._db.tables):
            side = sums.setdefault(stored.journal.currency.value, [0, 0])
            side[0 if posting.direction.value == "DEBIT" else 1] += posting.amount_minor
        return [TrialBalance(c, d, k) for c, (d, k) in sorted(sums.items())]

    async def auth_drift(self, *, finished_before_s: float, finished_since: object = None) -> list[Drift]:
        return []

    async def psp_receivables_drift(self, *, finished_before_s: float) -> list[Drift]:
        """Captured (the payments' own figure) minus settled against PSP_RECEIVABLES, per currency.
        Nothing is in flight here, so no payment is left out."""
        t = self._db.tables
        expected: dict[str, int] = {}
        for stored in t.payments.values():
            ccy = stored.payment.currency.value
            expected[ccy] = expected.get(ccy, 0) + stored.payment.captured.amount_minor
        for settlement, _ in t.settlements.values():
            ccy = settlement.currency.value
            expected[ccy] = expected.get(ccy, 0) - settlement.gross_minor
        actual: dict[str, int] = {}
        for _stored, p in postings(t):
            if p.account.type is AccountType.PSP_RECEIVABLES:
                actual[p.account.currency.value] = actual.get(p.account.currency.value, 0) + p.signed_amount_minor
        return [
            Drift(Check.PSP_RECEIVABLES, c, expected.get(c, 0), actual.get(c, 0))
            for c in sorted(set(expected) | set(actual))
            if expected.get(c, 0) != actual.get(c, 0)
        ]

    async def rebuild_snapshots(self) -> int:
        expected = self._expected()
        changed = [c for c in set(expected) | set(self.balances) if expected.get(c, 0) != self.balances.get(c, 0)]
        for code in changed:  # a snapshot repaired to zero stays, as a row does in Postgres
            self.balances[code] = expected.get(code, 0)
            self.updated[code] = self._db.clock.now()
        return len(changed)

    async def postings_above_horizon(self) -> Unfolded:
        return Unfolded(
            horizon=self.folded_tx,
            postings=[(e, at) for e, at in self._entries() if e.tx >= self.folded_tx],  # type: ignore[misc]
        )
