"""Postgres adapters of the payments context, refund side: the refund unit of work (creation
under the order's row lock, guarded answers, due calls) and the refund reads."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg

from marketplace_pay.infra.keyed_requests import hold_key, kept_response
from marketplace_pay.infra.uow import PgUnitOfWork
from marketplace_pay.payments.application.ports import (
    Keyed,
    KeyedRefund,
    OpenRefund,
    RefundableOrder,
    RefundSettled,
)
from marketplace_pay.payments.domain.payment_order import PaymentOrderStatus
from marketplace_pay.payments.domain.refund import Refund, RefundStatus
from marketplace_pay.shared.money import Currency, Money

_REFUND_COLUMNS = (
    "refund_id, payment_id, payment_order_id, seller_id, amount_minor, currency, reason, status, attempt, "
    "psp_key_attempt, psp_outcome_unknown, next_retry_at, created_at, updated_at"
)


def _refund(row: asyncpg.Record) -> Refund:
    return Refund(
        refund_id=row["refund_id"],
        payment_id=row["payment_id"],
        payment_order_id=row["payment_order_id"],
        seller_id=row["seller_id"],
        amount=Money(row["amount_minor"], Currency(row["currency"])),
        reason=row["reason"],
        status=RefundStatus(row["status"]),
        attempt=row["attempt"],
        psp_key_attempt=row["psp_key_attempt"],
        psp_outcome_unknown=row["psp_outcome_unknown"],
        next_retry_at=row["next_retry_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


# The amount leaves the order's reservation for its refunded total, and the payment's; a payment
# whose orders are all finished says that money went back: REFUNDED when all it captured did,
# else PARTIALLY_REFUNDED. (A payment with orders still open keeps AUTHORIZED; the update that
# finishes its last order takes the refunds into account.)
_SETTLE = """
WITH o AS (
    UPDATE payment_orders
    SET refund_reserved_minor = refund_reserved_minor - $2, refunded_amount_minor = refunded_amount_minor + $2
    WHERE payment_order_id = $1
    RETURNING payment_id, amount_minor, refunded_amount_minor
),
p AS (
    UPDATE payments p
    SET refunded_amount_minor = p.refunded_amount_minor + $2,
        status = CASE WHEN p.orders_open > 0 OR p.status IN ('PENDING_AUTH', 'AUTHORIZED', 'DECLINED') THEN p.status
                      WHEN p.refunded_amount_minor + $2 = p.captured_amount_minor THEN 'REFUNDED'
                      ELSE 'PARTIALLY_REFUNDED' END,
        updated_at = greatest(p.updated_at, $3)
    FROM o WHERE p.payment_id = o.payment_id
)
SELECT amount_minor, refunded_amount_minor FROM o
"""


class PgRefundUnitOfWork(PgUnitOfWork):
    async def lock_key(self, client_id: str, idempotency_key: str) -> bool:
        return await hold_key(self.connection, "refund", client_id, idempotency_key)

    async def by_key(self, client_id: str, idempotency_key: str) -> KeyedRefund | None:
        row = await self.connection.fetchrow(
            f"""SELECT {_REFUND_COLUMNS}, request_fingerprint, response_status, response_body FROM refunds
                WHERE client_id = $1 AND idempotency_key = $2""",
            client_id,
            idempotency_key,
        )
        if row is None:
            return None
        return KeyedRefund(_refund(row), bytes(row["request_fingerprint"]), kept_response(row))

    async def payment_exists(self, payment_id: int) -> bool:
        return bool(
            await self.connection.fetchval("SELECT EXISTS (SELECT 1 FROM payments WHERE payment_id = $1)", payment_id)
        )

    async def lock_order(self, payment_id: int, payment_order_id: int) -> RefundableOrder | None:
        # FOR NO KEY UPDATE: refunds of one order queue here; nothing else waits (a captured
        # order is not written by the capture pipeline any more).
        row = await self.connection.fetchrow(
            """SELECT payment_order_id, payment_id, seller_id, amount_minor, currency, status,
                      refunded_amount_minor, refund_reserved_minor
               FROM payment_orders WHERE payment_order_id = $1 AND payment_id = $2
               FOR NO KEY UPDATE""",
            payment_order_id,
            payment_id,
        )
        if row is None:
            return None
        return RefundableOrder(
            payment_order_id=row["payment_order_id"],
            payment_id=row["payment_id"],
            seller_id=row["seller_id"],
            amount=Money(row["amount_minor"], Currency(row["currency"])),
            status=PaymentOrderStatus(row["status"]),
            refunded_minor=row["refunded_amount_minor"],
            reserved_minor=row["refund_reserved_minor"],
        )

    async def next_id(self) -> int:
        return int(await self.connection.fetchval("SELECT nextval('refund_id_seq')"))

    async def add(
        self,
        refund: Refund,
        *,
        keyed: Keyed,
        response: tuple[int, bytes] | None,
        trace_id: str,
        traceparent: str | None,
    ) -> None:
        await self.connection.execute(
            f"""INSERT INTO refunds ({_REFUND_COLUMNS}, client_id, idempotency_key, request_fingerprint,
                                     response_status, response_body, trace_id, traceparent)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19,
                        $20, $21)""",
            refund.refund_id,
            refund.payment_id,
            refund.payment_order_id,
            refund.seller_id,
            refund.amount.amount_minor,
            refund.amount.currency.value,
            refund.reason,
            refund.status.value,
            refund.attempt,
            refund.psp_key_attempt,
            refund.psp_outcome_unknown,
            refund.next_retry_at,
            refund.created_at,
            refund.updated_at,
            keyed.client_id,
            keyed.idempotency_key,
            keyed.fingerprint,
            response[0] if response else None,
            response[1] if response else None,
            trace_id,
            traceparent,
        )
        await self.connection.execute(
            "UPDATE payment_orders SET refund_reserved_minor = refund_reserved_minor + $2 WHERE payment_order_id = $1",
            refund.payment_order_id,
            refund.amount.amount_minor,
        )

    async def save(self, refund: Refund, *, before: tuple[RefundStatus, int]) -> bool:
        status = await self.connection.execute(
            """UPDATE refunds SET status = $2, attempt = $3, psp_key_attempt = $4, psp_outcome_unknown = $5,
                      next_retry_at = $6, updated_at = greatest(updated_at, $7)
               WHERE refund_id = $1 AND status = $8 AND attempt = $9 AND status = 'PENDING'""",
            refund.refund_id,
            refund.status.value,
            refund.attempt,
            refund.psp_key_attempt,
            refund.psp_outcome_unknown,
            refund.next_retry_at,
            refund.updated_at,
            before[0].value,
            before[1],
        )
        return bool(status == "UPDATE 1")

    async def settle(self, refund: Refund) -> RefundSettled:
        row = await self.connection.fetchrow(
            _SETTLE, refund.payment_order_id, refund.amount.amount_minor, refund.updated_at
        )
        return RefundSettled(row["amount_minor"], row["refunded_amount_minor"])

    async def release(self, refund: Refund) -> None:
        await self.connection.execute(
            "UPDATE payment_orders SET refund_reserved_minor = refund_reserved_minor - $2 WHERE payment_order_id = $1",
            refund.payment_order_id,
            refund.amount.amount_minor,
        )

    async def claim_due(self, *, now: datetime, stuck_before: datetime, limit: int) -> list[OpenRefund]:
        rows = await self.connection.fetch(
            f"""UPDATE refunds SET next_retry_at = NULL, updated_at = greatest(updated_at, $1)
                WHERE refund_id IN (
                    SELECT refund_id FROM refunds
                    WHERE status = 'PENDING'
                      AND (next_retry_at <= $1 OR (next_retry_at IS NULL AND updated_at < $2))
                    ORDER BY refund_id LIMIT $3
                    FOR UPDATE SKIP LOCKED)
                RETURNING {_REFUND_COLUMNS}, trace_id, traceparent""",
            now,
            stuck_before,
            limit,
        )
        return [OpenRefund(_refund(r), r["trace_id"], r["traceparent"]) for r in rows]


class PgRefundReads:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def open_refunds(self, refund_ids: Sequence[int]) -> dict[int, OpenRefund]:
        if not refund_ids:
            return {}
        rows = await self._pool.fetch(
            f"SELECT {_REFUND_COLUMNS}, trace_id, traceparent FROM refunds WHERE refund_id = ANY($1::bigint[])",
            list(refund_ids),
        )
        return {r["refund_id"]: OpenRefund(_refund(r), r["trace_id"], r["traceparent"]) for r in rows}

    async def refund(self, refund_id: int) -> Refund | None:
        row = await self._pool.fetchrow(f"SELECT {_REFUND_COLUMNS} FROM refunds WHERE refund_id = $1", refund_id)
        return None if row is None else _refund(row)

    async def refunds_of(self, payment_id: int) -> list[Refund]:
        rows = await self._pool.fetch(
            f"SELECT {_REFUND_COLUMNS} FROM refunds WHERE payment_id = $1 ORDER BY refund_id", payment_id
        )
        return [_refund(r) for r in rows]
