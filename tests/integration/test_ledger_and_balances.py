"""Ledger and balances in the running service, against real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from typing import Any

import asyncpg
import pytest

from marketplace_pay.balances.adapters.postgres import PgBalanceStore
from tests.harness import Service, payment_body, start_service

SELLERS = ["SELLER-111", "SELLER-222", "SELLER-333"]
TERMINAL = ("CAPTURED", "CAPTURED_PARTIALLY", "CAPTURE_FAILED")


def fast(settings_for: Any, dsn: str, **overrides: Any) -> Any:
    return settings_for(
        dsn, **({"retry_base_ms": 40, "retry_cap_ms": 300, "retry_poll_ms": 20, "balance_fold_ms": 200} | overrides)
    )


async def pay_many(svc: Service, count: int, *, seed: int, currency_of: Any = None) -> list[str]:
    rng = random.Random(seed)
    semaphore = asyncio.Semaphore(25)
    ids: list[str] = []

    async def one() -> None:
        sellers = rng.sample(SELLERS, rng.randint(1, 3))
        body = payment_body(f"B-{uuid.uuid4().hex[:8]}", "O", [(s, rng.randint(1, 30_000)) for s in sellers])
        async with semaphore:
            r = await svc.pay(body)
        assert r.status_code == 202, r.text
        ids.append(r.json()["paymentId"])

    await asyncio.gather(*(one() for _ in range(count)))
    return ids


async def settled(svc: Service, n: int, timeout: float = 120) -> None:
    async def done() -> bool:
        finished = await svc.fetchval("SELECT count(*) FROM payments WHERE status = ANY($1::text[])", list(TERMINAL))
        return finished >= n and await svc.backlog() == 0

    await svc.until(done, timeout=timeout, interval=0.2)


async def test_500_payments_seller_balances_equal_captures_minus_commission(
    fresh_database: str, settings_for: Any
) -> None:
    async with start_service(fast(settings_for, fresh_database, psp_scenario="NORMAL")) as svc:
        await pay_many(svc, 500, seed=11)
        await settled(svc, 500)
        orders = await svc.fetch("SELECT seller_id, amount_minor FROM payment_orders WHERE status = 'CAPTURED'")
        expected: Counter[str] = Counter()
        for o in orders:  # computed here, independently: captured minus 5 % commission, rounded half up
            expected[o["seller_id"]] += o["amount_minor"] - (o["amount_minor"] * 500 + 5000) // 10000
        finance = svc.auth("FINANCE")
        for seller in SELLERS:
            r = await svc.client.get(f"/api/v1/sellers/{seller}/balance", headers=finance)
            assert r.status_code == 200
            assert r.json()["balance"] == {"quantity": expected[seller], "currency": "EUR"}, seller
        report = await svc.container.balances.reconcile()
        assert report.ok, report.drift
        trial = await PgBalanceStore(svc.resources.pool).trial_balance()
        assert trial and all(t.debits_minor == t.credits_minor for t in trial)
        # the AUTH accounts of finished payments net to zero: here, every payment is finished
        for code in ("AUTH_RECEIVABLE.GLOBAL.EUR", "AUTH_LIABILITY.GLOBAL.EUR"):
            assert (await svc.container.balances.of_account(code)).balance_minor == 0
        assert await PgBalanceStore(svc.resources.pool).auth_drift(finished_before_s=0) == []  # every payment, now
        # everything folded: the horizon is past the last journal's transaction
        await svc.container.balances.fold()
        assert await svc.fetchval("SELECT folded_tx > (SELECT max(tx) FROM journal_entries) FROM balance_horizon")


async def test_reconcile_reports_an_authorization_left_open(fresh_database: str, settings_for: Any) -> None:
    async with start_service(fast(settings_for, fresh_database, psp_scenario="BEST_PSP_EVER")) as svc:
        r = await svc.pay(payment_body(f"B-{uuid.uuid4().hex[:6]}", lines=[("SELLER-111", 1000)]))
        await settled(svc, 1)
        pid = await svc.fetchval("SELECT payment_id FROM payments")
        assert (await svc.container.balances.reconcile(grace_s=0)).ok
        await _open_hold(svc, pid, "ADJ:auth")
        report = await svc.container.balances.reconcile(grace_s=0)
        assert [(d.check, d.subject, d.actual_minor) for d in report.drift] == [
            ("auth-open", f"{pid}:AUTH_RECEIVABLE", 10)
        ]
        assert not (await svc.container.balances.reconcile(grace_s=3600)).drift  # too recent to judge yet
        assert r.status_code == 202


async def test_the_periodic_reconciliation_checks_holds_of_payments_finished_since_its_last_run(
    fresh_database: str, settings_for: Any
) -> None:
    # the service's own reconciliation job would share the runs counted here: not within this test
    settings = fast(settings_for, fresh_database, psp_scenario="BEST_PSP_EVER", reconcile_interval_s=3600)
    async with start_service(settings) as svc:
        balances = svc.container.balances
        await svc.pay(payment_body(f"B-{uuid.uuid4().hex[:6]}", lines=[("SELLER-111", 1000)]))
        await settled(svc, 1)
        old = await svc.fetchval("SELECT payment_id FROM payments")
        assert (await balances.reconcile_since_last_run(grace_s=0, full_every=4)).ok  # run 1: the last hour
        await _open_hold(svc, old, "ADJ:old")
        # finished long before the window: only the whole-ledger checks read it again
        await svc.fetchval("UPDATE payments SET updated_at = now() - interval '2 hours' WHERE payment_id = $1", old)
        assert (await balances.reconcile_since_last_run(grace_s=0, full_every=4)).ok  # run 2: the window
        assert not (await balances.reconcile(grace_s=0)).ok  # the command line reads everything
        await svc.pay(payment_body(f"B-{uuid.uuid4().hex[:6]}", lines=[("SELLER-222", 1000)]))
        await settled(svc, 2)
        new = await svc.fetchval("SELECT payment_id FROM payments WHERE payment_id <> $1", old)
        await _open_hold(svc, new, "ADJ:new")
        report = await balances.reconcile_since_last_run(grace_s=0, full_every=4)  # run 3: in the window
        assert [d.subject for d in report.drift] == [f"{new}:AUTH_RECEIVABLE"]
        report = await balances.reconcile_since_last_run(grace_s=0, full_every=4)  # run 4: every payment
        assert sorted(d.subject for d in report.drift) == sorted([f"{old}:AUTH_RECEIVABLE", f"{new}:AUTH_RECEIVABLE"])
        report = await balances.reconcile_since_last_run(grace_s=0, full_every=4)  # run 5: full until clean
        assert sorted(d.subject for d in report.drift) == sorted([f"{old}:AUTH_RECEIVABLE", f"{new}:AUTH_RECEIVABLE"])


async def test_psp_receivables_check_reads_the_balance_less_corrections_and_recent_payments(
    fresh_database: str, settings_for: Any
) -> None:
    async with start_service(fast(settings_for, fresh_database, psp_scenario="BEST_PSP_EVER")) as svc:
        await svc.pay(payment_body(f"B-{uuid.uuid4().hex[:6]}", lines=[("SELLER-111", 1000)]))
        await settled(svc, 1)
        await svc.container.balances.fold()  # part of the balance in the snapshot, part above it
        store = PgBalanceStore(svc.resources.pool)
        assert await store.psp_receivables_drift(finished_before_s=0) == []
        # a payment that changed within the grace period is left out of both sides
        assert await store.psp_receivables_drift(finished_before_s=3600) == []
        # an operator's correction moves what the PSP owes with no payment to explain it: left out
        await _journal(svc, "ADJ:psp", "ADJUSTMENT", "PSP_RECEIVABLES.GLOBAL.EUR", 7)
        assert await store.psp_receivables_drift(finished_before_s=0) == []
        # anything else the payments do not explain is a difference
        await _journal(svc, "REFUND:lost", "REFUND", "PSP_RECEIVABLES.GLOBAL.EUR", -5)
        [drift] = await store.psp_receivables_drift(finished_before_s=0)
        assert (drift.subject, drift.expected_minor, drift.actual_minor) == ("EUR", 1000, 995)


async def _journal(
    svc: Any, journal_id: str, journal_type: str, account: str, signed_minor: int, *, payment_id: int | None = None
) -> None:
    """A two-posting journal written by hand, `signed_minor` on `account`, the other side on PLATFORM_CASH."""
    async with svc.resources.pool.acquire() as conn, conn.transaction():
        seq = await conn.fetchval(
            "INSERT INTO journal_entries (journal_id, journal_type, name, currency, payment_id, source_event_id) "
            "VALUES ($1, $2, 'test', 'EUR', $3, 'test') RETURNING seq",
            journal_id,
            journal_type,
            payment_id,
        )
        side = "DEBIT" if signed_minor > 0 else "CREDIT"
        other = "CREDIT" if signed_minor > 0 else "DEBIT"
        await conn.execute(
            """INSERT INTO postings (journal_id, seq, account_code, direction, amount_minor, signed_amount_minor, currency)
               VALUES ($1, $2, $3, $4, $5, $6, 'EUR'), ($1, $2, 'PLATFORM_CASH.GLOBAL.EUR', $7, $5, $8, 'EUR')""",
            journal_id,
            seq,
            account,
            side,
            abs(signed_minor),
            signed_minor,
            other,
            -signed_minor,
        )


async def _open_hold(svc: Any, payment_id: int, journal_id: str) -> None:
    """A capture recorded for too little (a bug elsewhere): the payment's hold is not fully released."""
    await _journal(svc, journal_id, "ADJUSTMENT", "AUTH_RECEIVABLE.GLOBAL.EUR", 10, payment_id=payment_id)


