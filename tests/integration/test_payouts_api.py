"""Seller payouts and PSP settlement over HTTP, against real PostgreSQL and Redis: validation,
idempotency, concurrency against one balance, reads and roles, settlement by the CLI and the
job, and reconciliation afterwards. Each test onboards sellers of its own."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from marketplace_pay.shared.ids import public_payout_id
from tests.conftest import make_settings
from tests.harness import Service, payment_body, start_service


@pytest.fixture(scope="module")
async def svc(
    databases: Any, redis_url: str, redis_prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Service]:
    database = await databases.create()
    settings = make_settings(
        database,
        redis_url,
        f"{redis_prefix}payouts:",
        str(tmp_path_factory.mktemp("payouts")),
        retry_base_ms=20,
        retry_cap_ms=100,
        retry_poll_ms=20,
        balance_fold_ms=200,
    )
    async with start_service(settings) as service:
        yield service


async def new_seller(svc: Service, currency: str = "EUR", bps: int = 500) -> str:
    seller = f"S-{uuid.uuid4().hex[:10]}"
    r = await svc.client.post(
        "/api/v1/sellers",
        json={"sellerId": seller, "currency": currency, "commissionBps": bps},
        headers=svc.auth("ADMIN"),
    )
    assert r.status_code == 201, r.text
    return seller


async def exact_balance(svc: Service, seller: str) -> int:
    return int(
        await svc.fetchval(
            "SELECT coalesce(sum(signed_amount_minor), 0) FROM postings WHERE account_code = "
            "(SELECT account_code FROM accounts WHERE entity_id = $1 AND account_type = 'MERCHANT_PAYABLE')",
            seller,
        )
    )


async def funded(svc: Service, amounts: list[int], currency: str = "EUR", bps: int = 500) -> tuple[str, int]:
    """A new seller with these orders captured and recorded; returns (seller, its balance)."""
    seller = await new_seller(svc, currency, bps)
    for amount in amounts:
        r = await svc.pay(payment_body(f"B-{uuid.uuid4().hex[:8]}", "O", [(seller, amount)], currency))
        assert r.status_code == 202, r.text
    expected = sum(a - (a * bps + 5000) // 10000 for a in amounts)

    async def recorded() -> bool:
        return await exact_balance(svc, seller) == expected

    await svc.until(recorded, timeout=20)
    return seller, expected


async def payout(
    svc: Service, seller: str, amount: int | None = None, *, key: str | None = None, role: str = "FINANCE", **kw: Any
) -> Any:
    headers = svc.auth(role)
    if key is not None:
        headers["Idempotency-Key"] = key
    if "content" in kw:
        return await svc.client.post(f"/api/v1/sellers/{seller}/payouts", content=kw["content"], headers=headers)
    body = {} if amount is None else {"amount": {"quantity": amount, "currency": kw.get("currency", "EUR")}}
    return await svc.client.post(f"/api/v1/sellers/{seller}/payouts", json=body, headers=headers)


async def payouts_of(svc: Service, seller: str) -> list[Any]:
    return await svc.fetch("SELECT * FROM payouts WHERE seller_id = $1 ORDER BY payout_id", seller)


async def until_final(svc: Service, seller: str, count: int = 1) -> list[Any]:
    async def done() -> bool:
        rows = await payouts_of(svc, seller)
        return len(rows) == count and all(r["status"] != "PENDING" for r in rows)

    await svc.until(done, timeout=20)
    return await payouts_of(svc, seller)


async def test_a_payout_of_everything_is_202_paid_and_leaves_nothing(svc: Service) -> None:
    seller, balance = await funded(svc, [1000, 2000])
    r = await payout(svc, seller)
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["payoutId"].startswith("pout_") and r.headers["location"] == f"/api/v1/payouts/{body['payoutId']}"
    assert (body["sellerId"], body["amount"], body["status"]) == (
        seller,
        {"quantity": balance, "currency": "EUR"},
        "PENDING",
    )
    [row] = await until_final(svc, seller)
    assert row["status"] == "PAID"
    assert await exact_balance(svc, seller) == 0
    got = await svc.client.get(body and r.headers["location"], headers=svc.auth("FINANCE"))
    assert got.status_code == 200 and got.json()["status"] == "PAID"
    journals = await svc.fetch(
        "SELECT journal_type FROM journal_entries WHERE journal_id = ANY($1::text[]) ORDER BY seq",
        [f"PAYOUT:{row['payout_id']}", f"PAYOUT_PAID:{row['payout_id']}"],
    )
    assert [j["journal_type"] for j in journals] == ["PAYOUT", "PAYOUT_PAID"]
    events = await svc.fetch("SELECT event_id FROM outbox WHERE msg_key = $1 ORDER BY id", str(row["payout_id"]))
    assert [e["event_id"] for e in events] == [f"{body['payoutId']}:requested", f"{body['payoutId']}:paid"]


async def test_an_amount_ending_in_99_fails_and_the_money_returns(svc: Service) -> None:
    seller, balance = await funded(svc, [3000])  # 2850
    r = await payout(svc, seller, 1099)
    assert r.status_code == 202
    [row] = await until_final(svc, seller)
    assert row["status"] == "FAILED"
    assert await exact_balance(svc, seller) == balance
    assert (
        await svc.fetchval(
            "SELECT count(*) FROM journal_entries WHERE journal_id = $1", f"PAYOUT_RETURNED:{row['payout_id']}"
        )
        == 1
    )


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("amount above available", 422),
        ("other currency", 422),
        ("unknown seller", 404),
        ("impossible seller id", 404),
        ("suspended seller", 422),
        ("nothing available", 422),
        ("zero amount", 400),
        ("negative amount", 400),
        ("amount as a string", 400),
        ("unknown currency", 400),
        ("malformed JSON", 400),
        ("amount 30.5", 400),
        ("JSON null", 400),
        ("invalid UTF-8", 400),
        ("nested 3000 deep", 400),
        ("bad Idempotency-Key", 400),
        ("no token", 401),
        ("payment:write token", 403),
        ("SELLER token", 403),
        ("text/plain", 415),
    ],
)
async def test_refused_payouts_are_problems_and_write_nothing(svc: Service, case: str, status: int) -> None:
    seller, balance = await funded(svc, [1000]) if case != "nothing available" else (await new_seller(svc), 0)
    url = f"/api/v1/sellers/{seller}/payouts"
    finance = svc.auth("FINANCE")
    before = await svc.fetchval("SELECT count(*) FROM payouts")
    if case == "amount above available":
        r = await payout(svc, seller, balance + 1)
    elif case == "other currency":
        r = await payout(svc, seller, 10, currency="USD")
    elif case == "unknown seller":
        r = await payout(svc, "SELLER-NOPE-" + uuid.uuid4().hex[:6], 10)
    elif case == "impossible seller id":
        r = await svc.client.post("/api/v1/sellers/a%20b/payouts", json={}, headers=finance)
    elif case == "suspended seller":
        await svc.client.patch(f"/api/v1/sellers/{seller}", json={"status": "SUSPENDED"}, headers=svc.auth("ADMIN"))
        r = await payout(svc, seller, 10)
    elif case == "nothing available":
        r = await payout(svc, seller)
    elif case == "zero amount":
        r = await payout(svc, seller, 0)
    elif case == "negative amount":
        r = await payout(svc, seller, -5)
    elif case == "amount as a string":
        r = await payout(svc, seller, content=b'{"amount": {"quantity": "10", "currency": "EUR"}}')
    elif case == "unknown currency":
        r = await payout(svc, seller, 10, currency="XYZ")
    elif case == "malformed JSON":
        r = await payout(svc, seller, content=b'{"amount": ')
    elif case == "amount 30.5":
        r = await payout(svc, seller, content=b'{"amount": {"quantity": 30.5, "currency": "EUR"}}')
    elif case == "JSON null":
        r = await payout(svc, seller, content=b"null")
    elif case == "invalid UTF-8":
        r = await payout(svc, seller, content=b'{"amount": {"quantity": 10, "currency": "\xff\xfe"}}')
    elif case == "nested 3000 deep":
        r = await payout(svc, seller, content=b'{"x": ' + b"[" * 3000 + b"]" * 3000 + b"}")
    elif case == "bad Idempotency-Key":
        r = await payout(svc, seller, 10, key=" leading-space")
    elif case == "no token":
        r = await svc.client.post(url, json={})
    elif case == "payment:write token":
        r = await payout(svc, seller, 10, role="payment:write")
    elif case == "SELLER token":
        r = await svc.client.post(url, json={}, headers=svc.auth("SELLER", seller=seller))
    else:
        r = await svc.client.post(url, content=b"{}", headers=finance | {"content-type": "text/plain"})
    assert r.status_code == status, (case, r.text)
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["status"] == status
    assert await svc.fetchval("SELECT count(*) FROM payouts") == before
    if balance:
        assert await exact_balance(svc, seller) == balance


async def test_idempotency_key_replays_refuses_another_body_and_concurrent_duplicates_make_one(svc: Service) -> None:
    seller, balance = await funded(svc, [2000])  # 1900
    first = await payout(svc, seller, 500, key="po-1")
    assert first.status_code == 202 and "idempotent-replayed" not in first.headers
    await until_final(svc, seller)
    again = await payout(svc, seller, 500, key="po-1")
    assert again.status_code == 202 and again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content  # the first response, byte for byte (status PENDING then)
    other = await payout(svc, seller, 600, key="po-1")
    assert other.status_code == 422 and "different request body" in other.json()["detail"]
    elsewhere = await funded(svc, [1000])
    assert (await payout(svc, elsewhere[0], 500, key="po-1")).status_code == 422  # same key, another seller

    answers = await asyncio.gather(*(payout(svc, seller, 100, key="po-2") for _ in range(10)))
    codes = sorted(r.status_code for r in answers)
    assert set(codes) <= {202, 409} and codes.count(202) >= 1, codes
    created = {r.json()["payoutId"] for r in answers if r.status_code == 202}
    assert len(created) == 1  # one payout, however many asked at once
    await until_final(svc, seller, count=2)
    assert await exact_balance(svc, seller) == balance - 600


async def test_ten_concurrent_payouts_never_take_the_balance_below_zero(svc: Service) -> None:
    seller, balance = await funded(svc, [10_000])  # 9500
    answers = await asyncio.gather(*(payout(svc, seller, 2000) for _ in range(10)))
    codes = [r.status_code for r in answers]
    assert codes.count(202) == 4 and codes.count(422) == 6, codes  # 4 × 2000 fit in 9500, the fifth does not
    rest = await asyncio.gather(*(payout(svc, seller) for _ in range(10)))  # and everything left, ten times at once
    assert sorted(r.status_code for r in rest) == [202] + [422] * 9
    rows = await until_final(svc, seller, count=5)
    assert sum(r["amount_minor"] for r in rows) == balance
    assert await exact_balance(svc, seller) == 0


async def test_reads_and_who_may_see_which_payout(svc: Service) -> None:
    seller, _ = await funded(svc, [3000])
    ids = [(await payout(svc, seller, amount)).json()["payoutId"] for amount in (100, 200, 300)]
    await until_final(svc, seller, count=3)
    own = svc.auth("SELLER", seller=seller)
    assert (await svc.client.get(f"/api/v1/payouts/{ids[0]}", headers=own)).status_code == 200
    stranger = svc.auth("SELLER", seller="SELLER-111")
    assert (await svc.client.get(f"/api/v1/payouts/{ids[0]}", headers=stranger)).status_code == 404
    assert (await svc.client.get(f"/api/v1/payouts/{ids[0]}", headers=svc.auth("payment:read"))).status_code == 403
    unknown = public_payout_id(2**62)
    assert (await svc.client.get(f"/api/v1/payouts/{unknown}", headers=svc.auth("FINANCE"))).status_code == 404
    assert (await svc.client.get("/api/v1/payouts/nope", headers=svc.auth("FINANCE"))).status_code == 404

    page = await svc.client.get(f"/api/v1/sellers/{seller}/payouts?limit=2", headers=svc.auth("FINANCE"))
    assert page.status_code == 200
    assert [p["payoutId"] for p in page.json()["data"]] == [ids[2], ids[1]] and page.json()["hasMore"]
    rest = await svc.client.get(
        f"/api/v1/sellers/{seller}/payouts?limit=2&after={page.json()['nextCursor']}", headers=svc.auth("FINANCE")
    )
    assert [p["payoutId"] for p in rest.json()["data"]] == [ids[0]] and rest.json()["nextCursor"] is None
    mine = await svc.client.get("/api/v1/sellers/me/payouts", headers=own)
    assert [p["payoutId"] for p in mine.json()["data"]] == ids[::-1]
    assert (await svc.client.get(f"/api/v1/sellers/{seller}/payouts", headers=own)).status_code == 403
    assert (await svc.client.get("/api/v1/sellers/me/payouts", headers=svc.auth("SELLER"))).status_code == 403
    assert (await svc.client.get("/api/v1/sellers/NOPE-x/payouts", headers=svc.auth("FINANCE"))).status_code == 404


def cli(svc: Service, *args: str) -> subprocess.CompletedProcess[str]:
    s = svc.settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("MP_")}
    env |= {
        "DATABASE_URL": s.services.database_url or "",
        "REDIS_URL": s.services.redis_url or "",
        "MP_REDIS_PREFIX": s.redis.prefix,
        "MP_JWT_SECRET": s.jwt.secret or "",
        "MP_DATA_DIR": str(s.process.data_dir),
        "MP_LOG_FORMAT": "text",
    }
    return subprocess.run(
        [sys.executable, "-m", "marketplace_pay.entrypoints.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_settlement_by_the_cli_then_reconcile_is_clean(svc: Service) -> None:
    await funded(svc, [1000, 2000])
    run = await asyncio.to_thread(cli, svc, "settle", "--json")
    assert run.returncode == 0, run.stderr
    [settled] = json.loads(run.stdout)["settlements"]
    gross = settled["gross"]  # what this module's earlier tests captured too
    assert settled["currency"] == "EUR" and gross >= 3000
    assert settled["fee"] == (gross * 30 + 5000) // 10000 and settled["net"] == gross - settled["fee"]
    again = await asyncio.to_thread(cli, svc, "settle", "--json")
    assert json.loads(again.stdout) == {"settlements": []}  # nothing left

    await funded(svc, [4000])
    human = await asyncio.to_thread(cli, svc, "settle")
    assert human.returncode == 0 and "EUR: gross 4000 fee 12 net 3988 (1 journal(s) covered)" in human.stdout
    listed = await svc.client.get("/api/v1/settlements?limit=1", headers=svc.auth("FINANCE"))
    assert listed.status_code == 200 and listed.json()["hasMore"]
    [newest] = listed.json()["data"]
    assert (newest["gross"], newest["fee"], newest["net"], newest["journalsCovered"]) == (
        {"quantity": 4000, "currency": "EUR"},
        {"quantity": 12, "currency": "EUR"},
        {"quantity": 3988, "currency": "EUR"},
        1,
    )
    assert newest["settlementId"].startswith("stl_") and newest["journalEntryId"].startswith("SETTLEMENT:")
    older = await svc.client.get(
        f"/api/v1/settlements?after={listed.json()['nextCursor']}", headers=svc.auth("FINANCE")
    )
    assert [x["settlementId"] for x in older.json()["data"]] == [settled["settlementId"]]
    assert (await svc.client.get("/api/v1/settlements", headers=svc.auth("SELLER", seller="x"))).status_code == 403

    async def owed_nothing() -> bool:
        return (await svc.container.balances.of_account("PSP_RECEIVABLES.GLOBAL.EUR")).balance_minor == 0

    await svc.until(owed_nothing, timeout=20)
    report = await svc.container.balances.reconcile(grace_s=0)
    assert report.ok, report.drift


async def test_the_scheduled_jobs_pay_out_and_settle_once_per_run(fresh_database: str, settings_for: Any) -> None:
    from apscheduler.triggers.cron import CronTrigger

    from marketplace_pay.entrypoints.jobs import JobRuns, build_scheduler

    settings = settings_for(
        fresh_database, payout_schedule="0 6 * * *", settlement_schedule="30 6 * * 1-5", payout_minimum_minor=500
    )
    async with start_service(settings) as svc:
        jobs = {j.name: j for j in svc.container.jobs}
        assert (jobs["payouts-scheduled"].cron, jobs["psp-settlement"].cron) == ("0 6 * * *", "30 6 * * 1-5")
        assert jobs["payouts-scheduled"].exclusive and jobs["psp-settlement"].exclusive
        scheduler = build_scheduler(svc.container, JobRuns())
        trigger = scheduler.get_job("psp-settlement").trigger
        assert isinstance(trigger, CronTrigger) and str(trigger.timezone) == "UTC"

        rich, _ = await funded(svc, [1000])  # 950 available: paid out
        poor, _ = await funded(svc, [400])  # 380: below the minimum
        await svc.container.scheduled(jobs["payouts-scheduled"])()
        await svc.container.scheduled(jobs["payouts-scheduled"])()  # again: nothing left above the minimum
        assert [(r["seller_id"], r["amount_minor"]) for r in await payouts_of(svc, rich)] == [(rich, 950)]
        assert await payouts_of(svc, poor) == []
        await until_final(svc, rich)

        await svc.container.scheduled(jobs["psp-settlement"])()
        await svc.container.scheduled(jobs["psp-settlement"])()
        rows = await svc.fetch("SELECT currency, gross_minor, fee_minor, journals_covered FROM settlements")
        assert [tuple(r) for r in rows] == [("EUR", 1400, 4, 2)]

        async def settled() -> bool:
            return (await svc.container.balances.of_account("PSP_RECEIVABLES.GLOBAL.EUR")).balance_minor == 0

        await svc.until(settled, timeout=20)
        balances = {
            code: (await svc.container.balances.of_account(f"{code}.GLOBAL.EUR")).balance_minor
            for code in ("PLATFORM_CASH", "PSP_FEE_EXPENSE", "PAYOUTS_IN_TRANSIT")
        }
        assert balances == {"PLATFORM_CASH": 1396 - 950, "PSP_FEE_EXPENSE": 4, "PAYOUTS_IN_TRANSIT": 0}
        report = await svc.container.balances.reconcile(grace_s=0)
        assert report.ok, report.drift
