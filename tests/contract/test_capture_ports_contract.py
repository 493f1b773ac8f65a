"""The retry queue (fake vs Redis) and the capture store (fake vs Postgres)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis

from marketplace_pay.infra.db import create_pool
from marketplace_pay.payments.adapters.pg_capture import PgCaptureStore, PgRetryUnitOfWork
from marketplace_pay.payments.adapters.pg_payments import PgPaymentStore
from marketplace_pay.payments.adapters.redis import RedisRetryQueue
from marketplace_pay.payments.application.capture import order_fields
from marketplace_pay.payments.application.ports import Keyed, NewOrder
from marketplace_pay.payments.domain.events import PaymentOrderFinalized
from marketplace_pay.payments.domain.payment import Payment, PaymentLine, PaymentStatus
from marketplace_pay.payments.domain.payment_order import CaptureResult, PaymentOrder, PaymentOrderStatus
from marketplace_pay.shared.clock import FixedClock
from marketplace_pay.shared.envelope import Envelope, envelope
from marketplace_pay.shared.money import Currency, Money
from tests.fakes import FakeCaptureStore, FakeDatabase, FakeIds, FakePaymentStore, FakeRetryQueue, FakeRetryUnitOfWork

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


@dataclass
class Orders:
    payments: Any
    store: Any
    retry_uow: Callable[[], Any]
    outbox: Callable[[], Any]


@pytest.fixture(params=["fake", "postgres"])
async def orders(request: pytest.FixtureRequest, fresh_database: str) -> AsyncIterator[Orders]:
    if request.param == "fake":
        db = FakeDatabase(FixedClock(T0))

        async def fake_outbox() -> list[str]:
            return [e.event_id for e in db.tables.outbox]

        yield Orders(FakePaymentStore(db), FakeCaptureStore(db), lambda: FakeRetryUnitOfWork(db), fake_outbox)
        return
    pool = await create_pool(fresh_database, min_size=1, max_size=4, application_name="contract")

    async def pg_outbox() -> list[str]:
        return [r["event_id"] for r in await pool.fetch("SELECT event_id FROM outbox ORDER BY tx, id")]

    yield Orders(PgPaymentStore(pool), PgCaptureStore(pool), lambda: PgRetryUnitOfWork(pool), pg_outbox)
    await pool.close()


async def authorized_payment(o: Orders, *amounts: int) -> tuple[Payment, list[NewOrder]]:
    amounts = amounts or (1000, 2000)
    sellers = ["SELLER-111", "SELLER-222", "SELLER-333"]
    p = Payment.create(
        payment_id=IDS.next_id(0),
        buyer_id="b",
        order_id=secrets.token_hex(4),
        total=Money(sum(amounts), Currency.EUR),
        lines=[PaymentLine(IDS.next_id(3), sellers[i], Money(a, Currency.EUR)) for i, a in enumerate(amounts)],
        now=T0,
    )
    await o.payments.add(p, keyed=Keyed("c"), trace_id="t" * 32, traceparent="tp")
    p.authorize(T0)
    assert await o.payments.record_authorization(p, [], None)
    new = []
    for line in p.lines:
        order = PaymentOrder.create(
            payment_order_id=line.payment_order_id,
            payment_id=p.payment_id,
            seller_id=line.seller_id,
            amount=line.amount,
            now=T0,
        )
        order.request_capture(T0)
        new.append(NewOrder(order, "t" * 32, "tp"))
    return p, new


def answered(order: PaymentOrder, result: CaptureResult, *, at: datetime = T0) -> tuple[PaymentOrder, tuple[Any, int]]:
    before = order.state()
    order.apply_result(result, attempt=order.retry_count, now=at, max_retries=5, retry_delay_ms=1500)
    return order, before


def finalized(order: PaymentOrder) -> Envelope[Any]:
    event = PaymentOrderFinalized(**order_fields(order, T0), status=order.status, retry_count=order.retry_count)
    return envelope(event, aggregate_id=str(order.payment_order_id), timestamp=T0, trace_id="t" * 32)


async def test_orders_are_created_once_and_only_waiting_ones_come_back(orders: Orders) -> None:
    _, new = await authorized_payment(orders)
    waiting = await orders.store.open_orders(new)
    assert sorted(o.payment_order_id for o in waiting) == sorted(n.order.payment_order_id for n in new)
    assert {(o.status, o.retry_count, o.psp_key_attempt) for o in waiting} == {
        (PaymentOrderStatus.CAPTURE_REQUESTED, 0, 0)
    }
    again = await orders.store.open_orders(new)  # a repeat (or a crash before attempt 0): still waiting
    assert sorted(o.payment_order_id for o in again) == sorted(o.payment_order_id for o in waiting)
    await orders.store.save_attempts([answered(waiting[0], CaptureResult.UNKNOWN)], [])
    after = await orders.store.open_orders(new)
    assert [o.payment_order_id for o in after] == [waiting[1].payment_order_id]  # the attempted one moved on
    # a batch of new orders and a repeat of old ones: the new are created, the waiting old come back
    _, more = await authorized_payment(orders, 500)
    mixed = await orders.store.open_orders([*more, *new])
    assert sorted(o.payment_order_id for o in mixed) == sorted(
        [more[0].order.payment_order_id, waiting[1].payment_order_id]
    )


async def test_attempts_are_saved_guarded_and_finish_the_payment_with_their_events(orders: Orders) -> None:
    p, new = await authorized_payment(orders, 1000, 2000, 3000)
    a, b, c = sorted(await orders.store.open_orders(new), key=lambda o: o.amount.amount_minor)
    changes = [
        answered(a, CaptureResult.CAPTURED),
        answered(b, CaptureResult.DECLINED),
        answered(c, CaptureResult.RETRYABLE),
    ]
    applied = await orders.store.save_attempts(changes, [finalized(a), finalized(b)])
    assert applied == {a.payment_order_id, b.payment_order_id, c.payment_order_id}
    assert (await orders.payments.get(p.payment_id)).status is PaymentStatus.AUTHORIZED  # c is still open
    # a late writer still working from attempt 0 is refused, and its event is not written
    stale = (await orders.store.orders([c.payment_order_id]))[c.payment_order_id]
    stale.status, stale.retry_count, stale.psp_key_attempt = PaymentOrderStatus.CAPTURE_REQUESTED, 0, 0
    lost = answered(stale, CaptureResult.CAPTURED)
    assert await orders.store.save_attempts([lost], [finalized(lost[0])]) == set()
    # the real attempt 1 ends it: the payment rolls up
    current = (await orders.store.orders([c.payment_order_id]))[c.payment_order_id]
    assert (current.status, current.retry_count, current.psp_key_attempt) == (PaymentOrderStatus.PENDING_CAPTURE, 1, 1)
    done = answered(current, CaptureResult.CAPTURED, at=T0 + timedelta(seconds=9))
    assert await orders.store.save_attempts([done], [finalized(done[0])]) == {c.payment_order_id}
    payment = await orders.payments.get(p.payment_id)
    assert (payment.status, payment.captured.amount_minor, payment.orders_open) == (
        PaymentStatus.CAPTURED_PARTIALLY,
        4000,
        0,
    )
    assert payment.updated_at == T0 + timedelta(seconds=9)
    assert sorted(await orders.outbox()) == sorted(
        f"{o.public_id}:payment_order_finalized:{s}"
        for o, s in [(a, "CAPTURED"), (b, "CAPTURE_FAILED"), (c, "CAPTURED")]
    )


@pytest.mark.parametrize(
    ("results", "status"),
    [
        ([CaptureResult.CAPTURED, CaptureResult.CAPTURED], PaymentStatus.CAPTURED),
        ([CaptureResult.DECLINED, CaptureResult.DECLINED], PaymentStatus.CAPTURE_FAILED),
    ],
)
async def test_the_roll_up_follows_the_domain_rule(
    orders: Orders, results: list[CaptureResult], status: PaymentStatus
) -> None:
    p, new = await authorized_payment(orders)
    waiting = sorted(await orders.store.open_orders(new), key=lambda o: o.amount.amount_minor)
    for order, result in zip(waiting, results, strict=True):  # one batch each, as concurrent retries would
        await orders.store.save_attempts([answered(order, result)], [])
    expected = Payment.create(payment_id=1, buyer_id="b", order_id="o", total=p.total, lines=p.lines, now=T0)
    expected.authorize(T0)
    for order in waiting:
        expected.record_order_outcome(
            captured=order.amount if order.status is PaymentOrderStatus.CAPTURED else None, now=T0
        )
    payment = await orders.payments.get(p.payment_id)
    assert (payment.status, payment.captured, payment.orders_open) == (expected.status, expected.captured, 0)
    assert payment.status is status


async def test_overdue_retries_until_dispatched_and_unknown_outcomes_are_counted(orders: Orders) -> None:
    _, new = await authorized_payment(orders)
    a, b = sorted(await orders.store.open_orders(new), key=lambda o: o.amount.amount_minor)
    await orders.store.save_attempts([answered(a, CaptureResult.UNKNOWN), answered(b, CaptureResult.RETRYABLE)], [])
    assert await orders.store.unknown_outcomes() == 1
    due_ms = int((T0 + timedelta(milliseconds=1500)).timestamp() * 1000)
    assert await orders.store.overdue_retries(before=T0 + timedelta(seconds=1), limit=10) == []
    assert sorted(await orders.store.overdue_retries(before=T0 + timedelta(seconds=2), limit=10)) == sorted(
        [(a.payment_order_id, 1, due_ms), (b.payment_order_id, 1, due_ms)]
    )
    async with orders.retry_uow() as tx:
        locked = await tx.lock_orders([a.payment_order_id])
        assert locked[a.payment_order_id][1:] == ("t" * 32, "tp")
        await tx.mark_dispatched([a.payment_order_id])
        await tx.commit()
    assert await orders.store.overdue_retries(before=T0 + timedelta(seconds=2), limit=10) == [
        (b.payment_order_id, 1, due_ms)
    ]
    # quiet for longer than the schedule allows: a dispatched retry that never ran, and a due one
    # nobody dispatched, are both stuck
    assert [o.payment_order_id for o in await orders.store.stuck_orders(unchanged_since=T0, limit=10)] == []
    stuck = await orders.store.stuck_orders(unchanged_since=T0 + timedelta(minutes=5), limit=10)
    assert sorted(o.payment_order_id for o in stuck) == sorted([a.payment_order_id, b.payment_order_id])
