"""Postgres adapters of the ledger context."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from marketplace_pay.ledger.application.directory import OnboardSeller, Seller, seller_account_code
from marketplace_pay.ledger.domain.accounts import AccountStatus
from marketplace_pay.shared.money import Currency

_SELLER_COLUMNS = "entity_id, account_code, currency, status, commission_bps, created_at, updated_at"


def _seller(row: asyncpg.Record) -> Seller:
    return Seller(
        seller_id=row["entity_id"],
        account_code=row["account_code"],
        currency=Currency(row["currency"]),
        status=AccountStatus(row["status"]),
        commission_bps=row["commission_bps"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


class PgSellerStore:
    def __init__(self, pool: asyncpg.Pool | asyncpg.Connection) -> None:
        self._pool = pool

    async def add(self, cmd: OnboardSeller) -> Seller | None:
        row = await self._pool.fetchrow(
            f"""INSERT INTO accounts (account_code, account_type, entity_id, currency, commission_bps)
                VALUES ($1, 'MERCHANT_PAYABLE', $2, $3, $4)
                ON CONFLICT DO NOTHING
                RETURNING {_SELLER_COLUMNS}""",
            seller_account_code(cmd.seller_id, cmd.currency),
            cmd.seller_id,
            cmd.currency.value,
            cmd.commission_bps,
        )
        return None if row is None else _seller(row)

    async def get(self, seller_id: str) -> Seller | None:
        row = await self._pool.fetchrow(
            f"SELECT {_SELLER_COLUMNS} FROM accounts WHERE account_type = 'MERCHANT_PAYABLE' AND entity_id = $1",
            seller_id,
        )
        return None if row is None else _seller(row)

    async def set_status(self, seller_id: str, status: AccountStatus) -> Seller | None:
        row = await self._pool.fetchrow(
            f"""UPDATE accounts SET status = $2, updated_at = now()
                WHERE account_type = 'MERCHANT_PAYABLE' AND entity_id = $1
                RETURNING {_SELLER_COLUMNS}""",
            seller_id,
            status.value,
        )
        return None if row is None else _seller(row)

    async def many(self, seller_ids: Sequence[str]) -> list[Seller]:
        rows = await self._pool.fetch(
            f"""SELECT {_SELLER_COLUMNS} FROM accounts
                WHERE account_type = 'MERCHANT_PAYABLE' AND entity_id = ANY($1::text[])""",
            list(seller_ids),
        )
        return [_seller(r) for r in rows]

    async def list(self) -> list[Seller]:
        rows = await self._pool.fetch(
            f"SELECT {_SELLER_COLUMNS} FROM accounts WHERE account_type = 'MERCHANT_PAYABLE' ORDER BY entity_id"
        )
        return [_seller(r) for r in rows]
