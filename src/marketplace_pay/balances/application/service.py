"""What the rest of the system may ask of the balances context."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any, Protocol

from marketplace_pay.balances.application.consumer import APPLY_LEDGER_ENTRIES, apply_ledger_entries
from marketplace_pay.balances.application.fold import fold_balances, sweep_overlay
from marketplace_pay.balances.application.ports import BalanceStore, Folded, Overlay, TrialBalance
from marketplace_pay.balances.application.reads import read_balance
from marketplace_pay.balances.application.reconcile import ReconcileReport, reconcile
from marketplace_pay.balances.domain.balance import Balance, Check
from marketplace_pay.ledger import LedgerEntriesRecorded
from marketplace_pay.shared.bus import Subscription
from marketplace_pay.shared.clock import Clock
from marketplace_pay.shared.envelope import Envelope
from marketplace_pay.shared.errors import NotFoundError


class SellerAccounts(Protocol):
    """Which account holds a seller's money (the ledger's account directory knows)."""

    async def account_of(self, seller_id: str) -> str | None:
        """The seller's MERCHANT_PAYABLE account code; None for an unknown seller."""
        ...


class Balances:
    def __init__(self, *, store: BalanceStore, overlay: Overlay, sellers: SellerAccounts, clock: Clock) -> None:
        self._store = store
        self._overlay = overlay
        self._sellers = sellers
        self._clock = clock
        # the periodic reconciliation's window: from an hour before this process started (what
        # finished earlier, the previous process's runs and the hourly full check cover)
        self._auth_checked_since = clock.now() - timedelta(hours=1)
        self._runs = 0
        self._full_until_clean = False

    async def of_account(self, account_code: str) -> Balance | None:
        return await read_balance(account_code, store=self._store, overlay=self._overlay, clock=self._clock)

    async def of_seller(self, seller_id: str) -> Balance:
        """The seller's MERCHANT_PAYABLE balance. NotFoundError for an unknown seller."""
        account_code = await self._sellers.account_of(seller_id)
        balance = await self.of_account(account_code) if account_code is not None else None
        if balance is None:
            raise NotFoundError(f"Seller {seller_id} not found")
        return balance

    async def fold(self) -> Folded | None:
        return await fold_balances(store=self._store, overlay=self._overlay)

    async def sweep_overlay(self) -> None:
        await sweep_overlay(store=self._store, overlay=self._overlay)

    async def reconcile(self, *, repair: bool = False, grace_s: float = 30.0) -> ReconcileReport:
        """Every check over the whole ledger (the command line's)."""
        return await reconcile(
            store=self._store, overlay=self._overlay, clock=self._clock, repair=repair, grace_s=grace_s
        )

    async def reconcile_since_last_run(self, *, grace_s: float = 30.0, full_every: int = 12) -> ReconcileReport:
        """The periodic job's reconciliation. Checking every finished payment's authorization
        hold reads the whole ledger, and grows with it; here only the payments finished since
        this process's previous run are checked (on its first run, those of the last hour), and
        every one on every `full_every`-th run. The window moves on only after a clean check, and a
        full check that found a difference is repeated until it is clean: a difference stays
        reported until it is gone."""
        # where the next run starts: a minute before this run's bound, whatever the skew between
        # this clock and the database's (checking a payment twice costs nothing)
        cutoff = self._clock.now() - timedelta(seconds=grace_s + 60)
        self._runs += 1
        full = self._runs % full_every == 0 or self._full_until_clean
        report = await reconcile(
            store=self._store,
            overlay=self._overlay,
            clock=self._clock,
            grace_s=grace_s,
            finished_since=None if full else self._auth_checked_since,
        )
        open_holds = any(d.check is Check.AUTH_OPEN for d in report.drift)
        if not open_holds:
            self._auth_checked_since = cutoff
        self._full_until_clean = full and open_holds  # a difference only a full check sees stays reported
        return report

    async def trial_balance(self) -> list[TrialBalance]:
        return await self._store.trial_balance()

    def subscriptions(self, *, batch_max: int) -> list[Subscription]:
        async def apply(batch: Sequence[Envelope[Any]]) -> None:
            await apply_ledger_entries(batch, overlay=self._overlay)

        return [
            Subscription(APPLY_LEDGER_ENTRIES, LedgerEntriesRecorded, apply, batch_max, ordered=False, concurrency=2)
        ]
