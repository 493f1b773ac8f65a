"""Refunds in `marketplace-pay serve`, killed (SIGKILL) between the PSP's refund and its answer
being written, and restarted; then every event ever published delivered again. Every refund ends
SUCCEEDED or FAILED, the database agrees with the PSP's own record (the call log) refund by
refund — the shopper refunded at most once, a refund FAILED only when the PSP refunded nothing —
and the ledger holds each refund's journals once."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from tests.e2e.test_payout_process import balances_of, until
from tests.harness import ServiceProcess, auth, outbox_backlog, payment_body, psp_calls

PSP_ENV = {"MP_PSP_CAPTURE_TIMEOUT_MS": "300"}


def pay(service: ServiceProcess, lines: list[tuple[str, int]]) -> tuple[str, list[str]]:
    headers = auth(service.settings.jwt.secret or "", "payment:write", "payment:read")
    with httpx.Client(timeout=10) as client:
        r = client.post(
            f"{service.url}/api/v1/payments",
            json=payment_body(f"B-{uuid.uuid4().hex[:8]}", "O", lines),
            headers=headers,
        )
        assert r.status_code == 202, r.text
        body = r.json()
    return body["paymentId"], [o["paymentOrderId"] for o in body["paymentOrders"]]


def refund_all(service: ServiceProcess, payment_id: str, refunds: list[tuple[str, int]]) -> int:
    """POST the refunds; returns how many were answered before the process died."""
    headers = auth(service.settings.jwt.secret or "", "payment:write")
    answered = 0
    with httpx.Client(timeout=10) as client:
        for order_id, amount in refunds:
            try:
                r = client.post(
                    f"{service.url}/api/v1/payments/{payment_id}/refunds",
                    json={"paymentOrderId": order_id, "amount": {"quantity": amount, "currency": "EUR"}},
                    headers=headers,
                )
            except httpx.HTTPError:
                break
            assert r.status_code == 202, r.text
            answered += 1
    return answered


async def assert_consistent(dsn: str, log: Path) -> dict[str, Any]:
    """The database against the PSP's own record, refund by refund."""
    from marketplace_pay.shared.ids import public_refund_id

    conn = await asyncpg.connect(dsn)
    try:
        refunds = await conn.fetch("SELECT refund_id, payment_order_id, amount_minor, status FROM refunds")
        journals = Counter(
            (r["journal_type"], r["journal_id"].split(":", 1)[1])
            for r in await conn.fetch(
                "SELECT journal_type, journal_id FROM journal_entries WHERE journal_type LIKE '%REFUND'"
            )
        )
        finals = Counter(
            r["event_id"]
            for r in await conn.fetch(
                "SELECT event_id FROM outbox WHERE event_type IN ('refund_succeeded', 'refund_failed')"
            )
        )
        orders = {
            r["payment_order_id"]: r
            for r in await conn.fetch(
                "SELECT payment_order_id, refunded_amount_minor, refund_reserved_minor FROM payment_orders"
            )
        }
    finally:
        await conn.close()
    assert refunds and all(r["status"] in ("SUCCEEDED", "FAILED") for r in refunds)
    did: dict[str, set[str]] = defaultdict(set)
    asked: Counter[str] = Counter()
    refunded_keys: dict[str, set[str]] = defaultdict(set)
    for call in psp_calls(log):
        if call.op not in ("refund", "refund_status"):
            continue
        did[call.key].add(call.result)
        asked[call.refundId or ""] += 1
        if call.result == "REFUNDED":
            refunded_keys[call.refundId or ""].add(call.key)
    assert all(len(results) == 1 for results in did.values())  # one outcome per key, however often asked
    succeeded: Counter[int] = Counter()
    for r in refunds:
        public, internal = public_refund_id(r["refund_id"]), str(r["refund_id"])
        assert len(refunded_keys[public]) == (1 if r["status"] == "SUCCEEDED" else 0), (public, r["status"])
        assert journals[("REFUND", internal)] == (r["status"] == "SUCCEEDED")
        suffix = "succeeded" if r["status"] == "SUCCEEDED" else "failed"
        assert finals[f"{public}:{suffix}"] == 1
        if r["status"] == "SUCCEEDED":
            succeeded[r["payment_order_id"]] += r["amount_minor"]
    for order_id, minor in succeeded.items():
        assert (orders[order_id]["refunded_amount_minor"], orders[order_id]["refund_reserved_minor"]) == (minor, 0)
    return {"refunds": refunds, "asked": asked}


async def test_killed_between_the_psp_refund_and_its_answer_then_everything_delivered_again(
    fresh_database: str, settings_for: Any, tmp_path: Path, processes: list[ServiceProcess]
) -> None:
    log = tmp_path / "calls.jsonl"
    settings = settings_for(fresh_database, psp_call_log=log, retry_base_ms=50, retry_cap_ms=200)
    service = ServiceProcess(settings, extra_env=PSP_ENV)
    processes.append(service)
    service.start()
    payment_id, orders = pay(service, [("SELLER-111", 1000), ("SELLER-222", 2000), ("SELLER-333", 3000)])
    await until(fresh_database, "SELECT count(*) FROM journal_entries WHERE journal_type = 'CAPTURE'", 3)
    assert service.terminate() == 0
    # 400: refunded, its answer lost with the process; 2000: everything (the whole fee back); 177: declined
    answered: list[int] = []
    service.crash("refund.after_psp=kill", lambda s: answered.append(refund_all(s, payment_id, [(orders[0], 400)])))
    assert answered == [1]
    service.start()
    assert refund_all(service, payment_id, [(orders[1], 2000), (orders[2], 177)]) == 2
    await until(fresh_database, "SELECT count(*) FROM refunds WHERE status = 'PENDING'", 0)
    await until(fresh_database, "SELECT count(*) FROM journal_entries WHERE journal_type = 'REFUND'", 2)
    before = await assert_consistent(fresh_database, log)
    assert sorted((r["amount_minor"], r["status"]) for r in before["refunds"]) == [
        (177, "FAILED"),
        (400, "SUCCEEDED"),
        (2000, "SUCCEEDED"),
    ]
    assert sum(before["asked"].values()) > len(before["refunds"])  # the interrupted calls were asked again

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
        status = await conn.fetchval("SELECT status FROM payments")
    finally:
        await conn.close()
    after = await assert_consistent(fresh_database, log)
    assert after["asked"] == before["asked"]  # not one more PSP call
    assert [tuple(r) for r in after["refunds"]] == [tuple(r) for r in before["refunds"]]
    assert status == "PARTIALLY_REFUNDED"
    balances = await balances_of(fresh_database)
    assert balances["MERCHANT_PAYABLE.SELLER-111.EUR"] == 1000 - 50 - 400 + 20
    assert balances["MERCHANT_PAYABLE.SELLER-222.EUR"] == 0  # all refunded, the whole fee back
    assert balances["MERCHANT_PAYABLE.SELLER-333.EUR"] == 3000 - 150
    assert balances["PSP_RECEIVABLES.GLOBAL.EUR"] == 6000 - 2400
    assert balances["PLATFORM_COMMISSION_REVENUE.GLOBAL.EUR"] == 300 - 20 - 100