async def test_the_database_refuses_to_change_the_ledger(fresh_database: str, settings_for: Any) -> None:
    async with start_service(fast(settings_for, fresh_database, psp_scenario="BEST_PSP_EVER")) as svc:
        await pay_many(svc, 1, seed=3)
        await settled(svc, 1)
        conn: asyncpg.Connection
        async with svc.resources.pool.acquire() as conn:
            for sql in (
                "UPDATE postings SET amount_minor = amount_minor + 1",
                "DELETE FROM postings",
                "UPDATE journal_entries SET name = 'x'",
                "DELETE FROM journal_entries",
                "TRUNCATE postings",
                "TRUNCATE journal_entries CASCADE",
            ):
                with pytest.raises(asyncpg.RestrictViolationError, match="immutable"):
                    await conn.execute(sql)
            # an unbalanced journal cannot commit
            with pytest.raises(asyncpg.CheckViolationError, match="unbalanced"):
                async with conn.transaction():
                    seq = await conn.fetchval(
                        "INSERT INTO journal_entries (journal_id, journal_type, name, currency, source_event_id) "
                        "VALUES ('ADJ:1', 'ADJUSTMENT', 'test', 'EUR', 'manual') RETURNING seq"
                    )
                    await conn.execute(
                        """INSERT INTO postings (journal_id, seq, account_code, direction, amount_minor, signed_amount_minor, currency)
                           VALUES ('ADJ:1', $1, 'PLATFORM_CASH.GLOBAL.EUR', 'DEBIT', 100, 100, 'EUR'),
                                  ('ADJ:1', $1, 'PSP_RECEIVABLES.GLOBAL.EUR', 'CREDIT', 99, -99, 'EUR')""",
                        seq,
                    )
            # nor a journal with a single posting, nor postings added to a committed journal
            with pytest.raises(asyncpg.CheckViolationError, match="at least 2"):
                async with conn.transaction():
                    seq = await conn.fetchval(
                        "INSERT INTO journal_entries (journal_id, journal_type, name, currency, source_event_id) "
                        "VALUES ('ADJ:2', 'ADJUSTMENT', 'test', 'EUR', 'manual') RETURNING seq"
                    )
                    await conn.execute(
                        "INSERT INTO postings (journal_id, seq, account_code, direction, amount_minor, signed_amount_minor, currency) "
                        "VALUES ('ADJ:2', $1, 'PLATFORM_CASH.GLOBAL.EUR', 'DEBIT', 100, 100, 'EUR')",
                        seq,
                    )
            old = await conn.fetchrow("SELECT journal_id, seq FROM journal_entries LIMIT 1")
            with pytest.raises(asyncpg.RestrictViolationError, match="same transaction"):
                await conn.execute(
                    "INSERT INTO postings (journal_id, seq, account_code, direction, amount_minor, signed_amount_minor, currency) "
                    "VALUES ($1, $2, 'BANK_FEES.GLOBAL.EUR', 'DEBIT', 1, 1, 'EUR')",
                    old["journal_id"],
                    old["seq"],
                )
            with pytest.raises(asyncpg.CheckViolationError, match="signed amount"):
                async with conn.transaction():
                    seq = await conn.fetchval(
                        "INSERT INTO journal_entries (journal_id, journal_type, name, currency, source_event_id) "
                        "VALUES ('ADJ:3', 'ADJUSTMENT', 'test', 'EUR', 'manual') RETURNING seq"
                    )
                    await conn.execute(
                        """INSERT INTO postings (journal_id, seq, account_code, direction, amount_minor, signed_amount_minor, currency)
                           VALUES ('ADJ:3', $1, 'PLATFORM_CASH.GLOBAL.EUR', 'DEBIT', 100, -100, 'EUR'),
                                  ('ADJ:3', $1, 'PSP_RECEIVABLES.GLOBAL.EUR', 'CREDIT', 100, -100, 'EUR')""",
                        seq,
                    )


