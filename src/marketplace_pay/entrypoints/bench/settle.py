"""Which accepted payments have settled, and when: one query per polling round for all payments
still open, so watching the pipeline does not become load of its own."""

from __future__ import annotations

import time
from array import array
from collections.abc import Mapping, Sequence

import asyncpg

from marketplace_pay.entrypoints.bench.figures import DECLINED, TERMINAL_STATUSES, OrderRow, is_settled
from marketplace_pay.shared.ids import PAYMENT_PREFIX, InvalidPublicId, decode_public_id

# Payments that finished (or were declined) among those asked about, with their orders and the
# ids and latest write time of their journals. Journals carry the internal payment id; their
# created_at is the database clock.
SETTLE_QUERY = """
SELECT p.payment_id, p.status, o.ids AS order_ids, o.sellers, o.amounts, o.statuses,
       j.ids AS journal_ids, extract(epoch FROM j.last_at)::float8 AS last_journal_at
FROM payments p
LEFT JOIN LATERAL (
    SELECT array_agg(po.payment_order_id) AS ids, array_agg(po.seller_id) AS sellers,
           array_agg(po.amount_minor) AS amounts, array_agg(po.status) AS statuses
    FROM payment_orders po WHERE po.payment_id = p.payment_id
) o ON true
LEFT JOIN LATERAL (
    SELECT array_agg(je.journal_id) AS ids, max(je.created_at) AS last_at
    FROM journal_entries je WHERE je.payment_id = p.payment_id
) j ON true
WHERE p.payment_id = ANY($1::bigint[]) AND p.status = ANY($2::text[])
"""

# one round asks about the oldest this many open payments at most (a pipeline far behind has
# not finished the newer ones anyway)
POLL_BATCH_MAX = 20_000


def payment_id_from_location(location: bytes) -> int:
    """`/api/v1/payments/pay_…` -> the internal id."""
    public = location.rsplit(b"/", 1)[-1].decode("ascii", "replace")
    return decode_public_id(PAYMENT_PREFIX, public)


class SettleTracker:
    def __init__(self, *, expected_orders: int, commission_bps: Mapping[str, int]) -> None:
        self.expected_orders = expected_orders
        self.commission_bps = dict(commission_bps)
        self.accepted_at: dict[int, float] = {}  # payment id -> when its 202 arrived (this host's clock)
        self.open: set[int] = set()
        self.settled_at: dict[int, float] = {}  # payment id -> its last journal's created_at (database clock)
        self.declined: set[int] = set()
        self.bad_locations: list[str] = []
        self.polls = 0
        self.poll_s = 0.0

    def add(self, locations: Sequence[bytes], accepted_at: array[float]) -> None:
        for location, at in zip(locations, accepted_at, strict=True):
            try:
                payment_id = payment_id_from_location(location)
            except (InvalidPublicId, ValueError):
                if len(self.bad_locations) < 5:
                    self.bad_locations.append(location.decode("latin-1"))
                continue
            self.accepted_at[payment_id] = at
            self.open.add(payment_id)

    async def poll(self, conn: asyncpg.Connection) -> int:
        """One round; returns how many payments settled in it."""
        if not self.open:
            return 0
        ids = sorted(self.open)[:POLL_BATCH_MAX]
        started = time.monotonic()
        rows = await conn.fetch(SETTLE_QUERY, ids, [*TERMINAL_STATUSES, DECLINED])
        self.polls += 1
        self.poll_s += time.monotonic() - started
        settled = 0
        for row in rows:
            payment_id = row["payment_id"]
            if row["status"] == DECLINED:
                self.declined.add(payment_id)
                self.open.discard(payment_id)
                continue
            orders = [
                OrderRow(*fields)
                for fields in zip(
                    row["order_ids"] or (),
                    row["sellers"] or (),
                    row["amounts"] or (),
                    row["statuses"] or (),
                    strict=True,
                )
            ]
            if is_settled(
                payment_id,
                row["status"],
                orders,
                row["journal_ids"] or (),
                expected_orders=self.expected_orders,
                commission_bps=self.commission_bps,
            ):
                self.settled_at[payment_id] = row["last_journal_at"]
                self.open.discard(payment_id)
                settled += 1
        return settled
