"""The capture pipeline in the running service, against real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter, defaultdict
from typing import Any

import asyncpg
import pytest

from marketplace_pay.payments.adapters.redis import RedisRetryQueue
from marketplace_pay.shared.ids import public_payment_order_id as public
from tests.harness import Service, payment_body, psp_calls, start_service

TERMINAL_PAYMENT = {"CAPTURED", "CAPTURED_PARTIALLY", "CAPTURE_FAILED"}
SELLERS = ["SELLER-111", "SELLER-222", "SELLER-333"]


def fast(settings_for: Any, dsn: str, **overrides: Any) -> Any:
    settings = settings_for(dsn, **({"retry_base_ms": 40, "retry_cap_ms": 300, "retry_poll_ms": 20} | overrides))
    return settings.with_(psp_call_log=settings.process.data_dir / f"psp-{uuid.uuid4().hex[:6]}.jsonl")


async def create_payments(svc: Service, count: int, *, seed: int = 1, amount: Any = None) -> list[str]:
    rng = random.Random(seed)
    bodies = []
    for _ in range(count):
        sellers = rng.sample(SELLERS, rng.randint(1, 3))
        lines = [(s, amount(rng) if amount else rng.randint(100, 50_000)) for s in sellers]
        bodies.append(payment_body(f"BUYER-{uuid.uuid4().hex[:8]}", f"ORDER-{uuid.uuid4().hex[:8]}", lines))
    ids: list[str] = []
    semaphore = asyncio.Semaphore(20)

    async def one(body: dict[str, Any]) -> None:
        async with semaphore:
            r = await svc.pay(body)
            assert r.status_code == 202, r.text
            ids.append(r.json()["paymentId"])

    await asyncio.gather(*(one(b) for b in bodies))
    return ids


async def wait_all_terminal(svc: Service, payment_ids: list[str], *, timeout: float) -> None:
    async def done() -> bool:
        n = await svc.fetchval("SELECT count(*) FROM payments WHERE status = ANY($1::text[])", list(TERMINAL_PAYMENT))
        return n >= len(payment_ids)

    await svc.until(done, timeout=timeout, interval=0.2)


async def test_normal_scenario_every_payment_finishes_and_matches_what_the_psp_saw(
    fresh_database: str, settings_for: Any
) -> None:
    settings = fast(settings_for, fresh_database, psp_scenario="NORMAL")
    async with start_service(settings) as svc:
        ids = await create_payments(svc, 200)
        await wait_all_terminal(svc, ids, timeout=120)
        orders = await svc.fetch(
            "SELECT payment_order_id, payment_id, status, retry_count, amount_minor FROM payment_orders"
        )
        payments = await svc.fetch("SELECT payment_id, status, captured_amount_minor, orders_open FROM payments")
        finalized = await svc.fetch(
            """SELECT msg_key, count(DISTINCT event_id) AS n FROM outbox
               WHERE event_type = 'payment_order_finalized' GROUP BY msg_key"""
        )
        calls = psp_calls(settings.psp.call_log, "capture")

    assert len(payments) == 200 and all(p["status"] in TERMINAL_PAYMENT and p["orders_open"] == 0 for p in payments)
    assert orders and {o["status"] for o in orders} <= {"CAPTURED", "CAPTURE_FAILED"}
    assert len(finalized) == len(orders) and {f["n"] for f in finalized} == {1}

    by_order: dict[str, list[str]] = defaultdict(list)
    for call in calls:
        by_order[call.paymentOrderId or ""].append(call.result)
    assert max(len(v) for v in by_order.values()) <= 6
    captured_by_psp = {o for o, results in by_order.items() if "CAPTURED" in results}
    failed_by_psp = {o for o, results in by_order.items() if "DECLINED" in results or results == ["RETRYABLE"] * 6}
    assert {public(o["payment_order_id"]) for o in orders if o["status"] == "CAPTURED"} == captured_by_psp
    assert {public(o["payment_order_id"]) for o in orders if o["status"] == "CAPTURE_FAILED"} == failed_by_psp
    # each order was sent to the PSP once per attempt, and its retry count says how often it retried
    for o in orders:
        assert len(by_order[public(o["payment_order_id"])]) == o["retry_count"] + 1
    # the roll-up: captured amount = the captured orders; status follows
    captured: Counter[int] = Counter()
    for o in orders:
        if o["status"] == "CAPTURED":
            captured[o["payment_id"]] += o["amount_minor"]
    for p in payments:
        assert p["captured_amount_minor"] == captured[p["payment_id"]]
    statuses = Counter(p["status"] for p in payments)
    assert statuses["CAPTURED"] and statuses["CAPTURE_FAILED"] + statuses["CAPTURED_PARTIALLY"]


async def test_get_payment_shows_each_order_moving(fresh_database: str, settings_for: Any) -> None:
    settings = fast(settings_for, fresh_database, psp_scenario="BEST_PSP_EVER")
    async with start_service(settings) as svc:
        r = await svc.pay(payment_body(f"B-{uuid.uuid4().hex[:6]}", lines=[("SELLER-111", 1013), ("SELLER-222", 2000)]))
        pid = r.json()["paymentId"]
        seen: set[tuple[str, int]] = set()

        async def finished() -> bool:
            body = (await svc.get_payment(pid)).json()
            for o in body["paymentOrders"]:
                if o["status"]:
                    seen.add((o["status"], o["retryCount"]))
            return body["status"] in TERMINAL_PAYMENT

        await svc.until(finished, timeout=30, interval=0.01)
        body = (await svc.get_payment(pid)).json()
    orders = {o["amount"]["quantity"]: o for o in body["paymentOrders"]}
    assert (orders[1013]["status"], orders[1013]["retryCount"]) == ("CAPTURE_FAILED", 5)
    assert (orders[2000]["status"], orders[2000]["retryCount"]) == ("CAPTURED", 0)
    assert body["status"] == "CAPTURED_PARTIALLY" and body["capturedAmount"] == {"quantity": 2000, "currency": "EUR"}
    assert ("PENDING_CAPTURE", 3) in seen  # watched it retry


async def test_the_database_refuses_to_move_a_terminal_order(fresh_database: str, settings_for: Any) -> None:
    settings = fast(settings_for, fresh_database, psp_scenario="BEST_PSP_EVER")
    async with start_service(settings) as svc:
        ids = await create_payments(svc, 1)
        await wait_all_terminal(svc, ids, timeout=20)
        conn: asyncpg.Connection
        async with svc.resources.pool.acquire() as conn:
            order_id = await conn.fetchval("SELECT payment_order_id FROM payment_orders LIMIT 1")
            for sql in (
                "UPDATE payment_orders SET status = 'PENDING_CAPTURE', retry_count = 1 WHERE payment_order_id = $1",
                "UPDATE payment_orders SET status = 'CAPTURE_FAILED' WHERE payment_order_id = $1",
                "UPDATE payment_orders SET retry_count = retry_count + 1 WHERE payment_order_id = $1",
            ):
                with pytest.raises(asyncpg.CheckViolationError):
                    await conn.execute(sql, order_id)


async def test_redis_flushed_with_retries_pending_loses_none(fresh_database: str, settings_for: Any) -> None:
    # amounts ending in 13 retry on every attempt: 6 PSP calls each, then CAPTURE_FAILED
    settings = fast(
        settings_for,
        fresh_database,
        psp_scenario="BEST_PSP_EVER",
        retry_base_ms=400,
        retry_cap_ms=800,
        retry_requeue_after_ms=300,
    )
    async with start_service(settings) as svc:
        ids = await create_payments(svc, 10, amount=lambda rng: rng.randint(1, 90) * 100 + 13)
        retries = RedisRetryQueue(svc.resources.redis, prefix=settings.redis.prefix)

        async def some_waiting() -> bool:
            return (await retries.sizes())[0] >= 5

        await svc.until(some_waiting, timeout=20)
        await svc.resources.redis.delete(retries.queue_key, retries.inflight_key)  # Redis lost them
        await wait_all_terminal(svc, ids, timeout=60)
        orders = await svc.fetch("SELECT status, retry_count FROM payment_orders")
        calls = Counter(c.paymentOrderId for c in psp_calls(settings.psp.call_log, "capture"))
    assert {(o["status"], o["retry_count"]) for o in orders} == {("CAPTURE_FAILED", 5)}
    assert set(calls.values()) == {6}


async def test_two_dispatchers_at_once_publish_each_retry_once(fresh_database: str, settings_for: Any) -> None:
    settings = fast(
        settings_for,
        fresh_database,
        psp_scenario="BEST_PSP_EVER",
        retry_base_ms=300,
        retry_cap_ms=300,
        retry_poll_ms=60_000,
    )
    async with start_service(settings) as svc:
        ids = await create_payments(svc, 10, amount=lambda rng: rng.randint(1, 90) * 100 + 13)
        retries = RedisRetryQueue(svc.resources.redis, prefix=settings.redis.prefix)

        async def all_waiting() -> bool:
            return (await retries.sizes())[0] >= 10

        await svc.until(all_waiting, timeout=20)
        for _ in range(5):  # the job is off (poll 60 s): dispatch by hand, many at once, and again
            await asyncio.sleep(0.35)
            await svc.container.payments.requeue_lost_retries()
            await asyncio.gather(*(svc.container.payments.dispatch_due_retries() for _ in range(4)))
            waiting = await svc.fetch(
                "SELECT payment_order_id, retry_count FROM payment_orders WHERE status = 'PENDING_CAPTURE'"
            )
            await retries.schedule([(w["payment_order_id"], w["retry_count"], 0) for w in waiting])  # duplicates
        for _ in range(20):
            await asyncio.sleep(0.35)
            await asyncio.gather(*(svc.container.payments.dispatch_due_retries() for _ in range(4)))
        await wait_all_terminal(svc, ids, timeout=30)
        commands = await svc.fetch("SELECT event_id FROM outbox WHERE event_type = 'capture_payment_order'")
        orders = await svc.fetchval(
            "SELECT count(*) FROM payment_orders WHERE status = 'CAPTURE_FAILED' AND retry_count = 5"
        )
        calls = Counter(c.key for c in psp_calls(settings.psp.call_log, "capture"))
    assert len(commands) == len({c["event_id"] for c in commands}) == orders * 5  # one command per retry
    assert set(calls.values()) == {1}  # every (order, attempt) reached the PSP once


async def test_an_authorization_dead_lettered_before_its_orders_existed_is_delivered_again(
    fresh_database: str, settings_for: Any
) -> None:
    """The capture handler fails on a PaymentAuthorized (a bug, a poison message) until it is
    dead-lettered: the payment is AUTHORIZED with no order, so no order is stuck for the sweeper
    to find. The sweeper delivers such events again, and the money is captured."""
    settings = fast(
        settings_for,
        fresh_database,
        psp_scenario="BEST_PSP_EVER",
        handler_max_attempts=1,
        sweep_stuck_after_s=1,
        faults="capture.before_orders=raise@1",
    )
    async with start_service(settings) as svc:
        [payment_id] = await create_payments(svc, 1, amount=lambda rng: 1000)

        async def dead_lettered() -> bool:
            return bool(
                await svc.fetchval("SELECT count(*) FROM dead_letters WHERE consumer = 'payments-capture-authorized'")
            )

        await svc.until(dead_lettered, timeout=10)
        await wait_all_terminal(svc, [payment_id], timeout=20)
        orders = await svc.fetch("SELECT status FROM payment_orders")
        replayed = await svc.fetchval("SELECT replayed_at IS NOT NULL FROM dead_letters")
    assert orders and {o["status"] for o in orders} == {"CAPTURED"}
    assert replayed
    captures = Counter(c.paymentOrderId for c in psp_calls(settings.psp.call_log, "capture"))
    assert set(captures.values()) == {1}  # each order captured once
