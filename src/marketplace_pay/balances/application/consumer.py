"""The consumer of LedgerEntriesRecorded: each posting's signed amount becomes an entry in its
account's overlay, keyed by the journal's seq and scored by the transaction that wrote it — one
atomic call per batch, idempotent (the same posting twice is the same entry), in any order."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from marketplace_pay.balances.application.ports import Overlay, OverlayUnavailable
from marketplace_pay.balances.domain.balance import Entry
from marketplace_pay.infra import metrics
from marketplace_pay.ledger import LedgerEntriesRecorded
from marketplace_pay.shared.envelope import Envelope

log = logging.getLogger(__name__)

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
        log.warning(
            "balance overlay unavailable; the next fold catches up", extra={"entries": len(entries), "error": repr(exc)}
        )