async def test_one_bad_posting_among_many_journals_of_a_statement_is_refused(
    fresh_database: str, settings_for: Any
) -> None:
    """The posting check looks each journal and account up once per statement: a bad posting
    still fails the whole statement, wherever it is in the batch."""
    journals = [f"ADJ:batch-{i}" for i in range(50)]
    good = [
        ("PLATFORM_CASH.GLOBAL.EUR", "DEBIT", 100, 100, "EUR"),
        ("PSP_RECEIVABLES.GLOBAL.EUR", "CREDIT", 100, -100, "EUR"),
    ]
    cases = [
        (("NOPE.GLOBAL.EUR", "CREDIT", 100, -100, "EUR"), "does not exist"),  # no such account
        (("PSP_RECEIVABLES.GLOBAL.EUR", "CREDIT", 100, -100, "USD"), "currency"),  # not the account's currency
        (("PSP_RECEIVABLES.GLOBAL.EUR", "CREDIT", 100, 100, "EUR"), "signed amount"),  # wrong sign
    ]
    sql = """
        WITH j AS (
            INSERT INTO journal_entries (journal_id, journal_type, name, currency, source_event_id)
            SELECT id, 'ADJUSTMENT', 'test', 'EUR', 'manual' FROM unnest($1::text[]) AS id RETURNING journal_id, seq
        )
        INSERT INTO postings (journal_id, seq, account_code, direction, amount_minor, signed_amount_minor, currency)
        SELECT x.j, j.seq, x.a, x.d, x.m, x.s, x.c
        FROM unnest($2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[], $7::text[]) AS x(j, a, d, m, s, c)
        JOIN j ON j.journal_id = x.j
    """
    async with start_service(fast(settings_for, fresh_database, psp_scenario="BEST_PSP_EVER")) as svc:
        conn: asyncpg.Connection
        async with svc.resources.pool.acquire() as conn:
            for bad, message in cases:
                rows = [(j, *p) for j in journals for p in good]
                rows[61] = (journals[30], *bad)  # the second posting of the 31st journal
                with pytest.raises(asyncpg.CheckViolationError, match=message):
                    async with conn.transaction():
                        await conn.execute(sql, journals, *[list(c) for c in zip(*rows, strict=True)])
            async with conn.transaction():  # and the same batch without it is recorded
                rows = [(j, *p) for j in journals for p in good]
                await conn.execute(sql, journals, *[list(c) for c in zip(*rows, strict=True)])
            assert await conn.fetchval("SELECT count(*) FROM postings WHERE journal_id LIKE 'ADJ:batch-%'") == 100


