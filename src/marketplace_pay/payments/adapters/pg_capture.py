"""Postgres adapters of the payments context, capture side: the capture store (one statement
per handler batch) and the retry unit of work."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg

from marketplace_pay.infra import outbox
from marketplace_pay.infra.uow import OnCommit, PgUnitOfWork
from marketplace_pay.payments.application.ports import (
    NewOrder,
    OrderChange,
)
from marketplace_pay.payments.domain.payment_order import PaymentOrder, PaymentOrderStatus
from marketplace_pay.shared.envelope import Envelope
from marketplace_pay.shared.money import Currency, Money

# -- capture ---------------------------------------------------------------------------------

_ORDER_COLUMNS = (
    "payment_order_id, payment_id, seller_id, amount_minor, currency, status, retry_count, psp_key_attempt, "
    "psp_outcome_unknown, next_retry_at, created_at, updated_at"
)


def _order(row: asyncpg.Record) -> PaymentOrder:
    return PaymentOrder(
        payment_order_id=row["payment_order_id"],
        payment_id=row["payment_id"],
        seller_id=row["seller_id"],
        amount=Money(row["amount_minor"], Currency(row["currency"])),
        status=PaymentOrderStatus(row["status"]),
        retry_count=row["retry_count"],
        psp_key_attempt=row["psp_key_attempt"],
        psp_outcome_unknown=row["psp_outcome_unknown"],
        next_retry_at=row["next_retry_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


# New orders, and those of a redelivered event that were written before and not yet attempted.
# The second part is skipped when every order was new (the common case), and it looks orders up
# by primary key only: left to itself the planner intersected the key lookups with a scan of the
# whole open-orders index, which grows with the backlog, on every batch.
_OPEN_ORDERS = f"""
WITH ins AS (
    INSERT INTO payment_orders ({_ORDER_COLUMNS}, trace_id, traceparent)
    SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::bigint[], $5::text[], $6::text[], $7::int[],
                         $8::int[], $9::bool[], $10::timestamptz[], $11::timestamptz[], $12::timestamptz[],
                         $13::text[], $14::text[])
    ON CONFLICT (payment_order_id) DO NOTHING
    RETURNING {_ORDER_COLUMNS}
)
SELECT * FROM ins
UNION ALL
SELECT {_ORDER_COLUMNS} FROM (
    SELECT {_ORDER_COLUMNS} FROM payment_orders
    WHERE payment_order_id = ANY($1::bigint[]) AND (SELECT count(*) FROM ins) < cardinality($1::bigint[])
    OFFSET 0
) o
WHERE status = 'CAPTURE_REQUESTED' AND retry_count = 0
"""

# Guarded on each order's state before; a finished order rolls its payment up — the same rule as
# Payment.record_order_outcome: the last open order decides CAPTURED (everything captured),
# CAPTURED_PARTIALLY (some) or CAPTURE_FAILED (none) — or, when a captured order of the payment
# was refunded meanwhile, REFUNDED (all that was captured went back) or PARTIALLY_REFUNDED.
# Payment rows are locked in id order, so concurrent batches never deadlock on them. The events
# go with their orders' updates.
_SAVE_ATTEMPTS = f"""
WITH c AS (
    SELECT * FROM unnest($1::bigint[], $2::text[], $3::int[], $4::int[], $5::bool[], $6::timestamptz[],
                         $7::timestamptz[], $8::text[], $9::int[])
        AS c(id, status, retry_count, key_attempt, unknown, next_retry_at, updated_at, old_status, old_retry_count)
),
upd AS (
    UPDATE payment_orders o
    SET status = c.status, retry_count = c.retry_count, psp_key_attempt = c.key_attempt,
        psp_outcome_unknown = c.unknown, next_retry_at = c.next_retry_at,
        updated_at = greatest(o.updated_at, c.updated_at)
    FROM c
    WHERE o.payment_order_id = c.id AND o.status = c.old_status AND o.retry_count = c.old_retry_count
      AND o.status NOT IN ('CAPTURED', 'CAPTURE_FAILED')
    RETURNING o.payment_order_id, o.payment_id, o.status, o.amount_minor, o.updated_at
),
finished AS (
    SELECT payment_id, count(*) AS n,
           coalesce(sum(amount_minor) FILTER (WHERE status = 'CAPTURED'), 0) AS captured,
           max(updated_at) AS at
    FROM upd WHERE status IN ('CAPTURED', 'CAPTURE_FAILED') GROUP BY payment_id
),
locked AS (
    SELECT p.payment_id FROM payments p WHERE p.payment_id IN (SELECT payment_id FROM finished)
    ORDER BY p.payment_id FOR UPDATE
),
rolled AS (
    UPDATE payments p
    SET orders_open = p.orders_open - f.n,
        captured_amount_minor = p.captured_amount_minor + f.captured,
        status = CASE WHEN p.orders_open - f.n > 0 THEN p.status
                      WHEN p.refunded_amount_minor > 0
                       AND p.refunded_amount_minor = p.captured_amount_minor + f.captured THEN 'REFUNDED'
                      WHEN p.refunded_amount_minor > 0 THEN 'PARTIALLY_REFUNDED'
                      WHEN p.captured_amount_minor + f.captured = p.total_amount_minor THEN 'CAPTURED'
                      WHEN p.captured_amount_minor + f.captured > 0 THEN 'CAPTURED_PARTIALLY'
                      ELSE 'CAPTURE_FAILED' END,
        updated_at = greatest(p.updated_at, f.at)
    FROM finished f JOIN locked l USING (payment_id)
    WHERE p.payment_id = f.payment_id AND p.status = 'AUTHORIZED'
),
events AS ({outbox.insert_sql(10, only_for=(17, "upd.payment_order_id"))})
SELECT payment_order_id FROM upd
"""


class PgCaptureStore:
    def __init__(self, pool: asyncpg.Pool, *, on_commit: OnCommit | None = None) -> None:
        self._pool = pool
        self._on_commit = on_commit

    async def open_orders(self, orders: Sequence[NewOrder]) -> list[PaymentOrder]:
        if not orders:
            return []
        os = [n.order for n in orders]
        rows = await self._pool.fetch(
            _OPEN_ORDERS,
            [o.payment_order_id for o in os],
            [o.payment_id for o in os],
            [o.seller_id for o in os],
            [o.amount.amount_minor for o in os],
            [o.amount.currency.value for o in os],
            [o.status.value for o in os],
            [o.retry_count for o in os],
            [o.psp_key_attempt for o in os],
            [o.psp_outcome_unknown for o in os],
            [o.next_retry_at for o in os],
            [o.created_at for o in os],
            [o.updated_at for o in os],
            [n.trace_id for n in orders],
            [n.traceparent for n in orders],
        )
        return [_order(r) for r in rows]

    async def orders(self, payment_order_ids: Sequence[int]) -> dict[int, PaymentOrder]:
        if not payment_order_ids:
            return {}
        rows = await self._pool.fetch(
            f"SELECT {_ORDER_COLUMNS} FROM payment_orders WHERE payment_order_id = ANY($1::bigint[])",
            list(payment_order_ids),
        )
        return {r["payment_order_id"]: _order(r) for r in rows}

    async def save_attempts(self, changes: Sequence[OrderChange], events: Sequence[Envelope[Any]]) -> set[int]:
        if not changes:
            return set()
        rows = await self._pool.fetch(
            _SAVE_ATTEMPTS,
            [o.payment_order_id for o, _ in changes],
            [o.status.value for o, _ in changes],
            [o.retry_count for o, _ in changes],
            [o.psp_key_attempt for o, _ in changes],
            [o.psp_outcome_unknown for o, _ in changes],
            [o.next_retry_at for o, _ in changes],
            [o.updated_at for o, _ in changes],
            [before[0].value for _, before in changes],
            [before[1] for _, before in changes],
            *outbox.rows(events),
            [int(e.aggregate_id) for e in events],
        )
        applied = {r["payment_order_id"] for r in rows}
        if self._on_commit is not None and events:
            self._on_commit(outbox.shards([e for e in events if int(e.aggregate_id) in applied]))
        return applied

    async def overdue_retries(self, *, before: datetime, limit: int) -> list[tuple[int, int, int]]:
        rows = await self._pool.fetch(
            """SELECT payment_order_id, retry_count, next_retry_at FROM payment_orders
               WHERE status = 'PENDING_CAPTURE' AND next_retry_at < $1
               ORDER BY next_retry_at LIMIT $2""",
            before,
            limit,
        )
        return [(r["payment_order_id"], r["retry_count"], int(r["next_retry_at"].timestamp() * 1000)) for r in rows]

    async def stuck_orders(self, *, unchanged_since: datetime, limit: int) -> list[PaymentOrder]:
        rows = await self._pool.fetch(
            f"""SELECT {_ORDER_COLUMNS} FROM payment_orders
                WHERE status IN ('INITIATED_PENDING', 'CAPTURE_REQUESTED', 'PENDING_CAPTURE')
                  AND updated_at < $1 AND (next_retry_at IS NULL OR next_retry_at < $1)
                ORDER BY updated_at LIMIT $2""",
            unchanged_since,
            limit,
        )
        return [_order(r) for r in rows]

    async def unknown_outcomes(self) -> int:
        return int(
            await self._pool.fetchval(
                "SELECT count(*) FROM payment_orders WHERE psp_outcome_unknown AND status = 'PENDING_CAPTURE'"
            )
        )


class PgRetryUnitOfWork(PgUnitOfWork):
    async def lock_orders(self, payment_order_ids: Sequence[int]) -> dict[int, tuple[PaymentOrder, str, str | None]]:
        if not payment_order_ids:
            return {}
        rows = await self.connection.fetch(
            f"""SELECT {_ORDER_COLUMNS}, trace_id, traceparent FROM payment_orders
                WHERE payment_order_id = ANY($1::bigint[]) ORDER BY payment_order_id FOR UPDATE""",
            list(set(payment_order_ids)),
        )
        return {r["payment_order_id"]: (_order(r), r["trace_id"], r["traceparent"]) for r in rows}

    async def mark_dispatched(self, payment_order_ids: Sequence[int], *, touch: bool = False) -> None:
        if payment_order_ids:
            await self.connection.execute(
                """UPDATE payment_orders SET next_retry_at = NULL,
                          updated_at = CASE WHEN $2 THEN greatest(updated_at, now()) ELSE updated_at END
                   WHERE payment_order_id = ANY($1::bigint[])""",
                list(payment_order_ids),
                touch,
            )
