"""Balances (SPEC §8): a snapshot in Postgres plus the recent postings in Redis.

- The consumer of LedgerEntriesRecorded adds each posting's signed amount to its account's
  Redis overlay, keyed by the journal's seq: one Lua call per batch, atomic, and idempotent
  (the same posting twice is the same entry), in any order.
- The fold job (once per cluster) takes a horizon H below which every journal has committed
  (the ledger's commit fence), adds Σ postings in (previous H, H] to each account's snapshot
  in one transaction — one UPDATE per account per fold, never per event — and then drops the
  overlay entries ≤ H. It reads the postings from Postgres, not Redis, so a Redis restart, a
  TTL or a crash between Redis and Postgres cannot lose a delta, and a posting whose seq is
  below one already folded (hot GLOBAL accounts, concurrent writers) is never skipped.
- A real-time balance = snapshot (as of H) + overlay entries above H.
- Reconciliation compares every snapshot with Σ of its postings ≤ H and the overlay with the
  postings above H (both exact, even under load), the trial balance per currency and the AUTH_*
  accounts of finished payments; `repair` rebuilds both from the postings.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

import msgspec

from marketplace_pay.infra import metrics
from marketplace_pay.ledger.domain.events import LedgerEntriesRecorded
from marketplace_pay.shared.clock import Clock
from marketplace_pay.shared.envelope import Envelope
from marketplace_pay.shared.faults import faults

log = logging.getLogger(__name__)

APPLY = "account-balance-consumer-group"

Entry = tuple[str, int, int]  # (account code, journal seq, signed amount in minor units)


class Overlay(Protocol):
    """Per account, the signed amounts of postings not yet folded, keyed by journal seq."""

    async def apply(self, entries: Sequence[Entry]) -> int:
        """Add entries atomically; an entry already there, or at or below the folded horizon, is
        ignored. Returns how many were new."""
        ...

    async def entries(self, account_code: str) -> list[tuple[int, int]]:
        """(seq, signed amount) of the account's overlay."""
        ...

    async def accounts(self) -> list[str]:
        """Every account with an overlay."""
        ...

    async def prune(self, horizon: int, account_codes: Sequence[str]) -> None:
        """Drop entries ≤ horizon of these accounts (all accounts when empty); remember the horizon."""
        ...

    async def clear(self) -> None: ...


class Folded(msgspec.Struct, frozen=True):
    horizon: int
    accounts: list[str]


class Snapshot(msgspec.Struct, frozen=True):
    account_code: str
    currency: str
    balance_minor: int
    horizon: int
    updated_at: datetime | None


class Drift(msgspec.Struct, frozen=True):
    check: str  # "snapshot" | "real-time" | "trial-balance" | "auth-open"
    subject: str  # account code, currency or payment
    expected_minor: int
    actual_minor: int

    @property
    def difference_minor(self) -> int:
        return self.actual_minor - self.expected_minor


class BalanceStore(Protocol):
    async def horizon(self) -> int:
        """The folded horizon: every posting with seq ≤ it is in the snapshots."""
        ...

    async def fold(self) -> Folded | None:
        """Fold postings up to a new commit horizon into the snapshots. None when another
        process is folding, or writers could not be fenced in time (the next run retries)."""
        ...

    async def snapshot(self, account_code: str) -> Snapshot | None:
        """The account's snapshot and the horizon it is as of (one consistent read); None for
        an unknown account."""
        ...

    async def snapshot_drift(self) -> tuple[int, list[Drift]]:
        """(accounts checked, accounts whose snapshot differs from Σ of their postings ≤ the horizon)."""
        ...

    async def trial_balance_drift(self) -> list[Drift]:
        """Currencies whose debits differ from their credits."""
        ...

    async def auth_drift(self, *, finished_before_s: float) -> list[Drift]:
        """Payments finished more than `finished_before_s` ago whose AUTH_RECEIVABLE /
        AUTH_LIABILITY effects do not net to zero."""
        ...

    async def rebuild_snapshots(self) -> int:
        """Recompute every snapshot from its postings ≤ the horizon. Returns accounts changed."""
        ...

    async def postings_above_horizon(self) -> tuple[int, list[tuple[str, int, int, datetime]]]:
        """(horizon, (account, seq, signed amount, created at) of every posting above it), one read."""
        ...


# -- the consumer ---------------------------------------------------------------------------


async def apply_ledger_entries(batch: Sequence[Envelope[LedgerEntriesRecorded]], *, overlay: Overlay) -> None:
    entries = [
        (p.account_code, entry.ledger_entry_id, p.signed_amount)
        for e in batch
        for entry in e.data.ledger_entries
        for p in entry.postings
    ]
    if entries:
        await overlay.apply(entries)


# -- the fold -------------------------------------------------------------------------------


async def fold_balances(*, store: BalanceStore, overlay: Overlay) -> Folded | None:
    folded = await store.fold()
    faults.hit("balances.fold.after_commit")
    if folded is not None and folded.accounts:
        try:
            await overlay.prune(folded.horizon, folded.accounts)
        except Exception as exc:  # noqa: BLE001 - reads filter by the horizon; the next fold prunes
            log.warning("overlay prune failed", extra={"error": repr(exc)})
    return folded