async def test_a_seller_reads_its_own_balance_and_statement_only(fresh_database: str, settings_for: Any) -> None:
    async with start_service(fast(settings_for, fresh_database, psp_scenario="BEST_PSP_EVER")) as svc:
        await pay_many(svc, 5, seed=5)
        await settled(svc, 5)
        me = svc.auth("SELLER", seller="SELLER-111")
        r = await svc.client.get("/api/v1/sellers/me/balance", headers=me)
        assert r.status_code == 200 and r.json()["sellerId"] == "SELLER-111"
        assert r.json()["accountCode"] == "MERCHANT_PAYABLE.SELLER-111.EUR"
        assert r.json()["asOf"].endswith("Z")
        r = await svc.client.get("/api/v1/accounts/MERCHANT_PAYABLE.SELLER-111.EUR/postings", headers=me)
        assert r.status_code == 200
        assert {p["accountCode"] for p in r.json()["data"]} == {"MERCHANT_PAYABLE.SELLER-111.EUR"}
        for path in (
            "/api/v1/sellers/SELLER-222/balance",
            "/api/v1/accounts/MERCHANT_PAYABLE.SELLER-222.EUR/postings",
            "/api/v1/accounts/PSP_RECEIVABLES.GLOBAL.EUR/postings",
            "/api/v1/accounts/MERCHANT_PAYABLE.SELLER-222.EUR/balance",
            "/api/v1/accounts/garbage/postings",
        ):
            assert (await svc.client.get(path, headers=me)).status_code == 403, path
        no_claim = svc.auth("SELLER")
        assert (await svc.client.get("/api/v1/sellers/me/balance", headers=no_claim)).status_code == 403
        finance = svc.auth("FINANCE")
        assert (await svc.client.get("/api/v1/sellers/SELLER-222/balance", headers=finance)).status_code == 200
        assert (await svc.client.get("/api/v1/sellers/NOPE/balance", headers=finance)).status_code == 404
        assert (await svc.client.get("/api/v1/accounts/NOPE.GLOBAL.EUR/balance", headers=finance)).status_code == 404
        assert (await svc.client.get("/api/v1/sellers/me/balance", headers=finance)).status_code == 403


