"""Balances (SPEC §8): a snapshot in Postgres plus the recent postings in Redis.

- The consumer of LedgerEntriesRecorded adds each posting's signed amount to its account's
  Redis overlay, as an entry keyed by the journal's seq and scored by the id of the transaction
  that wrote it: one Lua call per batch, atomic, and idempotent (the same posting twice is the
  same entry), in any order.
- The fold job (once per cluster) takes the horizon H = the oldest transaction still running:
  every posting written by a transaction below H has committed (or never will). It adds Σ
  postings with previous H ≤ tx < H to each account's snapshot in one transaction — one UPDATE
  per account per fold, never per event — and then drops the overlay entries below H. It reads
  the postings from Postgres, not Redis, so a Redis restart, a TTL or a crash between Redis and
  Postgres cannot lose a delta, and no posting is skipped however late its transaction commits
  (hot GLOBAL accounts, concurrent writers). It takes no lock that the writers wait for.
- A real-time balance = snapshot (as of H) + overlay entries at or above H.
- Reconciliation compares every snapshot with Σ of its postings below H and the overlay with
  the postings at or above it (both exact, even under load), the trial balance per currency and
  the AUTH_* accounts of finished payments; `repair` rebuilds both from the postings.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple, Protocol

import msgspec

from marketplace_pay.infra import metrics
from marketplace_pay.ledger.domain.events import LedgerEntriesRecorded
from marketplace_pay.shared.clock import Clock
from marketplace_pay.shared.envelope import Envelope
from marketplace_pay.shared.faults import faults

log = logging.getLogger(__name__)

class Entry(NamedTuple):
    """One posting as the overlay holds it."""

    account_code: str
    tx: int  # the transaction that wrote it: folded once the horizon passes it
    seq: int  # its journal's seq: one posting per account and journal
    signed_amount_minor: int


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

    async def trial_balance_drift(self) -> list[Drift]:
        """Currencies whose debits differ from their credits."""
        ...

    async def auth_drift(self, *, finished_before_s: float) -> list[Drift]:
        """Payments finished more than `finished_before_s` ago whose AUTH_RECEIVABLE /
        AUTH_LIABILITY effects do not net to zero."""
        ...

    async def rebuild_snapshots(self) -> int:
        """Recompute every snapshot from its postings below the horizon. Returns accounts changed."""
        ...

    async def postings_above_horizon(self) -> Unfolded:
        """Every posting at or above the horizon, in one consistent read."""
        ...


class Unfolded(msgspec.Struct, frozen=True):
    horizon: int
    postings: list[tuple[Entry, datetime]]  # (entry, created at)


# -- the consumer ---------------------------------------------------------------------------


APPLY_LEDGER_ENTRIES = "balances-apply-ledger-entries"


async def apply_ledger_entries(batch: Sequence[Envelope[LedgerEntriesRecorded]], *, overlay: Overlay) -> None:
    entries = [
        Entry(p.account_code, entry.tx, entry.seq, p.signed_amount_minor)
        for e in batch
        for entry in e.data.ledger_entries
        for p in entry.postings
    ]
    if not entries:
        return
    try:
        await overlay.apply(entries)
    except OverlayUnavailable as exc:
        # The overlay only makes balances real-time: the fold reads Postgres and restores them
        # within a fold interval. Waiting for Redis here would hold back the whole pipeline.
        metrics.OVERLAY_SKIPPED.inc(len(entries))
        log.warning("balance overlay unavailable; the next fold catches up", extra={"entries": len(entries), "error": repr(exc)})


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
    """Drop overlay entries below the horizon in every account (late ones that arrived after
    their account was last folded)."""
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
    try:
        recent: list[Entry] | None = await overlay.entries(account_code)
    except OverlayUnavailable:
        recent = None  # Redis is down: the postings above the horizon come from Postgres instead
    snap = await store.snapshot(account_code, with_unfolded=recent is None)
    if snap is None:
        return None
    if recent is None:
        total = snap.balance_minor + snap.unfolded_minor
    else:
        total = snap.balance_minor + sum(e.signed_amount_minor for e in recent if e.tx >= snap.horizon)
    return Balance(account_code, total, snap.currency, clock.now())


# -- reconciliation -------------------------------------------------------------------------


class ReconcileReport(msgspec.Struct):
    drift: list[Drift]
    accounts_checked: int
    repaired: bool = False

    @property
    def ok(self) -> bool:
        return not self.drift


async def _overlay(overlay: Overlay) -> dict[str, list[Entry]]:
    return {code: await overlay.entries(code) for code in await overlay.accounts()}


async def _real_time_drift(store: BalanceStore, overlay: Overlay, clock: Clock, grace_s: float) -> list[Drift]:
    """What the API would show (snapshot + overlay) against the postings, exact under load too.

    The overlay is read *before* the postings: an entry only reaches Redis after its posting
    committed, so every genuine entry read must match a posting the later read sees. At or above
    the horizon, an entry that matches no posting is wrong; a posting missing from the overlay
    counts only once it is older than `grace_s` (until then its event may still be on its way)."""
    entries_by_account = await _overlay(overlay)
    unfolded = await store.postings_above_horizon()
    horizon = unfolded.horizon
    cutoff = clock.now() - timedelta(seconds=grace_s)
    postings: dict[str, dict[int, tuple[int, datetime]]] = {}
    for entry, created_at in unfolded.postings:
        postings.setdefault(entry.account_code, {})[entry.seq] = (entry.signed_amount_minor, created_at)
    drift = []
    for code in set(postings) | set(entries_by_account):
        entries = {e.seq: e.signed_amount_minor for e in entries_by_account.get(code, []) if e.tx >= horizon}
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
    metrics.RECONCILED_AT.set_to_current_time()
    return ReconcileReport(drift=drift, accounts_checked=checked, repaired=repair)


def record_drift(drift: Sequence[Drift]) -> None:
    accounts = {d.subject for d in drift if d.check in ("snapshot", "real-time")}
    metrics.BALANCE_DRIFT.set(len(accounts))
    metrics.BALANCE_DRIFT_MINOR.set(sum(abs(d.difference_minor) for d in drift if d.check in ("snapshot", "real-time")))
    for check in metrics.RECONCILIATION_CHECKS:
        metrics.RECONCILIATION_DIFFERENCES.labels(check).set(sum(d.check == check for d in drift))


async def _repair(*, store: BalanceStore, overlay: Overlay) -> None:
    """Snapshots from the postings below the horizon; the overlay gets every posting at or above
    it and loses the entries that match no posting. Safe while the service runs: the overlay is
    read before the postings (so an entry the consumer adds meanwhile is never judged, and every
    genuine entry read has its posting in the later read), adding is idempotent, and only the
    wrong entries themselves are removed."""
    await fold_balances(store=store, overlay=overlay)
    changed = await store.rebuild_snapshots()
    before = await _overlay(overlay)
    unfolded = await store.postings_above_horizon()
    real = {(e.account_code, e.seq, e.signed_amount_minor) for e, _ in unfolded.postings}
    phantoms = [
        e
        for entries in before.values()
        for e in entries
        if e.tx >= unfolded.horizon and (e.account_code, e.seq, e.signed_amount_minor) not in real
    ]
    await overlay.prune(unfolded.horizon, [])
    await overlay.apply([entry for entry, _ in unfolded.postings])
    if phantoms:
        await overlay.remove(phantoms)
    log.warning(
        "balances repaired",
        extra={
            "snapshotsChanged": changed,
            "overlayEntries": len(unfolded.postings),
            "phantomsRemoved": len(phantoms),
            "horizon": unfolded.horizon,
        },
    )


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
