"""The capture pipeline through its handlers, wired by bootstrap() with fakes: every event the
handlers commit is fed back to the subscribed handlers, like the relay does."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from marketplace_pay.payments.application.ports import CaptureOutcome
from marketplace_pay.payments.domain.payment import PaymentStatus
from marketplace_pay.payments.domain.payment_order import PaymentOrderStatus
from marketplace_pay.shared.envelope import Envelope
from marketplace_pay.shared.money import Money
from tests.world import World

C, D, R = CaptureOutcome.CAPTURED, CaptureOutcome.DECLINED, CaptureOutcome.RETRYABLE


async def test_every_order_is_captured_and_the_payment_rolls_up() -> None:
    w = World()
    pid = await w.pay(1000, 2000)
    await w.settle()
    assert {o.status for o in w.orders().values()} == {PaymentOrderStatus.CAPTURED}
    p = w.payment(pid)
    assert (p.status, p.captured.amount_minor, p.orders_open) == (PaymentStatus.CAPTURED, 3000, 0)
    assert len(w.psp.calls) == 2
    finalized = w.events("payment_order_finalized")
    assert sorted(e.data.status for e in finalized) == ["CAPTURED", "CAPTURED"]
    # lineage: one trace, each event's parent is the event that caused it
    assert {e.trace_id for e in w.db.state.outbox} == {"f" * 32}
    by_id = {e.event_id: e for e in w.db.state.outbox}
    for e in finalized:
        chain = [e.event_type]
        while e.parent_event_id != e.event_id:
            e = by_id[e.parent_event_id]
            chain.append(e.event_type)
        assert chain == [
            "payment_order_finalized",
            "payment_order_psp_result_updated",
            "payment_order_capture_requested",
            "payment_order_created",
            "payment_authorized",
        ]


async def test_capture_after_retries_keeps_each_attempt_once() -> None:
    w = World({1000: [R, R, C]})
    pid = await w.pay(1000)
    await w.settle()
    [order] = w.orders().values()
    assert (order.status, order.retry_count) == (PaymentOrderStatus.CAPTURED, 2)
    assert [k for k, _ in w.psp.calls] == [f"{order.payment_order_id}:{n}" for n in range(3)]
    assert w.payment(pid).status is PaymentStatus.CAPTURED
    commands = w.events("payment_order_capture_requested")
    assert [e.data.attempt for e in commands] == [0, 1, 2]
    # a retry's parent is the result that asked for it
    assert commands[1].parent_event_id == f"{order.public_id}:payment_order_psp_result_updated:PENDING_CAPTURE:0"


async def test_retries_are_exhausted_after_six_psp_calls() -> None:
    w = World({1000: [R]})
    pid = await w.pay(1000, 2000)
    await w.settle()
    orders = {o.amount.amount_minor: o for o in w.orders().values()}
    assert (orders[1000].status, orders[1000].retry_count) == (PaymentOrderStatus.CAPTURE_FAILED, 5)
    assert orders[2000].status is PaymentOrderStatus.CAPTURED
    calls = Counter(k.split(":")[0] for k, _ in w.psp.calls)
    assert calls[str(orders[1000].payment_order_id)] == 6
    p = w.payment(pid)
    assert (p.status, p.captured.amount_minor) == (PaymentStatus.CAPTURED_PARTIALLY, 2000)


async def test_a_declined_capture_is_final_at_once() -> None:
    w = World({1000: [D], 2000: [D]})
    pid = await w.pay(1000, 2000)
    await w.settle()
    assert {o.status for o in w.orders().values()} == {PaymentOrderStatus.CAPTURE_FAILED}
    assert len(w.psp.calls) == 2
    assert (w.payment(pid).status, w.payment(pid).captured.amount_minor) == (PaymentStatus.CAPTURE_FAILED, 0)


async def test_every_event_delivered_twice_changes_nothing() -> None:
    w = World({1000: [R, C], 2000: [R, R, D]}, duplicate=True)
    pid = await w.pay(1000, 2000, 3000)
    await w.settle()
    calls = Counter(k for k, _ in w.psp.calls)
    assert set(calls.values()) == {1}  # each (order, attempt) went to the PSP once
    assert len(w.events("payment_order_finalized")) == 3
    assert w.payment(pid).status is PaymentStatus.CAPTURED_PARTIALLY
    assert w.payment(pid).captured.amount_minor == 4000


async def test_results_out_of_order_and_late_are_ignored() -> None:
    w = World({1000: [R, C]})
    await w.pay(1000)
    await w.settle()
    [order] = w.orders().values()
    assert (order.status, order.retry_count) == (PaymentOrderStatus.CAPTURED, 1)
    # Replay the whole history backwards, under new delivery ids (as a broker replay would).
    [apply] = w.handlers["payment_order_psp_result_updated"]
    [capture] = w.handlers["payment_order_capture_requested"]
    calls = len(w.psp.calls)
    for env in reversed(list({e.event_id: e for e in w.delivered}.values())):
        stale = Envelope(**{**{f: getattr(env, f) for f in env.__struct_fields__}, "event_id": env.event_id + ":replayed"})
        if env.event_type == "payment_order_psp_result_updated":
            await apply([stale])
        elif env.event_type == "payment_order_capture_requested":
            await capture([stale])
    [after] = w.orders().values()
    assert (after.status, after.retry_count) == (PaymentOrderStatus.CAPTURED, 1)
    assert len(w.psp.calls) == calls  # stale commands never reach the PSP
    assert len(w.events("payment_order_finalized")) == 1


async def test_a_psp_timeout_is_retryable_not_dropped() -> None:
    w = World()

    async def slow(*, idempotency_key: str, amount: Money) -> CaptureOutcome:
        w.psp.calls.append((idempotency_key, C))
        if idempotency_key.endswith(":0"):
            await asyncio.sleep(1)  # longer than the 50 ms budget
        return C

    w.psp.capture = slow  # type: ignore[method-assign]
    await w.pay(1000)
    await w.settle()
    [order] = w.orders().values()
    assert (order.status, order.retry_count) == (PaymentOrderStatus.CAPTURED, 1)
    [first] = [e for e in w.events("payment_order_psp_result_updated") if e.data.attempt == 0]
    assert (first.data.psp_status, first.data.reason) == ("PENDING_CAPTURE", "PSP_TIMEOUT")


async def test_retries_lost_by_redis_are_requeued_from_the_database() -> None:
    w = World({1000: [R, C]})
    await w.pay(1000)
    await w.drain()
    assert await w.retries.sizes() == (1, 0)
    w.retries.waiting.clear()  # Redis restarted empty
    w.clock.advance(ms=120_000)
    assert await w.container.dispatch_due_retries() == 0
    assert await w.container.requeue_lost_retries() == 1
    await w.settle()
    [order] = w.orders().values()
    assert order.status is PaymentOrderStatus.CAPTURED


@pytest.mark.parametrize("dispatchers", [2, 5])
async def test_concurrent_dispatchers_publish_each_retry_once(dispatchers: int) -> None:
    w = World({1000: [R, C], 2000: [R, C]})
    await w.pay(1000, 2000)
    await w.drain()
    w.clock.advance(ms=60_000)
    await w.retries.schedule([(po, a, 0) for (po, a) in list(w.retries.waiting)])  # scheduled twice
    await w.container.requeue_lost_retries()
    counts = await asyncio.gather(*(w.container.dispatch_due_retries() for _ in range(dispatchers)))
    assert sum(counts) == 2
    await w.settle()
    assert Counter(e.event_id for e in w.events("payment_order_capture_requested")).most_common(1)[0][1] == 1
    assert {o.status for o in w.orders().values()} == {PaymentOrderStatus.CAPTURED}
