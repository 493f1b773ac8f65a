"""Postgres adapters of the payments context: repositories, the unit of work and reads."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import datetime

import asyncpg
import msgspec

from marketplace_pay.infra.uow import PgUnitOfWork
from marketplace_pay.payments.application.ports import (
    Acquired,
    IdempotencyBegin,
    KeyInProgress,
    KeyMismatch,
    PendingAuthorization,
    Replay,
    StaleOrder,
)
from marketplace_pay.payments.application.views import OrderState, PaymentView, payment_view
from marketplace_pay.payments.domain.payment import Payment, PaymentLine, PaymentStatus
from marketplace_pay.payments.domain.payment_order import PaymentOrder, PaymentOrderStatus
from marketplace_pay.shared.money import Currency, Money


class _Line(msgspec.Struct, rename="camel"):
    payment_order_id: int
    seller_id: str
    amount_minor: int


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


class PgPaymentRepository:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def add(
        self, payment: Payment, *, idempotency_key: str | None, trace_id: str, traceparent: str | None
    ) -> Payment | None:
        inserted = await self._conn.fetchval(
            f"""INSERT INTO payments ({_PAYMENT_COLUMNS}, idempotency_key)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
                ON CONFLICT DO NOTHING
                RETURNING payment_id""",
            payment.payment_id,
            payment.buyer_id,
            payment.order_id,
            payment.currency.value,
            payment.total.amount_minor,
            payment.captured.amount_minor,
            payment.status.value,
            [_Line(line.payment_order_id, line.seller_id, line.amount.amount_minor) for line in payment.lines],
            payment.created_at,
            payment.updated_at,
            trace_id,
            traceparent,
            payment.orders_open,
            idempotency_key,
        )
        if inserted is not None:
            return None
        # ON CONFLICT waited for the conflicting transaction, so the row is committed and visible.
        if idempotency_key is not None:
            row = await self._conn.fetchrow(
                f"SELECT {_PAYMENT_COLUMNS} FROM payments WHERE idempotency_key = $1", idempotency_key
            )
        else:
            row = await self._conn.fetchrow(
                f"""SELECT {_PAYMENT_COLUMNS} FROM payments
                    WHERE buyer_id = $1 AND order_id = $2 AND total_amount_minor = $3 AND currency = $4
                      AND idempotency_key IS NULL""",
                payment.buyer_id,
                payment.order_id,
                payment.total.amount_minor,
                payment.currency.value,
            )
        if row is None:  # the conflict was on payment_id itself: a snowflake collision, a bug
            raise RuntimeError(f"payment id {payment.payment_id} already used")
        return _payment(row)

    async def get(self, payment_id: int, *, for_update: bool = False) -> Payment | None:
        lock = " FOR UPDATE" if for_update else ""
        row = await self._conn.fetchrow(f"SELECT {_PAYMENT_COLUMNS} FROM payments WHERE payment_id = $1{lock}", payment_id)
        return None if row is None else _payment(row)

    async def get_many(self, payment_ids: Sequence[int], *, for_update: bool = False) -> dict[int, Payment]:
        lock = " ORDER BY payment_id FOR UPDATE" if for_update else ""
        rows = await self._conn.fetch(
            f"SELECT {_PAYMENT_COLUMNS} FROM payments WHERE payment_id = ANY($1::bigint[]){lock}", list(payment_ids)
        )
        return {r["payment_id"]: _payment(r) for r in rows}

    async def save_roll_up(self, payment: Payment) -> None:
        await self._conn.execute(
            """UPDATE payments SET status = $2, captured_amount_minor = $3, orders_open = $4, updated_at = $5
               WHERE payment_id = $1 AND status = 'AUTHORIZED'""",
            payment.payment_id,
            payment.status.value,
            payment.captured.amount_minor,
            payment.orders_open,
            payment.updated_at,
        )

    async def save_authorization(self, payment: Payment) -> bool:
        status = await self._conn.execute(
            "UPDATE payments SET status = $2, updated_at = $3, auth_check_after = NULL "
            "WHERE payment_id = $1 AND status = 'PENDING_AUTH'",
            payment.payment_id,
            payment.status.value,
            payment.updated_at,
        )
        return status == "UPDATE 1"

    async def claim_pending_authorizations(
        self, *, created_before: datetime, lease_ms: int, limit: int
    ) -> list[PendingAuthorization]:
        rows = await self._conn.fetch(
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


class PgIdempotencyStore:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def begin(self, *, scope: str, key: str, fingerprint: bytes, lease_ms: int) -> IdempotencyBegin:
        token = os.urandom(12).hex()
        lease = lease_ms / 1000
        inserted = await self._conn.fetchval(
            """INSERT INTO idempotency_keys (scope, key, fingerprint, state, lease_token, lease_until)
               VALUES ($1, $2, $3, 'IN_PROGRESS', $4, now() + make_interval(secs => $5))
               ON CONFLICT DO NOTHING
               RETURNING lease_token""",
            scope,
            key,
            fingerprint,
            token,
            lease,
        )
        if inserted is not None:
            return Acquired(token)
        row = await self._conn.fetchrow(
            """SELECT fingerprint, state, response_status, response_body, lease_until < now() AS expired
               FROM idempotency_keys WHERE scope = $1 AND key = $2 FOR UPDATE""",
            scope,
            key,
        )
        if row is None:  # released between our insert and select: take it
            return await self.begin(scope=scope, key=key, fingerprint=fingerprint, lease_ms=lease_ms)
        if bytes(row["fingerprint"]) != fingerprint:
            return KeyMismatch()
        if row["state"] == "COMPLETED":
            return Replay(status=row["response_status"], body=bytes(row["response_body"]))
        if not row["expired"]:
            return KeyInProgress()
        await self._conn.execute(
            """UPDATE idempotency_keys SET lease_token = $3, lease_until = now() + make_interval(secs => $4)
               WHERE scope = $1 AND key = $2""",
            scope,
            key,
            token,
            lease,
        )
        return Acquired(token)

    async def complete(self, *, scope: str, key: str, token: str, status: int, body: bytes) -> None:
        await self._conn.execute(
            """UPDATE idempotency_keys
               SET state = 'COMPLETED', response_status = $4, response_body = $5, completed_at = now(),
                   lease_token = NULL, lease_until = NULL
               WHERE scope = $1 AND key = $2 AND lease_token = $3 AND state = 'IN_PROGRESS'""",
            scope,
            key,
            token,
            status,
            body,
        )

    async def release(self, *, scope: str, key: str, token: str) -> None:
        await self._conn.execute(
            "DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2 AND lease_token = $3 AND state = 'IN_PROGRESS'",
            scope,
            key,
            token,
        )


_ORDER_COLUMNS = (
    "payment_order_id, payment_id, seller_id, amount_minor, currency, status, retry_count, next_retry_at, "
    "created_at, updated_at"
)


def _order(row: asyncpg.Record) -> PaymentOrder:
    return PaymentOrder(
        payment_order_id=row["payment_order_id"],
        payment_id=row["payment_id"],
        seller_id=row["seller_id"],
        amount=Money(row["amount_minor"], Currency(row["currency"])),
        status=PaymentOrderStatus(row["status"]),
        retry_count=row["retry_count"],
        next_retry_at=row["next_retry_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


class PgPaymentOrderRepository:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def add_all(self, orders: Sequence[tuple[PaymentOrder, str, str | None]]) -> set[int]:
        if not orders:
            return set()
        rows = await self._conn.fetch(
            f"""INSERT INTO payment_orders ({_ORDER_COLUMNS}, trace_id, traceparent)
                SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::bigint[], $5::text[], $6::text[],
                                     $7::int[], $8::timestamptz[], $9::timestamptz[], $10::timestamptz[],
                                     $11::text[], $12::text[])
                ON CONFLICT (payment_order_id) DO NOTHING
                RETURNING payment_order_id""",
            [o.payment_order_id for o, _, _ in orders],
            [o.payment_id for o, _, _ in orders],
            [o.seller_id for o, _, _ in orders],
            [o.amount.amount_minor for o, _, _ in orders],
            [o.amount.currency.value for o, _, _ in orders],
            [o.status.value for o, _, _ in orders],
            [o.retry_count for o, _, _ in orders],
            [o.next_retry_at for o, _, _ in orders],
            [o.created_at for o, _, _ in orders],
            [o.updated_at for o, _, _ in orders],
            [trace for _, trace, _ in orders],
            [traceparent for _, _, traceparent in orders],
        )
        return {r["payment_order_id"] for r in rows}

    async def get_many(self, payment_order_ids: Sequence[int], *, for_update: bool = False) -> dict[int, PaymentOrder]:
        if not payment_order_ids:
            return {}
        lock = " ORDER BY payment_order_id FOR UPDATE" if for_update else ""
        rows = await self._conn.fetch(
            f"SELECT {_ORDER_COLUMNS} FROM payment_orders WHERE payment_order_id = ANY($1::bigint[]){lock}",
            list(set(payment_order_ids)),
        )
        return {r["payment_order_id"]: _order(r) for r in rows}

    async def save_all(self, changes: Sequence[tuple[PaymentOrder, tuple[PaymentOrderStatus, int]]]) -> None:
        if not changes:
            return
        status = await self._conn.execute(
            """UPDATE payment_orders o
               SET status = c.status, retry_count = c.retry_count, next_retry_at = c.next_retry_at,
                   updated_at = greatest(o.updated_at, c.updated_at)
               FROM unnest($1::bigint[], $2::text[], $3::int[], $4::timestamptz[], $5::timestamptz[],
                           $6::text[], $7::int[])
                    AS c(id, status, retry_count, next_retry_at, updated_at, old_status, old_retry_count)
               WHERE o.payment_order_id = c.id
                 AND o.status = c.old_status AND o.retry_count = c.old_retry_count
                 AND o.status NOT IN ('CAPTURED', 'CAPTURE_FAILED')""",
            [o.payment_order_id for o, _ in changes],
            [o.status.value for o, _ in changes],
            [o.retry_count for o, _ in changes],
            [o.next_retry_at for o, _ in changes],
            [o.updated_at for o, _ in changes],
            [before[0].value for _, before in changes],
            [before[1] for _, before in changes],
        )
        if int(status.split()[-1]) != len(changes):
            raise StaleOrder(f"{len(changes) - int(status.split()[-1])} payment order(s) changed concurrently")

    async def traces(self, payment_order_ids: Sequence[int]) -> dict[int, tuple[str, str | None]]:
        rows = await self._conn.fetch(
            "SELECT payment_order_id, trace_id, traceparent FROM payment_orders WHERE payment_order_id = ANY($1::bigint[])",
            list(payment_order_ids),
        )
        return {r["payment_order_id"]: (r["trace_id"], r["traceparent"]) for r in rows}

    async def mark_retries_dispatched(self, payment_order_ids: Sequence[int]) -> None:
        if payment_order_ids:
            await self._conn.execute(
                "UPDATE payment_orders SET next_retry_at = NULL "
                "WHERE payment_order_id = ANY($1::bigint[]) AND status = 'PENDING_CAPTURE'",
                list(payment_order_ids),
            )

    async def overdue_retries(self, *, before: datetime, limit: int) -> list[tuple[int, int, int]]:
        rows = await self._conn.fetch(
            """SELECT payment_order_id, retry_count, next_retry_at FROM payment_orders
               WHERE status = 'PENDING_CAPTURE' AND next_retry_at < $1
               ORDER BY next_retry_at LIMIT $2""",
            before,
            limit,
        )
        return [(r["payment_order_id"], r["retry_count"], int(r["next_retry_at"].timestamp() * 1000)) for r in rows]


class PgPaymentsUnitOfWork(PgUnitOfWork):
    payments: PgPaymentRepository
    idempotency: PgIdempotencyStore
    orders: PgPaymentOrderRepository

    def _bind(self, connection: asyncpg.Connection) -> None:
        self.payments = PgPaymentRepository(connection)
        self.idempotency = PgIdempotencyStore(connection)
        self.orders = PgPaymentOrderRepository(connection)


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


async def prune_idempotency_keys(pool: asyncpg.Pool, *, ttl_hours: int) -> int:
    status = await pool.execute(
        "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(hours => $1)", ttl_hours
    )
    return int(status.split()[-1])
