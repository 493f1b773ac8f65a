"""Postgres side of balances: the fold up to the transaction-id horizon, snapshots, checks."""

from __future__ import annotations

import logging
from datetime import datetime

import asyncpg

from marketplace_pay.balances.application.ports import Folded, Snapshot, TrialBalance, Unfolded
from marketplace_pay.balances.domain.balance import Check, Drift, Entry
from marketplace_pay.infra.locks import NS_JOB, job_lock_key, pooled_session_lock
from marketplace_pay.shared.faults import faults

log = logging.getLogger(__name__)

FOLD_JOB = job_lock_key("balance-fold")


# Every posting written by a transaction below the horizon has committed (or never will): the
# horizon is the oldest transaction still running when the statement starts.
_FOLD = """
WITH h AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS horizon),
folded AS (
    INSERT INTO account_balances AS b (account_code, balance_minor, updated_at)
    SELECT account_code, sum(signed_amount_minor), now()
    FROM postings WHERE tx >= $1::xid8 AND tx < (SELECT horizon FROM h)
    GROUP BY account_code
    ON CONFLICT (account_code) DO UPDATE
    SET balance_minor = b.balance_minor + EXCLUDED.balance_minor, updated_at = now()
    RETURNING account_code
)
SELECT (SELECT horizon FROM h) AS horizon, coalesce(array_agg(account_code), '{}') AS accounts FROM folded
"""


# A check may read the whole ledger: longer than the pool's 30-s command timeout on a big one.
CHECK_TIMEOUT_S = 600


class PgBalanceStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def _check(self, query: str, *args: object) -> list[asyncpg.Record]:
        """A reconciliation query, on one backend: it runs beside live traffic, and parallel
        workers reading the ledger took every core of a small machine from it for seconds."""
        async with self._pool.acquire() as conn, conn.transaction(readonly=True):
            await conn.execute("SET LOCAL max_parallel_workers_per_gather = 0")
            rows: list[asyncpg.Record] = await conn.fetch(query, *args, timeout=CHECK_TIMEOUT_S)
            return rows

    async def fold(self) -> Folded | None:
        async with self._pool.acquire() as conn, pooled_session_lock(conn, NS_JOB, FOLD_JOB) as got:
            if not got:
                return None  # another process folds
            async with conn.transaction():
                previous = await conn.fetchval("SELECT folded_tx FROM balance_horizon FOR UPDATE")
                row = await conn.fetchrow(_FOLD, previous)
                horizon = row["horizon"]
                if horizon <= previous:
                    return Folded(previous, [])
                faults.hit("balances.fold.before_commit")
                await conn.execute("UPDATE balance_horizon SET folded_tx = $1, folded_at = now()", horizon)
            return Folded(horizon, list(row["accounts"]))

    async def horizon(self) -> int:
        return int(await self._pool.fetchval("SELECT folded_tx FROM balance_horizon"))

    async def snapshot(self, account_code: str, *, with_unfolded: bool = False) -> Snapshot | None:
        # the postings above the horizon are recent ones: found through the tx index
        row = await self._pool.fetchrow(
            """SELECT a.account_code, a.currency, coalesce(b.balance_minor, 0) AS balance, h.folded_tx AS horizon,
                      b.updated_at,
                      CASE WHEN $2 THEN (SELECT coalesce(sum(p.signed_amount_minor), 0) FROM postings p
                                         WHERE p.tx >= h.folded_tx AND p.account_code = a.account_code)
                           ELSE 0 END AS unfolded
               FROM accounts a CROSS JOIN balance_horizon h
               LEFT JOIN account_balances b ON b.account_code = a.account_code
               WHERE a.account_code = $1""",
            account_code,
            with_unfolded,
        )
        if row is None:
            return None
        return Snapshot(
            row["account_code"],
            row["currency"],
            row["balance"],
            row["horizon"],
            row["updated_at"],
            int(row["unfolded"]),
        )

    async def snapshot_drift(self) -> tuple[int, list[Drift]]:
        rows = await self._check(
            """WITH h AS (SELECT folded_tx FROM balance_horizon),
                    expected AS (SELECT account_code, sum(signed_amount_minor)::bigint AS total
                                 FROM postings, h WHERE tx < h.folded_tx GROUP BY account_code)
               SELECT coalesce(e.account_code, b.account_code) AS account_code,
                      coalesce(e.total, 0) AS expected, coalesce(b.balance_minor, 0) AS actual
               FROM expected e FULL JOIN account_balances b ON b.account_code = e.account_code"""
        )
        drift = [
            Drift(Check.SNAPSHOT, r["account_code"], r["expected"], r["actual"])
            for r in rows
            if r["expected"] != r["actual"]
        ]
        return len(rows), drift

    async def trial_balance(self) -> list[TrialBalance]:
        rows = await self._check(
            """SELECT currency,
                      coalesce(sum(amount_minor) FILTER (WHERE direction = 'DEBIT'), 0)::bigint AS debits,
                      coalesce(sum(amount_minor) FILTER (WHERE direction = 'CREDIT'), 0)::bigint AS credits
               FROM postings GROUP BY currency ORDER BY currency"""
        )
        return [TrialBalance(r["currency"], r["debits"], r["credits"]) for r in rows]

    async def auth_drift(self, *, finished_before_s: float, finished_since: datetime | None = None) -> list[Drift]:
        # Payments finished (every order terminal) more than `finished_before_s` ago — the last
        # journals are recorded a moment after the payment finishes: their authorization hold
        # must be fully captured or released. Reads the payments context's table:
        # reconciliation is a cross-context report.
        rows = await self._check(
            """SELECT j.payment_id, a.account_type, sum(p.signed_amount_minor)::bigint AS net
               FROM payments pay
               JOIN journal_entries j ON j.payment_id = pay.payment_id
               JOIN postings p ON p.journal_id = j.journal_id
               JOIN accounts a ON a.account_code = p.account_code
               WHERE pay.status IN ('CAPTURED', 'CAPTURED_PARTIALLY', 'CAPTURE_FAILED',
                                    'PARTIALLY_REFUNDED', 'REFUNDED')
                 AND pay.updated_at < now() - make_interval(secs => $1)
                 AND ($2::timestamptz IS NULL OR pay.updated_at >= $2)
                 AND a.account_type IN ('AUTH_RECEIVABLE', 'AUTH_LIABILITY')
               GROUP BY j.payment_id, a.account_type
               HAVING sum(p.signed_amount_minor) <> 0""",
            finished_before_s,
            finished_since,
        )
        return [Drift(Check.AUTH_OPEN, f"{r['payment_id']}:{r['account_type']}", 0, r["net"]) for r in rows]

    async def psp_receivables_drift(self, *, finished_before_s: float) -> list[Drift]:
        # Cross-context, like auth_drift: the payments' own figures (captured minus refunded) and
        # the settlements against the ledger. An operator's correcting journal (ADJUSTMENT)
        # changes what the PSP owes without a payment to explain it: it is left out, as the
        # payments that changed within the grace period are. What the ledger says is owed is the
        # account's exact balance (snapshot + postings above the horizon, which the snapshot
        # check vouches for) less those left out — found by index, never by reading the ledger.
        rows = await self._check(
            """WITH recent AS (SELECT payment_id FROM payments
                                WHERE updated_at >= now() - make_interval(secs => $1)),
                     captured AS (SELECT p.currency,
                                         sum(p.captured_amount_minor - p.refunded_amount_minor)::bigint AS minor
                                  FROM payments p WHERE p.updated_at < now() - make_interval(secs => $1)
                                  GROUP BY p.currency),
                     settled AS (SELECT currency, sum(gross_minor)::bigint AS minor FROM settlements GROUP BY currency),
                     psp AS (SELECT account_code, currency FROM accounts WHERE account_type = 'PSP_RECEIVABLES'),
                     held AS (SELECT psp.currency,
                                     coalesce((SELECT b.balance_minor FROM account_balances b
                                               WHERE b.account_code = psp.account_code), 0)
                                   + coalesce((SELECT sum(p.signed_amount_minor) FROM postings p, balance_horizon h
                                               WHERE p.tx >= h.folded_tx AND p.account_code = psp.account_code), 0)
                                     AS minor
                              FROM psp),
                     left_out AS (SELECT p.currency, sum(p.signed_amount_minor)::bigint AS minor
                                  FROM postings p
                                  WHERE p.account_code IN (SELECT account_code FROM psp)
                                    AND p.journal_id IN (
                                        SELECT journal_id FROM journal_entries
                                        WHERE payment_id IN (SELECT payment_id FROM recent)
                                        UNION
                                        SELECT journal_id FROM journal_entries WHERE journal_type = 'ADJUSTMENT')
                                  GROUP BY p.currency),
                     owed AS (SELECT held.currency, (sum(held.minor) - coalesce(max(l.minor), 0))::bigint AS minor
                              FROM held LEFT JOIN left_out l ON l.currency = held.currency
                              GROUP BY held.currency)
                SELECT a.currency, coalesce(c.minor, 0) - coalesce(s.minor, 0) AS expected,
                       coalesce(o.minor, 0) AS actual
                FROM accounts a
                LEFT JOIN captured c ON c.currency = a.currency
                LEFT JOIN settled s ON s.currency = a.currency
                LEFT JOIN owed o ON o.currency = a.currency
                WHERE a.account_type = 'PSP_RECEIVABLES' AND a.entity_id = 'GLOBAL'
                ORDER BY a.currency""",
            finished_before_s,
        )
        return [
            Drift(Check.PSP_RECEIVABLES, r["currency"], r["expected"], r["actual"])
            for r in rows
            if r["expected"] != r["actual"]
        ]

    async def rebuild_snapshots(self) -> int:
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", NS_JOB, FOLD_JOB)  # no fold meanwhile
            status = await conn.execute(
                """WITH h AS (SELECT folded_tx FROM balance_horizon),
                        expected AS (SELECT account_code, sum(signed_amount_minor)::bigint AS total
                                     FROM postings, h WHERE tx < h.folded_tx GROUP BY account_code)
                   INSERT INTO account_balances AS b (account_code, balance_minor, updated_at)
                   SELECT coalesce(e.account_code, x.account_code), coalesce(e.total, 0), now()
                   FROM expected e FULL JOIN account_balances x ON x.account_code = e.account_code
                   WHERE coalesce(e.total, 0) <> coalesce(x.balance_minor, 0)
                   ON CONFLICT (account_code) DO UPDATE
                   SET balance_minor = EXCLUDED.balance_minor, updated_at = now()"""
            )
        return int(status.split()[-1])

    async def postings_above_horizon(self) -> Unfolded:
        async with self._pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            horizon = await conn.fetchval("SELECT folded_tx FROM balance_horizon")
            rows = await conn.fetch(
                "SELECT account_code, tx, seq, signed_amount_minor, created_at FROM postings WHERE tx >= $1", horizon
            )
        return Unfolded(
            horizon=horizon,
            postings=[
                (Entry(r["account_code"], r["tx"], r["seq"], r["signed_amount_minor"]), r["created_at"]) for r in rows
            ],
        )