async def test_statement_pages_newest_first_without_gaps_or_repeats(fresh_database: str, settings_for: Any) -> None:
    async with start_service(fast(settings_for, fresh_database, psp_scenario="BEST_PSP_EVER")) as svc:
        await pay_many(svc, 20, seed=9)
        await settled(svc, 20)
        finance = svc.auth("FINANCE")
        code = "PSP_RECEIVABLES.GLOBAL.EUR"
        seen: list[int] = []
        after = None
        while True:
            url = f"/api/v1/accounts/{code}/postings?limit=7" + (f"&after={after}" if after else "")
            page = (await svc.client.get(url, headers=finance)).json()
            seen += [int(p["postingId"]) for p in page["data"]]
            if not page["hasMore"]:
                assert page["nextCursor"] is None
                break
            after = page["nextCursor"]
        expected = [
            r["posting_id"]
            for r in await svc.fetch(
                "SELECT posting_id FROM postings WHERE account_code = $1 ORDER BY posting_id DESC", code
            )
        ]
        assert seen == expected and len(seen) > 7
        for bad in ("limit=0", "limit=501", "limit=x", "after=abc", "after=-1"):
            r = await svc.client.get(f"/api/v1/accounts/{code}/postings?{bad}", headers=finance)
            assert r.status_code == 400, bad


