"""Balances as facts about postings: a balance is a snapshot of every posting below a horizon
(a transaction id) plus the postings at or above it, which the overlay holds as entries."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from typing import NamedTuple

import msgspec


class Entry(NamedTuple):
    """One posting as the overlay holds it."""

    account_code: str
    tx: int  # the transaction that wrote it: folded once the horizon passes it
    seq: int  # its journal's seq: one posting per account and journal
    signed_amount_minor: int


class Balance(msgspec.Struct, frozen=True):
    account_code: str
    balance_minor: int
    currency: str
    as_of: datetime


class Check(StrEnum):
    """What reconciliation compares."""

    SNAPSHOT = "snapshot"  # a snapshot against Σ of its account's postings below the horizon
    REAL_TIME = "real-time"  # snapshot + overlay against every posting
    TRIAL_BALANCE = "trial-balance"  # debits against credits, per currency
    AUTH_OPEN = "auth-open"  # a finished payment's authorization hold against zero
    PSP_RECEIVABLES = "psp-receivables"  # what the PSP owes against captured − refunded − settled, per currency


class Drift(msgspec.Struct, frozen=True):
    check: Check
    subject: str  # account code, currency or payment
    expected_minor: int
    actual_minor: int

    @property
    def difference_minor(self) -> int:
        return self.actual_minor - self.expected_minor

    @property
    def is_balance(self) -> bool:
        """About one account's balance (not the books as a whole)."""
        return self.check in (Check.SNAPSHOT, Check.REAL_TIME)


def unfolded_minor(entries: Iterable[Entry], horizon: int) -> int:
    """Σ of the entries the snapshot as of `horizon` does not contain yet."""
    return sum(e.signed_amount_minor for e in entries if e.tx >= horizon)


def overlay_differences(
    entries: Mapping[str, Sequence[Entry]],
    postings: Iterable[tuple[Entry, datetime]],
    *,
    horizon: int,
    settled_before: datetime,
) -> list[tuple[str, int, int]]:
    """(account, expected, actual) where the overlay disagrees with the postings at or above the
    horizon. An entry that matches no posting is wrong; a posting missing from the overlay counts
    only once it is older than `settled_before` (until then its event may still be on its way).
    The entries must have been read before the postings: an entry reaches the overlay only after
    its posting committed, so every genuine entry has its posting in the later read."""
    by_account: dict[str, dict[int, tuple[int, datetime]]] = {}
    for entry, created_at in postings:
        by_account.setdefault(entry.account_code, {})[entry.seq] = (entry.signed_amount_minor, created_at)
    differences = []
    for code in set(by_account) | set(entries):
        held = {e.seq: e.signed_amount_minor for e in entries.get(code, ()) if e.tx >= horizon}
        real = by_account.get(code, {})
        expected = sum(a for seq, (a, at) in real.items() if seq in held or at < settled_before)
        actual = sum(held.values())
        phantom = any(seq not in real or real[seq][0] != a for seq, a in held.items())
        if actual != expected or phantom:
            differences.append((code, expected, actual))
    return differences


def phantoms(entries: Iterable[Entry], postings: Iterable[Entry], *, horizon: int) -> list[Entry]:
    """Entries at or above the horizon that match no posting."""
    real = {(e.account_code, e.seq, e.signed_amount_minor) for e in postings}
    return [e for e in entries if e.tx >= horizon and (e.account_code, e.seq, e.signed_amount_minor) not in real]
