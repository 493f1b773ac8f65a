"""The capture pipeline through its handlers, wired by bootstrap() with fakes: every event the
handlers commit is fed back to the subscribed handlers, like the relay does."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from marketplace_pay.payments.application.ports import CaptureOutcome
from marketplace_pay.payments.domain.payment import PaymentStatus
from marketplace_pay.payments.domain.payment_order import PaymentOrderStatus
from marketplace_pay.settings import Settings
from marketplace_pay.shared.envelope import Envelope
from marketplace_pay.shared.money import Money
from tests.fakes.payments import Lost
from tests.world import World

C, D, R = CaptureOutcome.CAPTURED, CaptureOutcome.DECLINED, CaptureOutcome.RETRYABLE
S = PaymentOrderStatus


def keys_by_order(w: World) -> dict[str, list[str]]:
    calls: dict[str, list[str]] = {}
    for call in w.psp.calls:
        calls.setdefault(call.key.split(":")[0], []).append(call.key)
    return calls


async def test_every_order_is_captured_and_the_payment_rolls_up() -> None:
    w = World()
    pid = await w.pay(1000, 2000)
    await w.settle()
    assert {o.status for o in w.orders().values()} == {S.CAPTURED}
    p = w.payment(pid)
    assert (p.status, p.captured.amount_minor, p.orders_open) == (PaymentStatus.CAPTURED, 3000, 0)
    assert len(w.psp.calls) == 2
    finalized = w.events("payment_order_finalized")
    assert sorted(e.data.status for e in finalized) == ["CAPTURED", "CAPTURED"]
    # lineage: one trace, each event's parent is the event that caused it
    assert {e.trace_id for e in w.db.tables.outbox} == {"f" * 32}
    by_id = {e.event_id: e for e in w.db.tables.outbox}
    for e in finalized:
        chain = [e.event_type]
        while e.parent_event_id != e.event_id:
            e = by_id[e.parent_event_id]
            chain.append(e.event_type)
        assert chain == ["payment_order_finalized", "payment_authorized"]


async def test_capture_after_retries_uses_a_new_key_only_after_a_definite_answer() -> None:
    w = World({1000: [R, R, C]})
    pid = await w.pay(1000)
    await w.settle()
    [order] = w.orders().values()
    assert (order.status, order.retry_count, order.psp_key_attempt) == (S.CAPTURED, 2, 2)
    assert [c.key for c in w.psp.calls] == [f"{order.public_id}:{n}" for n in range(3)]
    assert w.payment(pid).status is PaymentStatus.CAPTURED
    commands = w.events("capture_payment_order")
    assert [e.data.attempt for e in commands] == [1, 2]


async def test_a_timeout_is_retried_with_the_same_key_and_the_capture_it_made_counts() -> None:
    """The PSP captured, but its answer was lost: the retry asks the same key, learns that it
    was captured, and the order is CAPTURED — not failed, not captured a second time."""
    w = World({1000: [Lost(C), C]})
    pid = await w.pay(1000)
    await w.settle()
    [order] = w.orders().values()
    assert (order.status, order.retry_count, order.psp_key_attempt) == (S.CAPTURED, 1, 0)
    assert [(c.key, c.answered) for c in w.psp.calls] == [
        (f"{order.public_id}:0", False),
        (f"{order.public_id}:0", True),
    ]
    assert set(w.psp.captures_by_key().values()) == {C}  # one key, one capture
    assert w.payment(pid).captured.amount_minor == 1000


async def test_retries_exhausted_on_unanswered_calls_end_with_the_status_of_the_last_key() -> None:
    w = World({1000: [R, Lost(C)]})  # attempt 0: definite no; from then on every answer is lost
    pid = await w.pay(1000)
    w.psp.lose_status_answers = 2  # and the first two status queries too
    await w.settle()
    [order] = w.orders().values()
    assert order.status is S.CAPTURED  # the PSP did capture under key 1: the order says so
    assert order.psp_key_attempt == 1 and not order.psp_outcome_unknown
    ops = [(c.op, c.key.split(":")[1], c.answered) for c in w.psp.calls]
    assert ops[:6] == [("capture", "0", True)] + [("capture", "1", False)] * 5
    assert ops[6:] == [("capture_status", "1", False)] * 2 + [("capture_status", "1", True)]
    assert w.payment(pid).status is PaymentStatus.CAPTURED


async def test_status_saying_nothing_was_captured_fails_the_order() -> None:
    w = World({1000: [Lost(R)]})
    pid = await w.pay(1000)
    await w.settle()
    [order] = w.orders().values()
    assert order.status is S.CAPTURE_FAILED
    assert [c.op for c in w.psp.calls] == ["capture"] * 6 + ["capture_status"]
    assert {c.key for c in w.psp.calls} == {f"{order.public_id}:0"}  # never a second key
    assert w.payment(pid).status is PaymentStatus.CAPTURE_FAILED


async def test_definite_retryable_answers_are_exhausted_after_six_calls() -> None:
    w = World({1000: [R]})
    pid = await w.pay(1000, 2000)
    await w.settle()
    orders = {o.amount.amount_minor: o for o in w.orders().values()}
    assert (orders[1000].status, orders[1000].retry_count) == (S.CAPTURE_FAILED, 5)
    assert orders[2000].status is S.CAPTURED
    assert len(keys_by_order(w)[orders[1000].public_id]) == 6
    p = w.payment(pid)
    assert (p.status, p.captured.amount_minor) == (PaymentStatus.CAPTURED_PARTIALLY, 2000)


async def test_a_declined_capture_is_final_at_once() -> None:
    w = World({1000: [D], 2000: [D]})
    pid = await w.pay(1000, 2000)
    await w.settle()
    assert {o.status for o in w.orders().values()} == {S.CAPTURE_FAILED}
    assert len(w.psp.calls) == 2
    assert (w.payment(pid).status, w.payment(pid).captured.amount_minor) == (PaymentStatus.CAPTURE_FAILED, 0)


async def test_every_event_delivered_twice_changes_nothing() -> None:
    w = World({1000: [R, C], 2000: [R, R, D]}, duplicate=True)
    pid = await w.pay(1000, 2000, 3000)
    await w.settle()
    calls = Counter(c.key for c in w.psp.calls)
    assert set(calls.values()) == {1}  # each (order, attempt) went to the PSP once
    assert len(w.events("payment_order_finalized")) == 3
    assert w.payment(pid).status is PaymentStatus.CAPTURED_PARTIALLY
    assert w.payment(pid).captured.amount_minor == 4000


async def test_commands_out_of_order_and_late_are_ignored() -> None:
    w = World({1000: [R, C]})
    await w.pay(1000)
    await w.settle()
    [order] = w.orders().values()
    assert (order.status, order.retry_count) == (S.CAPTURED, 1)
    # Replay the whole history backwards, under new delivery ids (as a broker replay would).
    calls = len(w.psp.calls)
    for env in reversed(list({e.event_id: e for e in w.delivered}.values())):
        stale = Envelope(
            **{**{f: getattr(env, f) for f in env.__struct_fields__}, "event_id": env.event_id + ":replayed"}
        )
        for handler in w.handlers[env.event_type]:
            await handler([stale])
    [after] = w.orders().values()
    assert (after.status, after.retry_count) == (S.CAPTURED, 1)
    assert len(w.psp.calls) == calls  # stale commands never reach the PSP
    assert len(w.events("payment_order_finalized")) == 1


async def test_a_slow_psp_is_an_unknown_retried_with_the_same_key() -> None:
    w = World()
    slow_keys: list[str] = []

    async def slow(*, idempotency_key: str, payment_order_id: str, amount: Money) -> CaptureOutcome:
        slow_keys.append(idempotency_key)
        if len(slow_keys) == 1:
            await asyncio.sleep(1)  # longer than the 50 ms budget
        return C

    w.psp.capture = slow  # type: ignore[method-assign]
    await w.pay(1000)
    await w.settle()
    [order] = w.orders().values()
    assert (order.status, order.retry_count, order.psp_key_attempt) == (S.CAPTURED, 1, 0)
    assert slow_keys == [f"{order.public_id}:0"] * 2


async def test_psp_calls_in_flight_are_bounded_by_the_setting() -> None:
    w = World(settings=Settings().with_(jwt_secret="x" * 40, psp_capture_timeout_ms=5000, psp_max_inflight=3))
    inflight = peak = 0

    async def capture(*, idempotency_key: str, payment_order_id: str, amount: Money) -> CaptureOutcome:
        nonlocal inflight, peak
        inflight += 1
        peak = max(peak, inflight)
        await asyncio.sleep(0.01)
        inflight -= 1
        return C

    w.psp.capture = capture  # type: ignore[method-assign]
    await w.pay(*range(1001, 1004))
    await w.pay(*range(2001, 2004))
    await w.settle()
    assert peak == 3
    assert {o.status for o in w.orders().values()} == {S.CAPTURED}


async def test_retries_lost_by_redis_are_requeued_from_the_database() -> None:
    w = World({1000: [R, C]})
    await w.pay(1000)
    await w.drain()
    assert await w.retries.sizes() == (1, 0)
    w.retries.waiting.clear()  # Redis restarted empty
    w.clock.advance(ms=120_000)
    assert await w.container.payments.dispatch_due_retries() == 0
    assert await w.container.payments.requeue_lost_retries() == 1
    await w.settle()
    [order] = w.orders().values()
    assert order.status is S.CAPTURED


@pytest.mark.parametrize("dispatchers", [2, 5])
async def test_concurrent_dispatchers_publish_each_retry_once(dispatchers: int) -> None:
    w = World({1000: [R, C], 2000: [R, C]})
    await w.pay(1000, 2000)
    await w.drain()
    w.clock.advance(ms=60_000)
    await w.retries.schedule([(po, a, 0) for (po, a) in list(w.retries.waiting)])  # scheduled twice
    await w.container.payments.requeue_lost_retries()
    counts = await asyncio.gather(*(w.container.payments.dispatch_due_retries() for _ in range(dispatchers)))
    assert sum(counts) == 2
    await w.settle()
    assert Counter(e.event_id for e in w.events("capture_payment_order")).most_common(1)[0][1] == 1
    assert {o.status for o in w.orders().values()} == {S.CAPTURED}


async def test_the_sweeper_drives_an_order_whose_command_was_lost_again() -> None:
    w = World({1000: [R, C]})
    await w.pay(1000)
    await w.drain()
    w.clock.advance(ms=60_000)
    assert await w.container.payments.dispatch_due_retries() == 1
    del w.db.tables.outbox[w.cursor :]  # the capture command was dead-lettered, or lost
    [order] = w.orders().values()
    assert (order.status, order.next_retry_at) == (S.PENDING_CAPTURE, None)
    assert await w.container.payments.sweep_stuck_orders() == 0  # not stuck yet: still within its schedule
    w.clock.advance(ms=w.container.settings.sweep.stuck_after_s * 1000 + 1)
    assert await w.container.payments.sweep_stuck_orders() == 1
    await w.settle()
    [order] = w.orders().values()
    assert (order.status, order.retry_count) == (S.CAPTURED, 1)
    assert await w.container.payments.sweep_stuck_orders() == 0


async def test_a_psp_that_keeps_not_answering_is_backed_off_from() -> None:
    """One unanswered call is asked again soon (the PSP acted or not, and answers a repeated key);
    a PSP that stays silent — down, or hanging — gets the exponential back-off up to the cap,
    not a call every second from every open order."""
    from marketplace_pay.payments.application.ports import PspUnavailable

    w = World()
    w.psp.fail_with = PspUnavailable("connection refused")
    w.psp.lose_status_answers = 10**9
    await w.pay(1000)
    await w.drain()
    delays = []
    for _ in range(12):
        [order] = w.orders().values()
        assert order.status is PaymentOrderStatus.PENDING_CAPTURE and order.psp_outcome_unknown
        assert order.next_retry_at is not None
        delays.append((order.next_retry_at - order.updated_at).total_seconds())
        w.clock.advance(ms=120_000)
        assert await w.container.payments.dispatch_due_retries() == 1
        await w.drain()
    assert delays[0] <= 2.0  # the first silence: asked again after the first step (1-2 s)
    assert max(delays[4:]) >= 30.0  # then backed off to the cap (30-60 s)
    [order] = w.orders().values()
    assert order.status is PaymentOrderStatus.PENDING_CAPTURE  # and never failed while unknown
