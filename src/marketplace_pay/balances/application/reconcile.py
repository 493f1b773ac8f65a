"""Reconciliation: every balance against the postings, exact at any time, also under load.

Snapshots against Σ postings below the horizon, the overlay against the postings at or above it,
debits against credits per currency, the authorization hold of every finished payment against
zero, and per currency what the PSP owes (PSP_RECEIVABLES) against what was captured, minus
refunded, minus settled. `repair` first rebuilds snapshots and overlay from the postings."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import msgspec

from marketplace_pay.balances.application.fold import fold_balances
from marketplace_pay.balances.application.ports import BalanceStore, Overlay
from marketplace_pay.balances.domain.balance import Check, Drift, Entry, overlay_differences, phantoms
from marketplace_pay.infra import metrics
from marketplace_pay.shared.clock import Clock

log = logging.getLogger(__name__)


class ReconcileReport(msgspec.Struct):
    drift: list[Drift]
    accounts_checked: int
    repaired: bool = False

    @property
    def ok(self) -> bool:
        return not self.drift

    def differences(self) -> list[dict[str, Any]]:
        return [
            {
                "check": d.check.value,
                "subject": d.subject,
                "expected": d.expected_minor,
                "actual": d.actual_minor,
                "difference": d.difference_minor,
            }
            for d in self.drift
        ]


async def reconcile(
    *,
    store: BalanceStore,
    overlay: Overlay,
    clock: Clock,
    repair: bool = False,
    grace_s: float = 30.0,
    finished_since: datetime | None = None,
) -> ReconcileReport:
    """Every check; the authorization holds only of payments finished since `finished_since`
    when given (the periodic job's window: the ones before were checked by its earlier runs)."""
    if repair:
        await _repair(store=store, overlay=overlay)
    await fold_balances(store=store, overlay=overlay)
    checked, snapshot = await store.snapshot_drift()
    drift = [
        *snapshot,
        *await real_time_drift(store, overlay, clock, grace_s),
        *[
            Drift(Check.TRIAL_BALANCE, t.currency, t.debits_minor, t.credits_minor)
            for t in await store.trial_balance()
            if t.debits_minor != t.credits_minor
        ],
        *await store.auth_drift(finished_before_s=grace_s, finished_since=finished_since),
        *await store.psp_receivables_drift(finished_before_s=grace_s),
    ]
    record_drift(drift)
    metrics.RECONCILED_AT.set_to_current_time()
    return ReconcileReport(drift=drift, accounts_checked=checked, repaired=repair)


async def _overlay(overlay: Overlay) -> dict[str, list[Entry]]:
    return {code: await overlay.entries(code) for code in await overlay.accounts()}


async def real_time_drift(store: BalanceStore, overlay: Overlay, clock: Clock, grace_s: float) -> list[Drift]:
    """What the API would show (snapshot + overlay) against the postings. The overlay is read
    before the postings (see `overlay_differences`); a posting younger than `grace_s` may still
    be missing from it."""
    entries = await _overlay(overlay)
    unfolded = await store.postings_above_horizon()
    differences = overlay_differences(
        entries, unfolded.postings, horizon=unfolded.horizon, settled_before=clock.now() - timedelta(seconds=grace_s)
    )
    drift = []
    for code, expected, actual in differences:
        snap = await store.snapshot(code)
        base = snap.balance_minor if snap else 0
        drift.append(Drift(Check.REAL_TIME, code, base + expected, base + actual))
    return drift


def record_drift(drift: Sequence[Drift]) -> None:
    balances = [d for d in drift if d.is_balance]
    metrics.BALANCE_DRIFT.set(len({d.subject for d in balances}))
    metrics.BALANCE_DRIFT_MINOR.set(sum(abs(d.difference_minor) for d in balances))
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
    wrong = phantoms(
        (e for entries in before.values() for e in entries), (e for e, _ in unfolded.postings), horizon=unfolded.horizon
    )
    await overlay.prune(unfolded.horizon, [])
    await overlay.apply([entry for entry, _ in unfolded.postings])
    if wrong:
        await overlay.remove(wrong)
    log.warning(
        "balances repaired",
        extra={
            "snapshotsChanged": changed,
            "overlayEntries": len(unfolded.postings),
            "phantomsRemoved": len(wrong),
            "horizon": unfolded.horizon,
        },
    )
