"""Payouts in `marketplace-pay serve`, killed (SIGKILL) between a payout's creation and the bank's
answer, and restarted: every payout ends PAID or FAILED, its answer applied once, and the database
agrees with the bank's own record (the call log) payout by payout — money sent at most once,
returned only when it was not sent."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from tests.harness import ServiceProcess, auth, outbox_backlog, payment_body, psp_calls, rows_of

SELLERS = ["SELLER-111", "SELLER-222", "SELLER-333"]
BANK_ENV = {"MP_PAYOUT_BANK_TIMEOUT_MS": "300"}


def fund(service: ServiceProcess, amounts: dict[str, int] | None = None) -> None:
    headers = auth(service.settings.jwt.secret or "", "payment:write")
    with httpx.Client(timeout=10) as client:
        for seller, amount in (amounts or dict.fromkeys(SELLERS, 10000)).items():
            r = client.post(
                f"{service.url}/api/v1/payments",
                json=payment_body(f"B-{uuid.uuid4().hex[:8]}", "O", [(seller, amount)]),
                headers=headers,
            )
            assert r.status_code == 202, r.text


async def until(dsn: str, query: str, expected: Any, *, timeout: float = 60) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout
        while (got := await conn.fetchval(query)) != expected:
            assert time.monotonic() < deadline, f"{query}: {got!r}, expected {expected!r}"
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


def pay_out(service: ServiceProcess, amounts: dict[str, int]) -> int:
    """POST one payout per seller; returns how many were answered before the process died."""
    headers = auth(service.settings.jwt.secret or "", "FINANCE")
    answered = 0
    with httpx.Client(timeout=10) as client:
        for seller, amount in amounts.items():
            try:
                r = client.post(
                    f"{service.url}/api/v1/sellers/{seller}/payouts",
                    json={"amount": {"quantity": amount, "currency": "EUR"}},
                    headers=headers,
                )
            except httpx.HTTPError:
                break
            assert r.status_code == 202, r.text
            answered += 1
    return answered


async def assert_consistent(dsn: str, log: Path) -> dict[str, Any]:
    """The database against the bank's own record (its call log), payout by payout."""
    conn = await asyncpg.connect(dsn)
    try:
        payouts = await conn.fetch("SELECT payout_id, seller_id, amount_minor, status FROM payouts")
        journals = Counter(
            (r["journal_type"], r["journal_id"].split(":", 1)[1])
            for r in await conn.fetch(
                "SELECT journal_type, journal_id FROM journal_entries WHERE journal_type LIKE 'PAYOUT%'"
            )
        )
        finals = Counter(
            r["event_id"]
            for r in await conn.fetch(
                "SELECT event_id FROM outbox WHERE event_type IN ('payout_paid', 'payout_failed')"
            )
        )
        transit = await conn.fetchval(
            "SELECT coalesce(sum(signed_amount_minor), 0) FROM postings WHERE account_code = 'PAYOUTS_IN_TRANSIT.GLOBAL.EUR'"
        )
        trial = await conn.fetch(
            """SELECT currency, sum(amount_minor) FILTER (WHERE direction = 'DEBIT') AS d,
                      sum(amount_minor) FILTER (WHERE direction = 'CREDIT') AS c FROM postings GROUP BY currency"""
        )
    finally:
        await conn.close()
    from marketplace_pay.shared.ids import public_payout_id

    assert payouts and all(p["status"] in ("PAID", "FAILED") for p in payouts)
    assert transit == 0 and all(t["d"] == t["c"] for t in trial)
    did: dict[str, set[str]] = defaultdict(set)
    asked: Counter[str] = Counter()
    paid_keys: dict[str, set[str]] = defaultdict(set)
    for call in psp_calls(log):
        if call.op not in ("payout", "payout_status"):
            continue
        did[call.key].add(call.result)
        asked[call.payoutId or ""] += 1
        if call.result == "PAID":
            paid_keys[call.payoutId or ""].add(call.key)
    assert all(len(results) == 1 for results in did.values())  # one outcome per key, however often asked
    for p in payouts:
        public, internal = public_payout_id(p["payout_id"]), str(p["payout_id"])
        assert len(paid_keys[public]) == (1 if p["status"] == "PAID" else 0), (public, p["status"])  # sent once
        assert journals[("PAYOUT", internal)] == 1
        assert journals[("PAYOUT_PAID", internal)] == (p["status"] == "PAID")
        assert journals[("PAYOUT_RETURNED", internal)] == (p["status"] == "FAILED")
        suffix = "paid" if p["status"] == "PAID" else "failed"
        assert finals[f"{public}:{suffix}"] == 1
    return {"payouts": payouts, "asked": asked}