async def sweep_overlay(*, store: BalanceStore, overlay: Overlay) -> None:
    """Drop overlay entries at or below the horizon in every account (late ones that arrived
    after their account was last folded)."""
    await overlay.prune(await store.horizon(), [])


# -- reads ----------------------------------------------------------------------------------


class Balance(msgspec.Struct, frozen=True):
    account_code: str
    balance_minor: int
    currency: str
    as_of: datetime


async def read_balance(account_code: str, *, store: BalanceStore, overlay: Overlay, clock: Clock) -> Balance | None:
    # Redis first, then Postgres: if a fold lands in between, Postgres's newer horizon filters
    # out the overlay entries it already contains; nothing is counted twice or missed.
    recent = await overlay.entries(account_code)
    snap = await store.snapshot(account_code)
    if snap is None:
        return None
    total = snap.balance_minor + sum(amount for seq, amount in recent if seq > snap.horizon)
    return Balance(account_code, total, snap.currency, clock.now())


# -- reconciliation -------------------------------------------------------------------------


class ReconcileReport(msgspec.Struct):
    drift: list[Drift]
    accounts_checked: int
    repaired: bool = False

    @property
    def ok(self) -> bool:
        return not self.drift


async def _real_time_drift(store: BalanceStore, overlay: Overlay, clock: Clock, grace_s: float) -> list[Drift]:
    """What the API would show (snapshot + overlay) against the postings. Above the horizon, an
    overlay entry must match a posting exactly; a posting missing from the overlay counts only
    once it is older than `grace_s` (until then its event may still be on its way), so this is
    exact under load too."""
    horizon, above = await store.postings_above_horizon()
    cutoff = clock.now() - timedelta(seconds=grace_s)
    postings: dict[str, dict[int, tuple[int, datetime]]] = {}
    for code, seq, amount, created_at in above:
        postings.setdefault(code, {})[seq] = (amount, created_at)
    drift = []
    for code in set(postings) | set(await overlay.accounts()):
        entries = {seq: amount for seq, amount in await overlay.entries(code) if seq > horizon}
        expected_here = postings.get(code, {})
        expected = sum(a for seq, (a, at) in expected_here.items() if seq in entries or at < cutoff)
        actual = sum(entries.values())
        phantom = any(seq not in expected_here or expected_here[seq][0] != a for seq, a in entries.items())
        if actual != expected or phantom:
            snap = await store.snapshot(code)
            base = snap.balance_minor if snap else 0
            drift.append(Drift("real-time", code, base + expected, base + actual))
    return drift


async def reconcile(
    *, store: BalanceStore, overlay: Overlay, clock: Clock, repair: bool = False, grace_s: float = 30.0
) -> ReconcileReport:
    """Check (and with `repair`, rebuild first) every balance against the postings: snapshots
    against Σ postings ≤ the horizon, the Redis overlay against the postings above it, debits
    against credits per currency, and the AUTH_* accounts of finished payments. Exact at any
    time, also while payments flow."""
    if repair:
        await _repair(store=store, overlay=overlay)
    await fold_balances(store=store, overlay=overlay)
    checked, snapshot = await store.snapshot_drift()
    drift = [
        *snapshot,
        *await _real_time_drift(store, overlay, clock, grace_s),
        *await store.trial_balance_drift(),
        *await store.auth_drift(finished_before_s=grace_s),
    ]
    record_drift(drift)
    return ReconcileReport(drift=drift, accounts_checked=checked, repaired=repair)


def record_drift(drift: Sequence[Drift]) -> None:
    accounts = {d.subject for d in drift if d.check in ("snapshot", "real-time")}
    metrics.BALANCE_DRIFT.set(len(accounts))
    metrics.BALANCE_DRIFT_MINOR.set(sum(abs(d.difference_minor) for d in drift if d.check in ("snapshot", "real-time")))


async def _repair(*, store: BalanceStore, overlay: Overlay) -> None:
    """Snapshots from the postings ≤ the horizon, the overlay from the postings above it. Events
    still in flight re-add identical overlay entries, so this is safe while the service runs."""
    await fold_balances(store=store, overlay=overlay)
    changed = await store.rebuild_snapshots()
    horizon, above = await store.postings_above_horizon()
    await overlay.clear()
    await overlay.prune(horizon, [])
    await overlay.apply([(code, seq, amount) for code, seq, amount, _ in above])
    log.warning("balances repaired", extra={"snapshotsChanged": changed, "overlayEntries": len(above), "horizon": horizon})


def drift_report(report: ReconcileReport) -> list[dict[str, Any]]:
    return [
        {
            "check": d.check,
            "subject": d.subject,
            "expected": d.expected_minor,
            "actual": d.actual_minor,
            "difference": d.difference_minor,
        }
        for d in report.drift
    ]
