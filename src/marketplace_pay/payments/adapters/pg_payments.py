"""Postgres adapters of the payments context, pay-in side: the payment store (concurrent
requests group-committed into one statement) and the payment reads."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from marketplace_pay.infra import outbox
from marketplace_pay.infra.batching import Batcher
from marketplace_pay.infra.uow import OnCommit
from marketplace_pay.payments.application.ports import (
    Keyed,
    PendingAuthorization,
    StoredPayment,
)
from marketplace_pay.payments.application.views import OrderState, PaymentView, payment_view
from marketplace_pay.payments.domain.payment import Payment, PaymentLine, PaymentStatus
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
        lines=[
            PaymentLine(line.payment_order_id, line.seller_id, Money(line.amount_minor, currency)) for line in lines
        ],
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
            _LINES.encode(
                [_Line(line.payment_order_id, line.seller_id, line.amount.amount_minor) for line in payment.lines]
            ).decode(),
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


# -- reads ---------------------------------------------------------------------------------------


class PgPaymentViews:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def view(self, payment_id: int) -> PaymentView | None:
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                f"SELECT {_PAYMENT_COLUMNS}, refunded_amount_minor FROM payments WHERE payment_id = $1", payment_id
            )
            if row is None:
                return None
            orders = await conn.fetch(
                """SELECT payment_order_id, status, retry_count, updated_at, refunded_amount_minor
                   FROM payment_orders WHERE payment_id = $1""",
                payment_id,
            )
        states = {
            o["payment_order_id"]: OrderState(
                o["status"], o["retry_count"], o["updated_at"], o["refunded_amount_minor"]
            )
            for o in orders
        }
        return payment_view(_payment(row), states, refunded_minor=row["refunded_amount_minor"])
