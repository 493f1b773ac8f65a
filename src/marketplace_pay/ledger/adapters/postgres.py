"""Postgres adapters of the ledger context."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from marketplace_pay.infra.uow import PgUnitOfWork
from marketplace_pay.ledger.application.directory import OnboardSeller, Seller, seller_account_code
from marketplace_pay.ledger.application.recording import JournalRef, OrderCommission, StoredJournal
from marketplace_pay.ledger.application.views import JournalView, PostingLine
from marketplace_pay.ledger.domain.accounts import AccountStatus, parse_account_code
from marketplace_pay.ledger.domain.journal import Direction, JournalEntry, JournalType, Posting
from marketplace_pay.shared.ids import public_payment_id, public_payment_order_id
from marketplace_pay.shared.money import AmountView, Currency

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


# -- journals -------------------------------------------------------------------------------


class PgJournalRepository:
    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def add_all(self, items: Sequence[tuple[JournalEntry, JournalRef]]) -> dict[str, StoredJournal]:
        unique: dict[str, tuple[JournalEntry, JournalRef]] = {}
        for j, ref in items:  # a journal id is written once: the first one given wins, as across calls
            unique.setdefault(j.journal_id, (j, ref))
        if not unique:
            return {}
        firsts = list(unique.values())
        postings = [(j, p) for j, _ in firsts for p in j.postings]
        rows = await self._conn.fetch(
            _ADD_JOURNALS,
            [j.journal_id for j, _ in firsts],
            [j.type.value for j, _ in firsts],
            [j.name for j, _ in firsts],
            [j.currency.value for j, _ in firsts],
            [ref.payment_id for _, ref in firsts],
            [ref.payment_order_id for _, ref in firsts],
            [ref.seller_id for _, ref in firsts],
            [ref.source_event_id for _, ref in firsts],
            [j.journal_id for j, _ in postings],
            [p.account.code for _, p in postings],
            [p.direction.value for _, p in postings],
            [p.amount_minor for _, p in postings],
            [p.signed_amount_minor for _, p in postings],
            [j.currency.value for j, _ in postings],
        )
        by_id = {j.journal_id: j for j, _ in firsts}
        stored = {
            r["journal_id"]: StoredJournal(by_id[r["journal_id"]], r["seq"], r["tx"], r["created_at"]) for r in rows
        }
        earlier = [j.journal_id for j, _ in firsts if j.journal_id not in stored]
        if earlier:
            stored.update(await load_journals(self._conn, earlier))
        return stored

    async def order_commission(self, payment_id: int, payment_order_id: int, *, excluding: str) -> OrderCommission:
        # One order's refunds are recorded one after the other (a transaction-scoped lock): each
        # sees the commission the previous ones gave back.
        await self._conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('commission-refund' || chr(31) || $1::bigint::text, 0))",
            payment_order_id,
        )
        rows = await self._conn.fetch(
            """SELECT j.journal_type, max(p.amount_minor) AS minor
               FROM journal_entries j JOIN postings p USING (journal_id)
               WHERE j.payment_id = $1 AND j.payment_order_id = $2 AND j.journal_id <> $3
                 AND j.journal_type IN ('CAPTURE', 'COMMISSION_FEE', 'COMMISSION_REFUND')
               GROUP BY j.journal_id, j.journal_type""",
            payment_id,
            payment_order_id,
            excluding,
        )
        by_type: dict[str, int] = {}
        for r in rows:
            by_type[r["journal_type"]] = by_type.get(r["journal_type"], 0) + r["minor"]
        return OrderCommission(
            captured="CAPTURE" in by_type,
            fee_minor=by_type.get("COMMISSION_FEE", 0),
            fee_refunded_minor=by_type.get("COMMISSION_REFUND", 0),
        )


# The journals not recorded yet and their postings, in one statement (a journal id already there
# is skipped, with its postings). Each posting carries its journal's seq and, like the journal,
# the writing transaction's id.
_ADD_JOURNALS = """
WITH j AS (
    INSERT INTO journal_entries (journal_id, journal_type, name, currency, payment_id, payment_order_id,
                                 seller_id, source_event_id)
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[],
                         $7::text[], $8::text[])
    ON CONFLICT (journal_id) DO NOTHING
    RETURNING journal_id, seq, tx, created_at
),
p AS (
    INSERT INTO postings (journal_id, seq, account_code, direction, amount_minor, signed_amount_minor, currency)
    SELECT x.journal_id, j.seq, x.account_code, x.direction, x.amount_minor, x.signed_amount_minor, x.currency
    FROM unnest($9::text[], $10::text[], $11::text[], $12::bigint[], $13::bigint[], $14::text[])
         WITH ORDINALITY AS x(journal_id, account_code, direction, amount_minor, signed_amount_minor, currency, n)
    JOIN j USING (journal_id)
    ORDER BY x.n
)
SELECT journal_id, seq, tx, created_at FROM j
"""


async def load_journals(
    conn: asyncpg.Connection | asyncpg.Pool, journal_ids: Sequence[str]
) -> dict[str, StoredJournal]:
    """Journals as recorded, with their postings in recording order."""
    rows = await conn.fetch(
        """SELECT j.journal_id, j.journal_type, j.name, j.currency, j.seq, j.tx, j.created_at,
                  p.account_code, p.direction, p.amount_minor
           FROM journal_entries j JOIN postings p USING (journal_id)
           WHERE j.journal_id = ANY($1::text[])
           ORDER BY j.seq, p.posting_id""",
        list(journal_ids),
    )
    grouped: dict[str, list[asyncpg.Record]] = {}
    for r in rows:
        grouped.setdefault(r["journal_id"], []).append(r)
    return {journal_id: _stored(rs) for journal_id, rs in grouped.items()}


def _stored(rows: list[asyncpg.Record]) -> StoredJournal:
    head = rows[0]
    entry = JournalEntry(
        head["journal_id"],
        JournalType(head["journal_type"]),
        head["name"],
        Currency(head["currency"]),
        tuple(
            Posting(parse_account_code(r["account_code"]), Direction(r["direction"]), r["amount_minor"]) for r in rows
        ),
    )
    return StoredJournal(entry, head["seq"], head["tx"], head["created_at"])


class PgLedgerUnitOfWork(PgUnitOfWork):
    journals: PgJournalRepository

    def _bind(self, connection: asyncpg.Connection) -> None:
        self.journals = PgJournalRepository(connection)


# -- reads ----------------------------------------------------------------------------------


class PgLedgerReads:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def account_exists(self, account_code: str) -> bool:
        return bool(await self._pool.fetchval("SELECT true FROM accounts WHERE account_code = $1", account_code))

    async def postings(
        self, account_code: str, *, limit: int, before_posting_id: int | None
    ) -> tuple[list[PostingLine], bool]:
        rows = await self._pool.fetch(
            """SELECT p.posting_id, p.journal_id, j.journal_type, p.account_code, p.direction, p.amount_minor,
                      p.signed_amount_minor, p.currency, p.created_at, j.payment_id, j.payment_order_id
               FROM postings p JOIN journal_entries j USING (journal_id)
               WHERE p.account_code = $1 AND ($2::bigint IS NULL OR p.posting_id < $2)
               ORDER BY p.posting_id DESC
               LIMIT $3""",
            account_code,
            before_posting_id,
            limit + 1,
        )
        return [_posting_line(r) for r in rows[:limit]], len(rows) > limit

    async def payment_journals(self, payment_id: int) -> list[JournalView]:
        rows = await self._pool.fetch(
            """SELECT p.posting_id, p.journal_id, j.journal_type, j.name, j.seq, p.account_code, p.direction,
                      p.amount_minor, p.signed_amount_minor, p.currency, p.created_at, j.payment_id, j.payment_order_id
               FROM journal_entries j JOIN postings p USING (journal_id)
               WHERE j.payment_id = $1
               ORDER BY j.seq, p.posting_id""",
            payment_id,
        )
        views: dict[str, JournalView] = {}
        for r in rows:
            view = views.get(r["journal_id"])
            if view is None:
                view = views[r["journal_id"]] = JournalView(
                    journal_entry_id=r["journal_id"],
                    journal_type=r["journal_type"],
                    name=r["name"],
                    ledger_seq=r["seq"],
                    created_at=r["created_at"],
                    payment_order_id=public_payment_order_id(r["payment_order_id"]) if r["payment_order_id"] else None,
                    postings=[],
                )
            view.postings.append(_posting_line(r))
        return list(views.values())


def _posting_line(r: asyncpg.Record) -> PostingLine:
    return PostingLine(
        posting_id=str(r["posting_id"]),
        journal_entry_id=r["journal_id"],
        journal_type=r["journal_type"],
        account_code=r["account_code"],
        direction=r["direction"],
        amount=AmountView(r["amount_minor"], r["currency"]),
        signed_amount=AmountView(r["signed_amount_minor"], r["currency"]),
        created_at=r["created_at"],
        payment_id=public_payment_id(r["payment_id"]) if r["payment_id"] is not None else None,
        payment_order_id=public_payment_order_id(r["payment_order_id"]) if r["payment_order_id"] is not None else None,
    )
