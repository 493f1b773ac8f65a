"""The simulated PSP: seed scenarios, determinism per idempotency key, test values."""

from collections import Counter

import pytest

from marketplace_pay.payments.adapters.psp import (
    AUTH_SCENARIOS,
    CAPTURE_SCENARIOS,
    TIMEOUT_SLEEP_MS,
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
    outcome, latency = sim._outcome(2, "TIMEOUT-1")
    assert latency > 5000  # longer than any caller's budget
    assert await sim.authorization_status(payment_id=2, buyer_id="TIMEOUT-1", amount=eur(10)) is AuthorizationOutcome.APPROVED


async def test_calls_are_logged_by_operation_and_result() -> None:
    sim = SimulatedCaptureGateway("BEST_PSP_EVER", seed=0)
    await sim.capture(idempotency_key="po:1:0", amount=eur(1000))
    await sim.capture(idempotency_key="po:2:0", amount=eur(1066))
    assert sim.log.counts[("capture", "CAPTURED")] == 1
    assert sim.log.counts[("capture", "DECLINED")] == 1
    assert sim.log.calls("capture", "po:2:0") == [("capture", "po:2:0", "DECLINED")]
