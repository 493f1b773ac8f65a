"""PSP simulators for authorization and capture (SPEC §7, seed §3).

Like a real PSP they are idempotent per idempotency key: the outcome (and latency) of a call is
drawn from a random source seeded with (MP_PSP_SEED, operation, key), so asking again — after a
timeout, or from another process after a crash — gets the same answer. Test values force an
outcome in every scenario, like a PSP's test cards:

- authorization: buyerId starting with DECLINE → declined; TIMEOUT → no answer within any
  budget, and the later status check answers approved;
- capture: amount ending in 66 → declined (final); ending in 13 → retryable, every attempt.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter, deque
from pathlib import Path
from typing import NamedTuple, TypeVar

from marketplace_pay.infra import metrics
from marketplace_pay.payments.application.ports import AuthorizationOutcome, CaptureOutcome
from marketplace_pay.shared.money import Money

TIMEOUT_SLEEP_MS = 5000  # seed: a simulated timeout sleeps 5 s; callers give up after 500 ms


class Bucket(NamedTuple):
    percent: int
    min_ms: int
    max_ms: int  # exclusive


class Scenario(NamedTuple):
    timeout_percent: int
    latency: tuple[Bucket, ...]
    success: int
    retryable: int
    declined: int


# Capture: seed §3.3 table. Success / retryable / declined percentages.
CAPTURE_SCENARIOS: dict[str, Scenario] = {
    "NORMAL": Scenario(0, (Bucket(100, 50, 150), Bucket(0, 150, 300), Bucket(0, 300, 600)), 50, 40, 10),
    "PEAK": Scenario(25, (Bucket(30, 250, 500), Bucket(50, 501, 1500), Bucket(20, 1501, 2500)), 50, 45, 5),
    "DEGRADED": Scenario(30, (Bucket(20, 2000, 2200), Bucket(20, 2201, 2600), Bucket(60, 2601, 2990)), 50, 40, 10),
    "BEST_PSP_EVER": Scenario(0, (Bucket(100, 1, 2),), 100, 0, 0),
}

# Authorization: seed §3.1 only defines NORMAL (always approved, 50–149 ms). The others reuse
# the capture latencies, with a few declines; retryable answers do not exist for
# authorizations (a slow PSP shows up as a timeout → PENDING_AUTH).
AUTH_SCENARIOS: dict[str, Scenario] = {
    "NORMAL": Scenario(0, (Bucket(100, 50, 150),), 100, 0, 0),
    "PEAK": Scenario(25, CAPTURE_SCENARIOS["PEAK"].latency, 95, 0, 5),
    "DEGRADED": Scenario(30, CAPTURE_SCENARIOS["DEGRADED"].latency, 90, 0, 10),
    "BEST_PSP_EVER": Scenario(0, (Bucket(100, 1, 2),), 100, 0, 0),
}


class Draw(NamedTuple):
    latency_ms: int
    roll: int


def draw(seed: int, operation: str, key: str, scenario: Scenario) -> Draw:
    """The deterministic latency and outcome roll of one call (seed §3.2 algorithm)."""
    rng = random.Random(f"{seed}:{operation}:{key}")
    latency = 0
    if scenario.timeout_percent and rng.randrange(100) < scenario.timeout_percent:
        latency += TIMEOUT_SLEEP_MS
    r = rng.randrange(100)
    upper = 0
    for bucket in scenario.latency:
        upper += bucket.percent
        if r < upper:
            latency += rng.randrange(bucket.min_ms, bucket.max_ms)
            break
    else:
        latency += TIMEOUT_SLEEP_MS
    return Draw(latency_ms=latency, roll=rng.randrange(100))


class CallLog:
    """What the simulated PSP saw: counts per (operation, result), the most recent calls, and —
    with MP_PSP_CALL_LOG — every call appended to a file as a JSON line (the PSP's own record,
    which outlives our process)."""

    def __init__(self, keep: int = 100_000, path: Path | None = None) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self.recent: deque[tuple[str, str, str]] = deque(maxlen=keep)
        self._file = open(path, "a", buffering=1) if path else None  # noqa: SIM115 - lives with the log

    def record(self, operation: str, key: str, result: str) -> None:
        self.counts[(operation, result)] += 1
        self.recent.append((operation, key, result))
        metrics.PSP_CALLS.labels(operation, result).inc()
        if self._file is not None:
            self._file.write(json.dumps({"op": operation, "key": key, "result": result}) + "\n")

    def calls(self, operation: str, key: str | None = None) -> list[tuple[str, str, str]]:
        return [c for c in self.recent if c[0] == operation and (key is None or c[1] == key)]


O = TypeVar("O", AuthorizationOutcome, CaptureOutcome)


async def _answer(log: CallLog, operation: str, key: str, outcome: O, latency_ms: int) -> O:
    """Answer after the simulated latency; a caller that gives up first sees no answer."""
    try:
        await asyncio.sleep(latency_ms / 1000)
    except asyncio.CancelledError:
        log.record(operation, key, "TIMEOUT")
        raise
    log.record(operation, key, outcome.value)
    return outcome


class SimulatedAuthorizationGateway:
    def __init__(self, scenario: str, *, seed: int = 0, log: CallLog | None = None) -> None:
        self.scenario = AUTH_SCENARIOS[scenario]
        self.seed = seed
        self.log = log or CallLog()

    def _outcome(self, payment_id: int, buyer_id: str) -> tuple[AuthorizationOutcome, int]:
        d = draw(self.seed, "authorize", str(payment_id), self.scenario)
        if buyer_id.startswith("DECLINE"):
            return AuthorizationOutcome.DECLINED, d.latency_ms % 150
        if buyer_id.startswith("TIMEOUT"):
            return AuthorizationOutcome.APPROVED, TIMEOUT_SLEEP_MS * 2
        declined = d.roll >= self.scenario.success
        return (AuthorizationOutcome.DECLINED if declined else AuthorizationOutcome.APPROVED), d.latency_ms

    async def authorize(self, *, payment_id: int, buyer_id: str, amount: Money) -> AuthorizationOutcome:
        outcome, latency_ms = self._outcome(payment_id, buyer_id)
        return await _answer(self.log, "authorize", str(payment_id), outcome, latency_ms)

    async def authorization_status(
        self, *, payment_id: int, buyer_id: str, amount: Money
    ) -> AuthorizationOutcome | None:
        outcome, _ = self._outcome(payment_id, buyer_id)
        self.log.record("authorization_status", str(payment_id), outcome.value)
        return outcome


class SimulatedCaptureGateway:
    def __init__(self, scenario: str, *, seed: int = 0, log: CallLog | None = None) -> None:
        self.scenario = CAPTURE_SCENARIOS[scenario]
        self.seed = seed
        self.log = log or CallLog()

    def outcome(self, idempotency_key: str, amount: Money) -> tuple[CaptureOutcome, int]:
        d = draw(self.seed, "capture", idempotency_key, self.scenario)
        last_two = amount.amount_minor % 100
        if last_two == 66:
            return CaptureOutcome.DECLINED, d.latency_ms
        if last_two == 13:
            return CaptureOutcome.RETRYABLE, d.latency_ms
        s = self.scenario
        if d.roll < s.success:
            return CaptureOutcome.CAPTURED, d.latency_ms
        if d.roll < s.success + s.retryable:
            return CaptureOutcome.RETRYABLE, d.latency_ms
        if d.roll < s.success + s.retryable + s.declined:
            return CaptureOutcome.DECLINED, d.latency_ms
        return CaptureOutcome.RETRYABLE, d.latency_ms

    async def capture(self, *, idempotency_key: str, amount: Money) -> CaptureOutcome:
        outcome, latency_ms = self.outcome(idempotency_key, amount)
        return await _answer(self.log, "capture", idempotency_key, outcome, latency_ms)
