"""Postgres adapters of the ledger's treasury operations: payouts, settlements, their reads."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg

from marketplace_pay.infra.keyed_requests import hold_key, kept_response
from marketplace_pay.ledger.adapters.postgres import PgLedgerUnitOfWork
from marketplace_pay.ledger.application.ports import (
    Keyed,
    KeyedPayout,
    NewSettlement,
    OpenPayout,
    PayableSeller,
    Unsettled,
)
from marketplace_pay.ledger.application.views import PayoutView, SettlementView
from marketplace_pay.ledger.domain.accounts import AccountStatus
from marketplace_pay.ledger.domain.payout import Payout, PayoutStatus
from marketplace_pay.shared.ids import public_payout_id, public_settlement_id
from marketplace_pay.shared.money import AmountView, Currency, Money

_PAYOUT_COLUMNS = (
    "payout_id, seller_id, amount_minor, currency, status, attempt, bank_key_attempt, bank_outcome_unknown, "
    "next_retry_at, created_at, updated_at"
)

# Transaction-scoped advisory locks: the key of a request being created (bigint form, its own
# space apart from the two-key locks of infra/locks.py), and settlement runs.
_SETTLEMENT_LOCK = 0x4D50_5354  # "MPST"

# The account's exact balance: the folded snapshot plus every committed posting at or above the
# horizon, in one statement (one snapshot: a fold committing meanwhile is seen whole or not at all).
# The same rule as the balances' exact read, on this transaction's connection: the seller's row
# lock is held, and a second pool connection could starve the pool under concurrent payouts.
_AVAILABLE = """
SELECT coalesce((SELECT balance_minor FROM account_balances WHERE account_code = $1), 0)
     + coalesce((SELECT sum(p.signed_amount_minor) FROM postings p, balance_horizon h
                 WHERE p.tx >= h.folded_tx AND p.account_code = $1), 0)
