"""What the balances context needs from the outside: the Postgres snapshots (and the postings
they are folded from) and the Redis overlay."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

import msgspec

from marketplace_pay.balances.domain.balance import Drift, Entry


class OverlayUnavailable(Exception):
    """The overlay's store cannot be reached."""


class Overlay(Protocol):
    """Per account, the signed amounts of postings not yet folded."""

    async def apply(self, entries: Sequence[Entry]) -> int:
        """Add entries atomically; an entry already there, or below the folded horizon, is
        ignored. Returns how many were new. Raises OverlayUnavailable."""
        ...

    async def entries(self, account_code: str) -> list[Entry]:
        """The account's overlay. Raises OverlayUnavailable."""
        ...

    async def accounts(self) -> list[str]:
        """Every account with an overlay."""
        ...

    async def prune(self, horizon: int, account_codes: Sequence[str]) -> None:
        """Drop entries below `horizon` of these accounts (all accounts when empty); remember the
        horizon (entries below it are refused from now on)."""
        ...

    async def remove(self, entries: Sequence[Entry]) -> None:
        """Drop exactly these entries."""
        ...


class Folded(msgspec.Struct, frozen=True):
    horizon: int  # a transaction id: every posting below it is in the snapshots
    accounts: list[str]


class Snapshot(msgspec.Struct, frozen=True):
    account_code: str
    currency: str
    balance_minor: int
    horizon: int
    updated_at: datetime | None
    unfolded_minor: int = 0  # Σ postings at or above the horizon, when asked for


class Unfolded(msgspec.Struct, frozen=True):
    horizon: int
    postings: list[tuple[Entry, datetime]]  # (entry, created at)


class TrialBalance(msgspec.Struct, frozen=True):
    currency: str
    debits_minor: int
    credits_minor: int


class BalanceStore(Protocol):
    async def horizon(self) -> int:
        """The folded horizon: every posting written by a transaction below it is in the snapshots."""
        ...

    async def fold(self) -> Folded | None:
        """Fold postings up to a new commit horizon into the snapshots. None when another
        process is folding, or writers could not be fenced in time (the next run retries)."""
        ...

    async def snapshot(self, account_code: str, *, with_unfolded: bool = False) -> Snapshot | None:
        """The account's snapshot and the horizon it is as of (one consistent read); None for
        an unknown account. `with_unfolded`: also Σ of its postings at or above the horizon."""
        ...

    async def snapshot_drift(self) -> tuple[int, list[Drift]]:
        """(accounts checked, accounts whose snapshot differs from Σ of their postings below the horizon)."""
        ...

    async def trial_balance(self) -> list[TrialBalance]:
        """Debits and credits of every currency."""
        ...

    async def auth_drift(self, *, finished_before_s: float, finished_since: datetime | None = None) -> list[Drift]:
        """Payments finished more than `finished_before_s` ago (and, given `finished_since`, not
        before it) whose AUTH_RECEIVABLE / AUTH_LIABILITY effects do not net to zero."""
        ...

    async def psp_receivables_drift(self, *, finished_before_s: float) -> list[Drift]:
        """Currencies whose PSP_RECEIVABLES balance differs from what the payments say was
        captured, minus what they say was refunded, minus what was settled. Payments changed in
        the last `finished_before_s` are left out of both sides (their journals may be on their way)."""
        ...

    async def rebuild_snapshots(self) -> int:
        """Recompute every snapshot from its postings below the horizon. Returns accounts changed."""
        ...

    async def postings_above_horizon(self) -> Unfolded:
        """Every posting at or above the horizon, in one consistent read."""
        ...
