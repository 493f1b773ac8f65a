"""A real-time balance = the snapshot (as of its horizon) + the overlay's entries at or above it."""

from __future__ import annotations

from marketplace_pay.balances.application.ports import BalanceStore, Overlay, OverlayUnavailable
from marketplace_pay.balances.domain.balance import Balance, Entry, unfolded_minor
from marketplace_pay.shared.clock import Clock


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
    above = snap.unfolded_minor if recent is None else unfolded_minor(recent, snap.horizon)
    return Balance(account_code, snap.balance_minor + above, snap.currency, clock.now())