"""


def _payout(row: asyncpg.Record) -> Payout:
    return Payout(
        payout_id=row["payout_id"],
        seller_id=row["seller_id"],
        amount=Money(row["amount_minor"], Currency(row["currency"])),
        status=PayoutStatus(row["status"]),
        attempt=row["attempt"],
        bank_key_attempt=row["bank_key_attempt"],
        bank_outcome_unknown=row["bank_outcome_unknown"],
        next_retry_at=row["next_retry_at"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


class PgPayoutRepository:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def lock_key(self, client_id: str, idempotency_key: str) -> bool:
        return await hold_key(self._conn, "payout", client_id, idempotency_key)

    async def by_key(self, client_id: str, idempotency_key: str) -> KeyedPayout | None:
        row = await self._conn.fetchrow(
            f"""SELECT {_PAYOUT_COLUMNS}, request_fingerprint, response_status, response_body FROM payouts
                WHERE client_id = $1 AND idempotency_key = $2""",
            client_id,
            idempotency_key,
        )
        if row is None:
            return None
        return KeyedPayout(_payout(row), bytes(row["request_fingerprint"]), kept_response(row))

    async def lock_seller(self, seller_id: str) -> PayableSeller | None:
        # FOR NO KEY UPDATE: payouts of one seller queue here, while the fold's insert of a
        # first snapshot row (a KEY SHARE through its foreign key) is not held up.
        row = await self._conn.fetchrow(
            """SELECT entity_id, account_code, currency, status FROM accounts
               WHERE account_type = 'MERCHANT_PAYABLE' AND entity_id = $1
               FOR NO KEY UPDATE""",
            seller_id,
        )
        if row is None:
            return None
        return PayableSeller(
            row["entity_id"], row["account_code"], Currency(row["currency"]), AccountStatus(row["status"])
        )

    async def available_minor(self, account_code: str) -> int:
        return int(await self._conn.fetchval(_AVAILABLE, account_code))

    async def next_id(self) -> int:
        return int(await self._conn.fetchval("SELECT nextval('payout_id_seq')"))

    async def add(
        self,
        payout: Payout,
        *,
        account_code: str,
        keyed: Keyed,
        response: tuple[int, bytes] | None,
        trace_id: str,
        traceparent: str | None,
    ) -> None:
        await self._conn.execute(
            f"""INSERT INTO payouts ({_PAYOUT_COLUMNS}, account_code, client_id, idempotency_key,
                                     request_fingerprint, response_status, response_body, trace_id, traceparent)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)""",
            payout.payout_id,
            payout.seller_id,
            payout.amount.amount_minor,
            payout.amount.currency.value,
            payout.status.value,
            payout.attempt,
            payout.bank_key_attempt,
            payout.bank_outcome_unknown,
            payout.next_retry_at,
            payout.created_at,
            payout.updated_at,
            account_code,
            keyed.client_id,
            keyed.idempotency_key,
            keyed.fingerprint,
            response[0] if response else None,
            response[1] if response else None,
            trace_id,
            traceparent,
        )

    async def save(self, payout: Payout, *, before: tuple[PayoutStatus, int]) -> bool:
        status = await self._conn.execute(
            """UPDATE payouts SET status = $2, attempt = $3, bank_key_attempt = $4, bank_outcome_unknown = $5,
                      next_retry_at = $6, updated_at = greatest(updated_at, $7)
               WHERE payout_id = $1 AND status = $8 AND attempt = $9 AND status = 'PENDING'""",
            payout.payout_id,
            payout.status.value,
            payout.attempt,
            payout.bank_key_attempt,
            payout.bank_outcome_unknown,
            payout.next_retry_at,
            payout.updated_at,
            before[0].value,
            before[1],
        )
        return bool(status == "UPDATE 1")

    async def claim_due(self, *, now: datetime, stuck_before: datetime, limit: int) -> list[OpenPayout]:
        rows = await self._conn.fetch(
            f"""UPDATE payouts SET next_retry_at = NULL, updated_at = greatest(updated_at, $1)
                WHERE payout_id IN (
                    SELECT payout_id FROM payouts
                    WHERE status = 'PENDING'
                      AND (next_retry_at <= $1 OR (next_retry_at IS NULL AND updated_at < $2))
                    ORDER BY payout_id LIMIT $3
                    FOR UPDATE SKIP LOCKED)
                RETURNING {_PAYOUT_COLUMNS}, trace_id, traceparent""",
            now,
            stuck_before,
            limit,
        )
        return [OpenPayout(_payout(r), r["trace_id"], r["traceparent"]) for r in rows]


class PgSettlementRepository:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def lock(self) -> None:
        await self._conn.execute("SELECT pg_advisory_xact_lock($1::bigint)", _SETTLEMENT_LOCK)

    async def unsettled(self) -> list[Unsettled]:
        rows = await self._conn.fetch(
            """SELECT p.journal_id, p.currency, p.signed_amount_minor
               FROM postings p JOIN journal_entries j ON j.journal_id = p.journal_id
               WHERE p.account_code IN ('PSP_RECEIVABLES.GLOBAL.EUR', 'PSP_RECEIVABLES.GLOBAL.USD',
                                        'PSP_RECEIVABLES.GLOBAL.GBP')
                 AND j.journal_type IN ('CAPTURE', 'REFUND')
                 AND NOT EXISTS (SELECT 1 FROM settled_journals s WHERE s.journal_id = p.journal_id)"""
        )
        return [Unsettled(r["journal_id"], Currency(r["currency"].strip()), r["signed_amount_minor"]) for r in rows]

    async def next_id(self) -> int:
        return int(await self._conn.fetchval("SELECT nextval('settlement_id_seq')"))

    async def add(self, settlement: NewSettlement) -> None:
        s = settlement
        await self._conn.execute(
            """INSERT INTO settlements (settlement_id, currency, gross_minor, fee_minor, net_minor, fee_bps,
                                        journals_covered)
               VALUES ($1, $2, $3, $4, $5, $6, $7)""",
            s.settlement_id,
            s.currency.value,
            s.gross_minor,
            s.fee_minor,
            s.net_minor,
            s.fee_bps,
            len(s.journal_ids),
        )
        await self._conn.execute(
            "INSERT INTO settled_journals (journal_id, settlement_id) SELECT unnest($1::text[]), $2",
            s.journal_ids,
            s.settlement_id,
        )


class PgTreasuryUnitOfWork(PgLedgerUnitOfWork):
    payouts: PgPayoutRepository
    settlements: PgSettlementRepository

    def _bind(self, connection: asyncpg.Connection) -> None:
        super()._bind(connection)
        self.payouts = PgPayoutRepository(connection)
        self.settlements = PgSettlementRepository(connection)


# -- reads ---------------------------------------------------------------------------------------


def _payout_view(r: asyncpg.Record) -> PayoutView:
    return PayoutView(
        payout_id=public_payout_id(r["payout_id"]),
        seller_id=r["seller_id"],
        amount=AmountView(r["amount_minor"], r["currency"]),
        status=r["status"],
        created_at=r["created_at"],
        updated_at=r["updated_at"],
    )


def _settlement_view(r: asyncpg.Record) -> SettlementView:
    c = r["currency"]
    return SettlementView(
        settlement_id=public_settlement_id(r["settlement_id"]),
        journal_entry_id=f"SETTLEMENT:{r['settlement_id']}",
        currency=c,
        gross=AmountView(r["gross_minor"], c),
        fee=AmountView(r["fee_minor"], c),
        net=AmountView(r["net_minor"], c),
        fee_bps=r["fee_bps"],
        journals_covered=r["journals_covered"],
        created_at=r["created_at"],
    )


class PgTreasuryReads:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def payouts(self, payout_ids: Sequence[int]) -> dict[int, OpenPayout]:
        if not payout_ids:
            return {}
        rows = await self._pool.fetch(
            f"SELECT {_PAYOUT_COLUMNS}, trace_id, traceparent FROM payouts WHERE payout_id = ANY($1::bigint[])",
            list(payout_ids),
        )
        return {r["payout_id"]: OpenPayout(_payout(r), r["trace_id"], r["traceparent"]) for r in rows}

    async def payout(self, payout_id: int) -> PayoutView | None:
        row = await self._pool.fetchrow(f"SELECT {_PAYOUT_COLUMNS} FROM payouts WHERE payout_id = $1", payout_id)
        return None if row is None else _payout_view(row)

    async def payouts_of(
        self, seller_id: str, *, limit: int, before_payout_id: int | None
    ) -> tuple[list[PayoutView], bool]:
        rows = await self._pool.fetch(
            f"""SELECT {_PAYOUT_COLUMNS} FROM payouts
                WHERE seller_id = $1 AND ($2::bigint IS NULL OR payout_id < $2)
                ORDER BY payout_id DESC LIMIT $3""",
            seller_id,
            before_payout_id,
            limit + 1,
        )
        return [_payout_view(r) for r in rows[:limit]], len(rows) > limit

    async def settlements(self, *, limit: int, before_settlement_id: int | None) -> tuple[list[SettlementView], bool]:
        rows = await self._pool.fetch(
            """SELECT * FROM settlements WHERE ($1::bigint IS NULL OR settlement_id < $1)
               ORDER BY settlement_id DESC LIMIT $2""",
            before_settlement_id,
            limit + 1,
        )
        return [_settlement_view(r) for r in rows[:limit]], len(rows) > limit

    async def payable_sellers(self, minimum_minor: int) -> list[str]:
        rows = await self._pool.fetch(
            """WITH h AS (SELECT folded_tx FROM balance_horizon),
                    recent AS (SELECT p.account_code, sum(p.signed_amount_minor) AS minor
                               FROM postings p, h WHERE p.tx >= h.folded_tx GROUP BY p.account_code)
               SELECT a.entity_id FROM accounts a
               LEFT JOIN account_balances b ON b.account_code = a.account_code
               LEFT JOIN recent r ON r.account_code = a.account_code
               WHERE a.account_type = 'MERCHANT_PAYABLE' AND a.status = 'ACTIVE'
                 AND coalesce(b.balance_minor, 0) + coalesce(r.minor, 0) >= $1
               ORDER BY a.entity_id""",
            minimum_minor,
        )
        return [r["entity_id"] for r in rows]
