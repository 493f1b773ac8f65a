"""The fold (once per cluster at a time): postings below a new horizon go into the snapshots.

The horizon H is the oldest transaction still running: every posting written by a transaction
below H has committed (or never will). The store adds Σ postings with previous H ≤ tx < H to each
account's snapshot in one transaction — one UPDATE per account per fold, never per event — and
the overlay then drops its entries below H. The postings come from Postgres, not Redis, so a
Redis restart or a crash between the two cannot lose a delta, and no posting is skipped however
late its transaction commits (hot GLOBAL accounts, concurrent writers)."""

from __future__ import annotations

import logging

from marketplace_pay.balances.application.ports import BalanceStore, Folded, Overlay
from marketplace_pay.shared.faults import faults

log = logging.getLogger(__name__)


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
