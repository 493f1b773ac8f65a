"""Postgres adapters of the payments context: the pay-in store (group-committed), the capture
store (one statement per handler batch), the retry unit of work and the reads."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from marketplace_pay.infra import outbox
from marketplace_pay.infra.batching import Batcher
from marketplace_pay.infra.uow import OnCommit, PgUnitOfWork
from marketplace_pay.payments.application.ports import (
    Keyed,
    NewOrder,
    OrderChange,
    PendingAuthorization,
    StoredPayment,
)
from marketplace_pay.payments.application.views import OrderState, PaymentView, payment_view
from marketplace_pay.payments.domain.payment import Payment, PaymentLine, PaymentStatus
from marketplace_pay.payments.domain.payment_order import PaymentOrder, PaymentOrderStatus
from marketplace_pay.shared.envelope import Envelope
from marketplace_pay.shared.money import Currency, Money


class _Line(msgspec.Struct, rename="camel"):
    payment_order_id: int
    seller_id: str
    amount_minor: int


_LINES = msgspec.json.Encoder()
_PAYMENT_COLUMNS = (
    "payment_id, buyer_id, order_id, currency, total_amount_minor, captured_amount_minor, status, lines, "
    "created_at, updated_at, trace_id, traceparent, orders_open"
)


def _payment(row: asyncpg.Record) -> Payment:
    currency = Currency(row["currency"])
    lines = msgspec.convert(row["lines"], list[_Line])
    return Payment(
        payment_id=row["payment_id"],
        buyer_id=row["buyer_id"],
        order_id=row["order_id"],
        total=Money(row["total_amount_minor"], currency),
        captured=Money(row["captured_amount_minor"], currency),
        status=PaymentStatus(row["status"]),
        lines=[PaymentLine(line.payment_order_id, line.seller_id, Money(line.amount_minor, currency)) for line in lines],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        orders_open=row["orders_open"],
    )


# -- pay-in ----------------------------------------------------------------------------------

_ADD = f"""
INSERT INTO payments ({_PAYMENT_COLUMNS}, client_id, idempotency_key, request_fingerprint)
SELECT a, b, c, d, e, f, g, h::jsonb, i, j, k, l, m, n, o, p
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[], $7::text[],
            $8::text[], $9::timestamptz[], $10::timestamptz[], $11::text[], $12::text[], $13::int[],
            $14::text[], $15::text[], $16::bytea[]) AS x(a, b, c, d, e, f, g, h, i, j, k, l, m, n, o, p)
