"""The retry queue (fake vs Redis) and the payment-order repository (fake vs Postgres)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis

from marketplace_pay.infra.db import create_pool
from marketplace_pay.payments.adapters.postgres import PgPaymentsUnitOfWork
from marketplace_pay.payments.adapters.redis import RedisRetryQueue
from marketplace_pay.payments.application.ports import StaleOrder
from marketplace_pay.payments.domain.payment import Payment, PaymentLine
from marketplace_pay.payments.domain.payment_order import CaptureResult, PaymentOrder, PaymentOrderStatus
from marketplace_pay.shared.clock import FixedClock
from marketplace_pay.shared.money import Currency, Money
from tests.fakes import FakeDatabase, FakeIds, FakePaymentsUnitOfWork, FakeRetryQueue

IDS = FakeIds()
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["fake", "redis"])
async def queue(request: pytest.FixtureRequest, redis_url: str, redis_prefix: str) -> AsyncIterator[Any]:
    if request.param == "fake":
        yield FakeRetryQueue()
        return
    client = aioredis.Redis.from_url(redis_url)
    q = RedisRetryQueue(client, prefix=f"{redis_prefix}{secrets.token_hex(4)}:")
    yield q
    await client.delete(q.queue_key, q.inflight_key)
    await client.aclose()


async def test_only_due_items_pop_in_due_order(queue: Any) -> None:
    await queue.schedule([(1, 1, 1000), (2, 1, 3000), (3, 2, 2000)])
    assert await queue.pop_due(now_ms=2500, limit=10) == [(1, 1), (3, 2)]
    assert await queue.sizes() == (1, 2)
    assert await queue.pop_due(now_ms=2500, limit=10) == []


async def test_scheduling_an_item_twice_keeps_one(queue: Any) -> None:
    await queue.schedule([(1, 1, 1000)])
    await queue.schedule([(1, 1, 500), (1, 2, 500)])
    assert sorted(await queue.pop_due(now_ms=9999, limit=10)) == [(1, 1), (1, 2)]


async def test_ack_and_reclaim(queue: Any) -> None:
    await queue.schedule([(1, 1, 0), (2, 1, 0)])
    popped = await queue.pop_due(now_ms=1000, limit=10)
    await queue.ack([popped[0]])
    assert await queue.sizes() == (0, 1)
    assert await queue.reclaim(now_ms=1500, older_than_ms=1000) == 0  # in flight 500 ms only
    assert await queue.reclaim(now_ms=2500, older_than_ms=1000) == 1
    assert await queue.pop_due(now_ms=2500, limit=10) == [popped[1]]


async def test_concurrent_pops_never_hand_out_an_item_twice(queue: Any) -> None:
    await queue.schedule([(i, 1, 0) for i in range(300)])
    batches = await asyncio.gather(*(queue.pop_due(now_ms=1, limit=7) for _ in range(60)))
    items = [item for batch in batches for item in batch]
    assert len(items) == len(set(items)) == 300


# -- payment orders -------------------------------------------------------------------------


@pytest.fixture(params=["fake", "postgres"])
async def uow(request: pytest.FixtureRequest, fresh_database: str) -> AsyncIterator[Callable[[], Any]]:
    if request.param == "fake":
        db = FakeDatabase(FixedClock(T0))
        yield lambda: FakePaymentsUnitOfWork(db)
        return
    pool = await create_pool(fresh_database, min_size=1, max_size=4, application_name="contract")
    yield lambda: PgPaymentsUnitOfWork(pool)
    await pool.close()


async def authorized_payment(uow: Callable[[], Any]) -> tuple[Payment, list[PaymentOrder]]:
    p = Payment.create(
        payment_id=IDS.next_id(0),
        buyer_id="b",
        order_id=secrets.token_hex(4),
        total=Money(3000, Currency.EUR),
        lines=[PaymentLine(IDS.next_id(3), "SELLER-111", Money(1000, Currency.EUR)), PaymentLine(IDS.next_id(4), "SELLER-222", Money(2000, Currency.EUR))],
        now=T0,
    )
    async with uow() as tx:
        await tx.payments.add(p, idempotency_key=None, trace_id="t" * 32, traceparent="tp")
        await tx.commit()
    orders = [
        PaymentOrder.create(payment_order_id=line.payment_order_id, payment_id=p.payment_id, seller_id=line.seller_id, amount=line.amount, now=T0)
        for line in p.lines
    ]
    return p, orders


async def test_orders_are_inserted_once(uow: Callable[[], Any]) -> None:
    _, orders = await authorized_payment(uow)
    async with uow() as tx:
        assert await tx.orders.add_all([(o, "t" * 32, "tp") for o in orders]) == {o.payment_order_id for o in orders}
        assert await tx.orders.add_all([(o, "x", None) for o in orders]) == set()
        await tx.commit()
    async with uow() as tx:
        got = await tx.orders.get_many([o.payment_order_id for o in orders])
        traces = await tx.orders.traces([orders[0].payment_order_id])
    assert {o.payment_order_id: (o.status, o.retry_count, o.amount) for o in got.values()} == {
        o.payment_order_id: (PaymentOrderStatus.INITIATED_PENDING, 0, o.amount) for o in orders
    }
    assert traces == {orders[0].payment_order_id: ("t" * 32, "tp")}


async def test_guarded_save_refuses_a_regression_and_keeps_updated_at_monotonic(uow: Callable[[], Any]) -> None:
    _, orders = await authorized_payment(uow)
    o = orders[0]
    async with uow() as tx:
        await tx.orders.add_all([(o, "t", None)])
        await tx.commit()
    async with uow() as tx:
        current = (await tx.orders.get_many([o.payment_order_id], for_update=True))[o.payment_order_id]
        before = (current.status, current.retry_count)
        current.request_capture(T0 + timedelta(seconds=10))
        await tx.orders.save_all([(current, before)])
        await tx.commit()
    # a late writer that still thinks the order is INITIATED_PENDING is refused
    stale = (await _get(uow, o.payment_order_id))
    stale.status, stale.retry_count = PaymentOrderStatus.INITIATED_PENDING, 0
    stale.request_capture(T0 + timedelta(seconds=1))
    with pytest.raises(StaleOrder):
        async with uow() as tx:
            await tx.orders.save_all([(stale, (PaymentOrderStatus.INITIATED_PENDING, 0))])
            await tx.commit()
    final = await _get(uow, o.payment_order_id)
    assert (final.status, final.updated_at) == (PaymentOrderStatus.CAPTURE_REQUESTED, T0 + timedelta(seconds=10))


async def _get(uow: Callable[[], Any], order_id: int) -> PaymentOrder:
    async with uow() as tx:
        return (await tx.orders.get_many([order_id]))[order_id]


async def test_overdue_retries_until_dispatched(uow: Callable[[], Any]) -> None:
    _, orders = await authorized_payment(uow)
    o = orders[1]
    async with uow() as tx:
        await tx.orders.add_all([(o, "t", None)])
        await tx.commit()
    async with uow() as tx:
        current = (await tx.orders.get_many([o.payment_order_id], for_update=True))[o.payment_order_id]
        current.request_capture(T0)
        current.apply_result(CaptureResult.PENDING_CAPTURE, attempt=0, now=T0, max_retries=5, retry_delay_ms=1500)
        await tx.orders.save_all([(current, (PaymentOrderStatus.INITIATED_PENDING, 0))])
        await tx.commit()
    due_ms = int((T0 + timedelta(milliseconds=1500)).timestamp() * 1000)
    async with uow() as tx:
        assert await tx.orders.overdue_retries(before=T0 + timedelta(seconds=1), limit=10) == []
        assert await tx.orders.overdue_retries(before=T0 + timedelta(seconds=2), limit=10) == [(o.payment_order_id, 1, due_ms)]
        await tx.orders.mark_retries_dispatched([o.payment_order_id])
        await tx.commit()
    async with uow() as tx:
        assert await tx.orders.overdue_retries(before=T0 + timedelta(seconds=2), limit=10) == []
