"""Balances in `marketplace-pay serve` under faults: killed mid-fold, Redis flushed mid-run. In
each, balances end equal to Σ of their postings, `reconcile` exits 0 and no journal is doubled."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
import uuid
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis

from tests.harness import ServiceProcess, auth, outbox_backlog, payment_body

SELLERS = ["SELLER-111", "SELLER-222", "SELLER-333"]


def fast(settings_for: Any, dsn: str, **overrides: Any) -> Any:
    base = {"psp_scenario": "NORMAL", "retry_base_ms": 50, "retry_cap_ms": 200, "balance_fold_ms": 100}
    return settings_for(dsn, **(base | overrides))


def traffic(service: ServiceProcess, count: int, *, seed: int) -> int:
    rng = random.Random(seed)
    headers = auth(service.settings.jwt.secret or "", "payment:write")
    sent = 0
    with httpx.Client(timeout=10) as client:
        for _ in range(count):
            lines = [(s, rng.randint(1, 20_000)) for s in rng.sample(SELLERS, rng.randint(1, 3))]
            try:
                r = client.post(
                    f"{service.url}/api/v1/payments",
                    json=payment_body(f"B-{uuid.uuid4().hex[:8]}", "O", lines),
                    headers=headers,
                )
            except httpx.HTTPError:
                break
            assert r.status_code == 202, r.text
            sent += 1
    return sent


async def settle(dsn: str, timeout: float = 90) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout
        while True:
            open_payments = await conn.fetchval(
                "SELECT count(*) FROM payments WHERE status IN ('PENDING_AUTH', 'AUTHORIZED')"
            )
            unsent = await outbox_backlog(conn)
            unfolded = await conn.fetchval(
                "SELECT coalesce(max(tx), '0') >= (SELECT folded_tx FROM balance_horizon) FROM journal_entries"
            )
            if not (open_payments or unsent or unfolded):
                return
            assert time.monotonic() < deadline, f"not settled: {open_payments} payments open, {unsent} events unsent"
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


def reconcile_cli(service: ServiceProcess, *extra: str) -> tuple[int, dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "marketplace_pay.entrypoints.cli", "reconcile", "--json", *extra],
        env=service.env(),
        capture_output=True,
        timeout=120,
    )
    assert done.stdout, done.stderr.decode()[-3000:]
    return done.returncode, json.loads(done.stdout)


async def assert_books_balance(service: ServiceProcess, dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        sums = {
            r["account_code"]: r["total"]
            for r in await conn.fetch(
                "SELECT account_code, sum(signed_amount_minor) AS total FROM postings GROUP BY account_code"
            )
        }
        orders = await conn.fetch("SELECT status, amount_minor FROM payment_orders")
        journals = dict(await conn.fetch("SELECT journal_type, count(*) FROM journal_entries GROUP BY journal_type"))
        payments = await conn.fetchval("SELECT count(*) FROM payments WHERE status <> 'DECLINED'")
    finally:
        await conn.close()
    captured = [o for o in orders if o["status"] == "CAPTURED"]
    assert journals["AUTH_HOLD"] == payments  # one each: none doubled, none missing
    assert journals["CAPTURE"] == len(captured)
    assert journals.get("AUTH_RELEASE", 0) == sum(1 for o in orders if o["status"] == "CAPTURE_FAILED")
    assert journals["COMMISSION_FEE"] == sum(1 for o in captured if (o["amount_minor"] * 500 + 5000) // 10000 > 0)
    finance = auth(service.settings.jwt.secret or "", "FINANCE")
    with httpx.Client(timeout=10) as client:
        for code, total in sums.items():
            r = client.get(f"{service.url}/api/v1/accounts/{code}/balance", headers=finance)
            assert r.json()["balance"]["quantity"] == total, code


@pytest.mark.parametrize("point", ["balances.fold.before_commit", "balances.fold.after_commit"])
async def test_killed_in_the_middle_of_the_snapshot_merge(
    point: str, fresh_database: str, settings_for: Any, processes: list[ServiceProcess]
) -> None:
    service = ServiceProcess(fast(settings_for, fresh_database))
    processes.append(service)
    service.crash(f"{point}=kill@4", lambda s: traffic(s, 60, seed=1))
    service.start()
    traffic(service, 20, seed=2)
    await settle(fresh_database)
    code, report = reconcile_cli(service)
    assert code == 0, report
    assert report["ok"] and report["differences"] == []
    assert all(t["debits"] == t["credits"] for t in report["trialBalance"])
    await assert_books_balance(service, fresh_database)


async def test_redis_flushed_mid_run_then_reconcile_repair(
    fresh_database: str, settings_for: Any, processes: list[ServiceProcess]
) -> None:
    # folds are rare here, so most of the balance lives in the Redis overlay when it is lost
    settings = fast(settings_for, fresh_database, balance_fold_ms=600_000)
    service = ServiceProcess(settings)
    processes.append(service)
    service.start()
    traffic(service, 40, seed=3)
    client = aioredis.Redis.from_url(settings.services.redis_url or "")
    try:
        keys = [k async for k in client.scan_iter(match=f"{settings.redis.prefix}*")]
        assert any(b"bal:o:" in k for k in keys)
        await client.delete(*keys)  # Redis lost everything, mid-run
    finally:
        await client.aclose()
    traffic(service, 40, seed=4)
    conn = await asyncpg.connect(fresh_database)
    try:
        deadline = time.monotonic() + 90
        while await conn.fetchval(
            "SELECT count(*) FROM payments WHERE status IN ('PENDING_AUTH', 'AUTHORIZED')"
        ) or await outbox_backlog(conn):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)
    finally:
        await conn.close()
    code, _before = reconcile_cli(service)  # folds first; the overlay lost entries above the horizon
    code, report = reconcile_cli(service, "--repair")
    assert code == 0, report
    assert report["repaired"] and report["ok"]
    code, after = reconcile_cli(service)
    assert code == 0 and after["ok"]
    await assert_books_balance(service, fresh_database)