async def test_killed_between_the_bank_call_and_its_answer_being_written(
    fresh_database: str, settings_for: Any, tmp_path: Path, processes: list[ServiceProcess]
) -> None:
    log = tmp_path / "calls.jsonl"
    settings = settings_for(fresh_database, psp_call_log=log, retry_base_ms=50, retry_cap_ms=200)
    service = ServiceProcess(settings, extra_env=BANK_ENV)
    processes.append(service)
    service.start()
    # balances after 5 % commission: 500; 1097 (the bank's first answer never arrives in time, it
    # pays all the same); 1299 (refused: the money comes back)
    fund(service, {"SELLER-111": 526, "SELLER-222": 1155, "SELLER-333": 1367})
    await until(fresh_database, "SELECT count(*) FROM journal_entries WHERE journal_type = 'CAPTURE'", 3)
    assert service.terminate() == 0
    run = cli(service, "payouts", "run", "--json")  # the payouts exist before the service is back
    assert run.returncode == 0 and len(json.loads(run.stdout)["payouts"]) == 3, run.stderr
    service.crash("payout.after_bank=kill", lambda s: None)  # their first bank calls made, not written
    service.start()
    await until(fresh_database, "SELECT count(*) FROM payouts WHERE status = 'PENDING'", 0)
    outcome = await assert_consistent(fresh_database, log)
    assert sorted((p["seller_id"], p["status"]) for p in outcome["payouts"]) == [
        ("SELLER-111", "PAID"),
        ("SELLER-222", "PAID"),
        ("SELLER-333", "FAILED"),
    ]
    assert sum(outcome["asked"].values()) > len(outcome["payouts"])  # interrupted calls asked again
    balances = await balances_of(fresh_database)
    assert balances["MERCHANT_PAYABLE.SELLER-111.EUR"] == 0
    assert balances["MERCHANT_PAYABLE.SELLER-222.EUR"] == 0
    assert balances["MERCHANT_PAYABLE.SELLER-333.EUR"] == 1299  # returned
    assert balances["PLATFORM_CASH.GLOBAL.EUR"] == -(500 + 1097)


async def balances_of(dsn: str) -> dict[str, int]:
    rows = await rows_of(dsn, "SELECT account_code, sum(signed_amount_minor) AS b FROM postings GROUP BY account_code")
    return {r["account_code"]: r["b"] for r in rows}


def cli(service: ServiceProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = service.env() | {"MP_PAYOUT_MINIMUM_MINOR": "100"}
    return subprocess.run(
        [sys.executable, "-m", "marketplace_pay.entrypoints.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_killed_after_the_payout_committed_before_the_answer_then_everything_delivered_again(
    fresh_database: str, settings_for: Any, tmp_path: Path, processes: list[ServiceProcess]
) -> None:
    log = tmp_path / "calls.jsonl"
    settings = settings_for(fresh_database, psp_call_log=log, retry_base_ms=50, retry_cap_ms=200)
    service = ServiceProcess(settings, extra_env=BANK_ENV)
    processes.append(service)
    service.start()
    fund(service)
    await until(fresh_database, "SELECT count(*) FROM journal_entries WHERE journal_type = 'CAPTURE'", 3)
    assert service.terminate() == 0
    answered = []
    service.crash(
        "payout.after_create=kill@2",
        lambda s: answered.append(pay_out(s, {"SELLER-111": 700, "SELLER-222": 800, "SELLER-333": 900})),
    )
    assert answered == [1]  # the second payout committed; its answer never left
    service.start()
    await until(fresh_database, "SELECT count(*) FROM payouts WHERE status = 'PAID'", 2)
    before = await assert_consistent(fresh_database, log)

    # Deliver every event ever published a second time, to every handler.
    assert service.terminate() == 0
    conn = await asyncpg.connect(fresh_database)
    try:
        await conn.execute("UPDATE outbox_cursors SET tx = '0', id = 0")
        service.start()
        deadline = time.monotonic() + 30
        while await outbox_backlog(conn):
            assert time.monotonic() < deadline, "replay not delivered"
            await asyncio.sleep(0.1)
    finally:
        await conn.close()
    after = await assert_consistent(fresh_database, log)
    assert after["asked"] == before["asked"]  # not one more bank call
    assert [tuple(p) for p in after["payouts"]] == [tuple(p) for p in before["payouts"]]