async def test_journal_entries_of_a_payment(fresh_database: str, settings_for: Any) -> None:
    async with start_service(fast(settings_for, fresh_database, psp_scenario="BEST_PSP_EVER")) as svc:
        r = await svc.pay(payment_body(f"B-{uuid.uuid4().hex[:6]}", lines=[("SELLER-111", 1000), ("SELLER-222", 2066)]))
        pid = r.json()["paymentId"]
        await settled(svc, 1)
        entries = (await svc.client.get(f"/api/v1/payments/{pid}/journal-entries", headers=svc.auth("FINANCE"))).json()[
            "data"
        ]
        assert [e["journalType"] for e in entries] == [
            "AUTH_HOLD",
            "CAPTURE",
            "COMMISSION_FEE",
            "AUTH_RELEASE",
        ] or sorted(e["journalType"] for e in entries) == sorted(
            ["AUTH_HOLD", "CAPTURE", "COMMISSION_FEE", "AUTH_RELEASE"]
        )
        for e in entries:
            debits = sum(p["amount"]["quantity"] for p in e["postings"] if p["direction"] == "DEBIT")
            credits = sum(p["amount"]["quantity"] for p in e["postings"] if p["direction"] == "CREDIT")
            assert debits == credits
        assert (
            await svc.client.get(f"/api/v1/payments/{pid}/journal-entries", headers=svc.auth("payment:read"))
        ).status_code == 403
        assert (
            await svc.client.get("/api/v1/payments/pay_AAAAAAAAAAE/journal-entries", headers=svc.auth("FINANCE"))
        ).status_code == 404


async def test_balance_events_twice_and_out_of_order_on_real_redis(fresh_database: str, settings_for: Any) -> None:
    async with start_service(
        fast(settings_for, fresh_database, psp_scenario="BEST_PSP_EVER", balance_fold_ms=3_600_000)
    ) as svc:
        await pay_many(svc, 10, seed=4)
        await settled(svc, 10)
        from marketplace_pay.infra.codec import decode_envelope
        from marketplace_pay.ledger.domain.events import LedgerEntriesRecorded

        rows = await svc.fetch(
            "SELECT payload FROM outbox WHERE event_type = 'ledger_entries_recorded' ORDER BY tx, id"
        )
        events = [decode_envelope(r["payload"], LedgerEntriesRecorded) for r in rows]
        [apply] = [s.handler for s in svc.container.subscriptions if s.event is LedgerEntriesRecorded]
        before = {
            s: (await svc.container.balances.of_account(f"MERCHANT_PAYABLE.{s}.EUR")).balance_minor for s in SELLERS
        }
        await apply(list(reversed(events)) + events)
        await asyncio.gather(*(apply([e]) for e in events))
        after = {
            s: (await svc.container.balances.of_account(f"MERCHANT_PAYABLE.{s}.EUR")).balance_minor for s in SELLERS
        }
        assert after == before
        await svc.container.balances.fold()
        await apply(events)  # after the fold: below the horizon, ignored
        assert {
            s: (await svc.container.balances.of_account(f"MERCHANT_PAYABLE.{s}.EUR")).balance_minor for s in SELLERS
        } == before
        assert (await svc.container.balances.reconcile()).ok