ON CONFLICT DO NOTHING
RETURNING payment_id
"""

# The outcome, its events and the response kept for the key: written only for payments still
# PENDING_AUTH, all in one statement.
_RECORD_AUTHORIZATION = f"""
WITH c AS (SELECT * FROM unnest($1::bigint[], $2::text[], $3::timestamptz[]) AS c(id, status, at)),
upd AS (
    UPDATE payments p SET status = c.status, updated_at = c.at, auth_check_after = NULL
    FROM c WHERE p.payment_id = c.id AND p.status = 'PENDING_AUTH'
    RETURNING p.payment_id
),
events AS ({outbox.insert_sql(4, only_for=(11, "upd.payment_id"))}),
responses AS (
    INSERT INTO idempotency_responses (payment_id, response_status, response_body)
    SELECT r.id, r.status, r.body FROM unnest($12::bigint[], $13::smallint[], $14::bytea[]) AS r(id, status, body)
    WHERE r.id IN (SELECT payment_id FROM upd)
)
SELECT payment_id FROM upd
"""

_FIND = f"""
SELECT p.*, r.response_status, r.response_body
FROM (SELECT {_PAYMENT_COLUMNS}, request_fingerprint FROM payments WHERE {{where}}) p
LEFT JOIN LATERAL (
    SELECT response_status, response_body FROM idempotency_responses r
    WHERE r.payment_id = p.payment_id ORDER BY r.created_at LIMIT 1
) r ON true
"""


class PgPaymentStore:
    def __init__(self, pool: asyncpg.Pool, *, on_commit: OnCommit | None = None, batch_max: int = 256) -> None:
        self._pool = pool
        self._on_commit = on_commit
        self._adds: Batcher[tuple[Any, ...], bool] = Batcher(self._add_many, name="payments.add", batch_max=batch_max)
        self._outcomes: Batcher[tuple[Any, ...], bool] = Batcher(
            self._record_many, name="payments.authorize", batch_max=batch_max
        )

    # add --------------------------------------------------------------------------------

    async def add(self, payment: Payment, *, keyed: Keyed, trace_id: str, traceparent: str | None) -> bool:
        row = (
            payment.payment_id,
            payment.buyer_id,
            payment.order_id,
            payment.currency.value,
            payment.total.amount_minor,
            payment.captured.amount_minor,
            payment.status.value,
            _LINES.encode([_Line(line.payment_order_id, line.seller_id, line.amount.amount_minor) for line in payment.lines]).decode(),
            payment.created_at,
            payment.updated_at,
            trace_id,
            traceparent,
            payment.orders_open,
            keyed.client_id,
            keyed.idempotency_key,
            keyed.fingerprint,
        )
        return await self._adds.submit(row)

    async def _add_many(self, rows: Sequence[tuple[Any, ...]]) -> list[bool]:
        columns = [list(c) for c in zip(*rows, strict=True)]
        inserted = {r["payment_id"] for r in await self._pool.fetch(_ADD, *columns)}
        return [row[0] in inserted for row in rows]

    # outcome ------------------------------------------------------------------------------

    async def record_authorization(
        self, payment: Payment, events: Sequence[Envelope[Any]], response: tuple[int, bytes] | None
    ) -> bool:
        return await self._outcomes.submit((payment, events, response))

    async def _record_many(self, items: Sequence[tuple[Any, ...]]) -> list[bool]:
        events = [(p.payment_id, e) for p, es, _ in items for e in es]
        responses = [(p.payment_id, r) for p, _, r in items if r is not None]
        done = await self._pool.fetch(
            _RECORD_AUTHORIZATION,
            [p.payment_id for p, _, _ in items],
            [p.status.value for p, _, _ in items],
            [p.updated_at for p, _, _ in items],
            *outbox.rows([e for _, e in events]),
            [pid for pid, _ in events],
            [pid for pid, _ in responses],
            [r[0] for _, r in responses],
            [r[1] for _, r in responses],
        )
        recorded = {r["payment_id"] for r in done}
        if self._on_commit is not None and events:
            self._on_commit(outbox.shards([e for pid, e in events if pid in recorded]))
        return [p.payment_id in recorded for p, _, _ in items]

    async def keep_response(self, payment_id: int, response: tuple[int, bytes]) -> None:
        await self._pool.execute(
            """INSERT INTO idempotency_responses (payment_id, response_status, response_body)
               SELECT $1, $2, $3 WHERE NOT EXISTS (SELECT 1 FROM idempotency_responses WHERE payment_id = $1)""",
            payment_id,
            response[0],
            response[1],
        )

    # reads --------------------------------------------------------------------------------

    async def find(self, keyed: Keyed, *, buyer_id: str, order_id: str, total: Money) -> StoredPayment | None:
        if keyed.idempotency_key is not None:
            row = await self._pool.fetchrow(
                _FIND.format(where="client_id = $1 AND idempotency_key = $2"), keyed.client_id, keyed.idempotency_key
            )
        else:
            row = await self._pool.fetchrow(
                _FIND.format(
                    where="client_id = $1 AND buyer_id = $2 AND order_id = $3 AND total_amount_minor = $4 "
                    "AND currency = $5 AND idempotency_key IS NULL"
                ),
                keyed.client_id,
                buyer_id,
                order_id,
                total.amount_minor,
                total.currency.value,
            )
        if row is None:
            return None
        response = None
        if row["response_status"] is not None:
            response = (int(row["response_status"]), bytes(row["response_body"]))
        fingerprint = bytes(row["request_fingerprint"]) if row["request_fingerprint"] is not None else None
        return StoredPayment(_payment(row), fingerprint, response)

    async def get(self, payment_id: int) -> Payment | None:
        row = await self._pool.fetchrow(f"SELECT {_PAYMENT_COLUMNS} FROM payments WHERE payment_id = $1", payment_id)
        return None if row is None else _payment(row)

    async def claim_pending_authorizations(
        self, *, created_before: datetime, lease_ms: int, limit: int
    ) -> list[PendingAuthorization]:
        rows = await self._pool.fetch(
            f"""UPDATE payments SET auth_check_after = now() + make_interval(secs => $2::float8 / 1000)
                WHERE payment_id IN (
                    SELECT payment_id FROM payments
                    WHERE status = 'PENDING_AUTH' AND created_at < $1
                      AND (auth_check_after IS NULL OR auth_check_after < now())
                    ORDER BY created_at
                    LIMIT $3
                    FOR UPDATE SKIP LOCKED)
                RETURNING {_PAYMENT_COLUMNS}""",
            created_before,
            lease_ms,
            limit,
        )
        return [PendingAuthorization(_payment(r), r["trace_id"], r["traceparent"]) for r in rows]


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
SELECT {_ORDER_COLUMNS} FROM payment_orders
WHERE payment_order_id = ANY($1::bigint[]) AND status = 'CAPTURE_REQUESTED' AND retry_count = 0
"""

# Guarded on each order's state before; a finished order rolls its payment up — the same rule as
# Payment.record_order_outcome: the last open order decides CAPTURED (everything captured),
# CAPTURED_PARTIALLY (some) or CAPTURE_FAILED (none). Payment rows are locked in id order, so
# concurrent batches never deadlock on them. The events go with their orders' updates.
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


# -- reads ---------------------------------------------------------------------------------------


async def fetch_payment_view(pool: asyncpg.Pool, payment_id: int) -> PaymentView | None:
    async with pool.acquire() as conn:
        row = await conn.fetchrow(f"SELECT {_PAYMENT_COLUMNS} FROM payments WHERE payment_id = $1", payment_id)
        if row is None:
            return None
        orders = await conn.fetch(
            "SELECT payment_order_id, status, retry_count, updated_at FROM payment_orders WHERE payment_id = $1",
            payment_id,
        )
    states = {o["payment_order_id"]: OrderState(o["status"], o["retry_count"], o["updated_at"]) for o in orders}
    return payment_view(_payment(row), states)

