"""The simulated PSP: its scenarios, determinism per idempotency key, test values."""

import asyncio
import json
import time
from collections import Counter

import pytest

from marketplace_pay.payments.adapters.psp import (
    AUTH_SCENARIOS,
    CAPTURE_SCENARIOS,
    TIMEOUT_SLEEP_MS,
    CallLog,
    SimulatedAuthorizationGateway,
    SimulatedCaptureGateway,
    draw,
)
from marketplace_pay.payments.application.ports import AuthorizationOutcome, CaptureOutcome
from marketplace_pay.shared.money import Currency, Money


def eur(q: int) -> Money:
    return Money(q, Currency.EUR)


def test_same_key_same_answer_across_instances() -> None:
    a, b = SimulatedCaptureGateway("NORMAL", seed=7), SimulatedCaptureGateway("NORMAL", seed=7)
    for i in range(200):
        assert a.outcome(f"po:{i}:0", eur(1000)) == b.outcome(f"po:{i}:0", eur(1000))


def test_other_seed_other_answers() -> None:
    a, b = SimulatedCaptureGateway("NORMAL", seed=1), SimulatedCaptureGateway("NORMAL", seed=2)
    assert [a.outcome(f"k{i}", eur(1000)) for i in range(50)] != [b.outcome(f"k{i}", eur(1000)) for i in range(50)]


def test_normal_capture_distribution_is_50_40_10() -> None:
    sim = SimulatedCaptureGateway("NORMAL", seed=0)
    counts = Counter(sim.outcome(f"k{i}", eur(1000))[0] for i in range(20000))
    assert abs(counts[CaptureOutcome.CAPTURED] / 20000 - 0.50) < 0.02
    assert abs(counts[CaptureOutcome.RETRYABLE] / 20000 - 0.40) < 0.02
    assert abs(counts[CaptureOutcome.DECLINED] / 20000 - 0.10) < 0.02


@pytest.mark.parametrize(("scenario", "low", "high"), [("NORMAL", 50, 150), ("BEST_PSP_EVER", 1, 2)])
def test_latency_buckets(scenario: str, low: int, high: int) -> None:
    latencies = [draw(0, "capture", f"k{i}", CAPTURE_SCENARIOS[scenario]).latency_ms for i in range(2000)]
    assert min(latencies) >= low and max(latencies) < high


def test_peak_times_out_about_a_quarter_of_calls() -> None:
    latencies = [draw(0, "capture", f"k{i}", CAPTURE_SCENARIOS["PEAK"]).latency_ms for i in range(4000)]
    timeouts = sum(1 for ms in latencies if ms >= TIMEOUT_SLEEP_MS)
    assert 0.22 < timeouts / 4000 < 0.28


def test_best_psp_ever_always_captures_and_approves() -> None:
    sim = SimulatedCaptureGateway("BEST_PSP_EVER", seed=3)
    assert {sim.outcome(f"k{i}", eur(1000))[0] for i in range(1000)} == {CaptureOutcome.CAPTURED}
    assert AUTH_SCENARIOS["BEST_PSP_EVER"].success == 100


@pytest.mark.parametrize("scenario", ["NORMAL", "PEAK", "DEGRADED", "BEST_PSP_EVER"])
def test_capture_test_values_win_in_every_scenario(scenario: str) -> None:
    sim = SimulatedCaptureGateway(scenario, seed=0)
    for i in range(100):
        assert sim.outcome(f"k{i}", eur(1066))[0] is CaptureOutcome.DECLINED
        assert sim.outcome(f"k{i}", eur(2013))[0] is CaptureOutcome.RETRYABLE


@pytest.mark.parametrize("scenario", ["NORMAL", "PEAK", "DEGRADED", "BEST_PSP_EVER"])
async def test_authorization_test_values_win_in_every_scenario(scenario: str) -> None:
    sim = SimulatedAuthorizationGateway(scenario, seed=0)
    assert await sim.authorize(payment_id=1, buyer_id="DECLINE-7", amount=eur(10)) is AuthorizationOutcome.DECLINED
    _, latency = sim.outcome(2, "TIMEOUT-1")
    assert latency > 5000  # longer than any caller's budget
    assert (
        await sim.authorization_status(payment_id=2, buyer_id="TIMEOUT-1", amount=eur(10))
        is AuthorizationOutcome.APPROVED
    )


async def test_calls_are_logged_by_operation_and_result(tmp_path) -> None:  # type: ignore[no-untyped-def]
    log = CallLog(tmp_path / "psp.jsonl")
    sim = SimulatedCaptureGateway("BEST_PSP_EVER", seed=0, log=log)
    await sim.capture(idempotency_key="po_A:0", payment_order_id="po_A", amount=eur(1000))
    await sim.capture(idempotency_key="po_B:0", payment_order_id="po_B", amount=eur(1066))
    assert sim.log.counts[("capture", "CAPTURED")] == 1
    assert sim.log.counts[("capture", "DECLINED")] == 1
    lines = [json.loads(line) for line in (tmp_path / "psp.jsonl").read_text().splitlines()]
    assert lines == [
        {"op": "capture", "key": "po_A:0", "paymentOrderId": "po_A", "result": "CAPTURED", "answered": True},
        {"op": "capture", "key": "po_B:0", "paymentOrderId": "po_B", "result": "DECLINED", "answered": True},
    ]


async def test_a_capture_whose_caller_gave_up_still_happened_and_a_repeat_replays_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Like a real PSP: the capture happens when the request arrives. The caller that stopped
    waiting learns it by asking again with the same key (a quick replay) or by a status query."""
    log = CallLog(tmp_path / "psp.jsonl")
    sim = SimulatedCaptureGateway("PEAK", seed=0, log=log)
    key = next(
        f"po_X:{i}"
        for i in range(1000)
        if sim.outcome(f"po_X:{i}", eur(1000))[0] is CaptureOutcome.CAPTURED
        and sim.outcome(f"po_X:{i}", eur(1000))[1] >= TIMEOUT_SLEEP_MS
    )
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await sim.capture(idempotency_key=key, payment_order_id="po_X", amount=eur(1000))
    started = time.monotonic()
    assert await sim.capture(idempotency_key=key, payment_order_id="po_X", amount=eur(1000)) is CaptureOutcome.CAPTURED
    assert time.monotonic() - started < 0.2  # a replay, not another 5-second capture
    assert (
        await sim.capture_status(idempotency_key=key, payment_order_id="po_X", amount=eur(1000))
        is CaptureOutcome.CAPTURED
    )
    lines = [json.loads(line) for line in (tmp_path / "psp.jsonl").read_text().splitlines()]
    assert [(x["op"], x["result"], x["answered"]) for x in lines] == [
        ("capture", "CAPTURED", False),
        ("capture", "CAPTURED", True),
        ("capture_status", "CAPTURED", True),
    ]