async def test_hot_accounts_never_lose_a_posting_whose_id_is_below_one_already_folded(
    fresh_database: str, settings_for: Any
) -> None:
    """A watermark on ledger ids drops entries whose id is below an already-merged one
    (concurrent writers on GLOBAL accounts). Here a journal that holds its seq open while later
    ones commit and are folded is not folded before it commits — and is folded after; nobody
    waits for it meanwhile."""
    async with start_service(
        fast(settings_for, fresh_database, psp_scenario="BEST_PSP_EVER", balance_fold_ms=3_600_000)
    ) as svc:
        pool = svc.resources.pool
        slow = await pool.acquire()
        try:
            tx = slow.transaction()
            await tx.start()
            early_seq = await slow.fetchval(
                "INSERT INTO journal_entries (journal_id, journal_type, name, currency, source_event_id) "
                "VALUES ('ADJ:slow', 'ADJUSTMENT', 'slow writer', 'EUR', 'test') RETURNING seq"
            )
            await slow.execute(
                """INSERT INTO postings (journal_id, seq, account_code, direction, amount_minor, signed_amount_minor, currency)
                   VALUES ('ADJ:slow', $1, 'PSP_RECEIVABLES.GLOBAL.EUR', 'DEBIT', 777, 777, 'EUR'),
                          ('ADJ:slow', $1, 'PLATFORM_CASH.GLOBAL.EUR', 'CREDIT', 777, -777, 'EUR')""",
                early_seq,
            )
            early_tx = await slow.fetchval("SELECT pg_current_xact_id()")
            await pay_many(svc, 3, seed=2)  # later journals, committed while ADJ:slow is still open
            await svc.until(lambda: svc.fetchval("SELECT count(*) > 3 FROM journal_entries"), timeout=20)
            folded = await asyncio.wait_for(svc.container.balances.fold(), timeout=2)  # nobody waits
            assert folded is not None and folded.horizon <= early_tx  # the open writer holds the horizon back
            assert await svc.fetchval("SELECT count(*) FROM postings WHERE tx >= $1", folded.horizon) >= 2
            await tx.commit()
        finally:
            await pool.release(slow)
        folded = await svc.container.balances.fold()
        assert folded is not None and folded.horizon > early_tx  # ...and once it committed, it is folded too
        assert early_seq
        await settled(svc, 3)
        await svc.container.balances.fold()
        report = await svc.container.balances.reconcile()
        assert report.ok, report.drift
        total = await svc.fetchval(
            "SELECT sum(signed_amount_minor) FROM postings WHERE account_code = 'PSP_RECEIVABLES.GLOBAL.EUR'"
        )
        assert (await svc.container.balances.of_account("PSP_RECEIVABLES.GLOBAL.EUR")).balance_minor == total


async def test_recording_a_journal_reads_the_ledger_by_key_not_whole(fresh_database: str) -> None:
    """The database's posting check must look journals and accounts up by key: a check that
    scans journal_entries makes every ledger write slower as the ledger grows (migration 007)."""
    conn = await asyncpg.connect(fresh_database)
    try:

        async def record(n: int, first: int) -> None:
            async with conn.transaction():
                seqs = await conn.fetch(
                    "INSERT INTO journal_entries (journal_id, journal_type, name, currency, source_event_id) "
                    "SELECT 'ADJ:' || i, 'ADJUSTMENT', 'test', 'EUR', 'manual' FROM generate_series($1::int, $2::int) i "
                    "RETURNING journal_id, seq",
                    first,
                    first + n - 1,
                )
                await conn.executemany(
                    """INSERT INTO postings (journal_id, seq, account_code, direction, amount_minor, signed_amount_minor, currency)
                       VALUES ($1, $2, 'PLATFORM_CASH.GLOBAL.EUR', 'DEBIT', 100, 100, 'EUR'),
                              ($1, $2, 'PSP_RECEIVABLES.GLOBAL.EUR', 'CREDIT', 100, -100, 'EUR')""",
                    [(r["journal_id"], r["seq"]) for r in seqs],
                )
                scans = await conn.fetch(
                    "SELECT relname, seq_scan FROM pg_stat_xact_user_tables "
                    "WHERE relname IN ('journal_entries', 'accounts') AND seq_scan > 0"
                )
                assert scans == [] or first == 1, {r["relname"]: r["seq_scan"] for r in scans}

        await record(5000, first=1)  # a ledger of some size (its own scans don't count)
        await record(1, first=5001)  # one more journal: looked up by key only
        assert await conn.fetchval("SELECT count(*) FROM postings") == 10002
    finally:
        await conn.close()
