"""Postgres adapters of the payments context: repositories, the unit of work and reads."""

from __future__ import annotations

import os
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
)
from marketplace_pay.payments.application.views import PaymentView, payment_view
from marketplace_pay.payments.domain.payment import Payment, PaymentLine, PaymentStatus
from marketplace_pay.shared.money import Currency, Money


class _Line(msgspec.Struct, rename="camel"):
    payment_order_id: int
    seller_id: str
    amount_minor: int


_PAYMENT_COLUMNS = (
    "payment_id, buyer_id, order_id, currency, total_amount_minor, captured_amount_minor, status, lines, "
    "created_at, updated_at, trace_id, traceparent"
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
    )


class PgPaymentRepository:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def add(
        self, payment: Payment, *, idempotency_key: str | None, trace_id: str, traceparent: str | None
    ) -> Payment | None:
        inserted = await self._conn.fetchval(
            f"""INSERT INTO payments ({_PAYMENT_COLUMNS}, idempotency_key)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
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


class PgPaymentsUnitOfWork(PgUnitOfWork):
    payments: PgPaymentRepository
    idempotency: PgIdempotencyStore

    def _bind(self, connection: asyncpg.Connection) -> None:
        self.payments = PgPaymentRepository(connection)
        self.idempotency = PgIdempotencyStore(connection)


# -- reads ---------------------------------------------------------------------------------------


async def fetch_payment_view(pool: asyncpg.Pool, payment_id: int) -> PaymentView | None:
    row = await pool.fetchrow(f"SELECT {_PAYMENT_COLUMNS} FROM payments WHERE payment_id = $1", payment_id)
    return None if row is None else payment_view(_payment(row))


async def prune_idempotency_keys(pool: asyncpg.Pool, *, ttl_hours: int) -> int:
    status = await pool.execute(
        "DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(hours => $1)", ttl_hours
    )
    return int(status.split()[-1])
