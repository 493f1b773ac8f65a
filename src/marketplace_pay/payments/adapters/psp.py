"""PSP simulators for authorization and capture, behaving like a real PSP where it matters for money:

- **Deterministic per idempotency key.** The outcome (and latency) of a call is drawn from a
  hash of (MP_PSP_SEED, operation, key): asking again — after a timeout, or
  from another process after a crash — gets the same answer.
- **It acts when it receives the request**, whether or not the caller waits for the answer: a
  capture whose caller gave up after its budget has still captured (the call log says so, with
  `answered: false`).
- **A repeated key is a replay**, answered quickly with the original outcome, never a second
  capture; `capture_status` answers what was done under a key. (The simulator treats every key it
  is asked about as received: callers only ask about keys they sent.)

Scenarios (`MP_PSP_SCENARIO`): NORMAL, PEAK, DEGRADED, BEST_PSP_EVER — the share of calls that
time out (5 s), the latency buckets, and the capture outcome percentages. Test values force an
outcome in every scenario, like a PSP's test cards:

- authorization: buyerId starting with DECLINE → declined; TIMEOUT → no answer within any
  budget, and the later status check answers approved;
- capture: amount ending in 66 → declined (final); ending in 13 → retryable, every attempt;
- refund: amount ending in 77 → declined (final); otherwise refunded, with the scenario's
  latencies and share of timeouts.

`MP_PSP_CALL_LOG`: every call is appended to a file as a JSON line — `op`, `key`,
`paymentOrderId` (captures) or `paymentId` (authorizations), `result` (what the PSP did) and
`answered` (whether the caller got the answer) — the PSP's own record, to compare the database
with.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import Counter, OrderedDict
from pathlib import Path
from typing import NamedTuple, TypeVar

from marketplace_pay.infra import metrics
from marketplace_pay.payments.application.ports import AuthorizationOutcome, CaptureOutcome, RefundOutcome
from marketplace_pay.shared.ids import public_payment_id
from marketplace_pay.shared.money import Money

TIMEOUT_SLEEP_MS = 5000  # a simulated timeout answers after 5 s; callers give up after 500 ms
REPLAY_MAX_MS = 100  # a repeated key is a lookup: answered within the scenario's fastest latency, ≤ 100 ms
# Keys recently seen, to answer a repeat as a quick replay. Bounded, so memory does not grow with
# traffic: a repeat of a key forgotten since gets the same outcome, only not the replay's latency.
_REMEMBER_KEYS = 50_000


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

    @property
    def replay_ms(self) -> int:
        return min(self.latency[0].min_ms, REPLAY_MAX_MS)


# Capture: success / retryable / declined percentages.
CAPTURE_SCENARIOS: dict[str, Scenario] = {
    "NORMAL": Scenario(0, (Bucket(100, 50, 150), Bucket(0, 150, 300), Bucket(0, 300, 600)), 50, 40, 10),
    "PEAK": Scenario(25, (Bucket(30, 250, 500), Bucket(50, 501, 1500), Bucket(20, 1501, 2500)), 50, 45, 5),
    "DEGRADED": Scenario(30, (Bucket(20, 2000, 2200), Bucket(20, 2201, 2600), Bucket(60, 2601, 2990)), 50, 40, 10),
    "BEST_PSP_EVER": Scenario(0, (Bucket(100, 1, 2),), 100, 0, 0),
}

# Authorization: NORMAL is always approved in 50–149 ms. The others reuse the capture
# latencies, with a few declines; retryable answers do not exist for authorizations (a slow PSP
# shows up as a timeout → PENDING_AUTH).
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
    """The deterministic latency and outcome roll of one call: a share of calls time out (5 s),
    the rest fall in a latency bucket; then a roll in [0, 100) picks the outcome.

    The rolls are 16-bit slices of one hash of (seed, operation, key) — the same answer for the
    same key in any process, and cheap (seeding a `random.Random` per call cost more than the
    rest of a simulated call)."""
    bits = int.from_bytes(hashlib.blake2b(f"{seed}:{operation}:{key}".encode(), digest_size=8).digest(), "little")
    timeout_roll, bucket_roll, within, outcome_roll = (bits >> s & 0xFFFF for s in (0, 16, 32, 48))
    latency = 0
    if scenario.timeout_percent and timeout_roll % 100 < scenario.timeout_percent:
        latency += TIMEOUT_SLEEP_MS
    r = bucket_roll % 100
    upper = 0
    for bucket in scenario.latency:
        upper += bucket.percent
        if r < upper:
            latency += bucket.min_ms + within % (bucket.max_ms - bucket.min_ms)
            break
    else:
        latency += TIMEOUT_SLEEP_MS
    return Draw(latency_ms=latency, roll=outcome_roll % 100)


class CallLog:
    """What the simulated PSP did: counts per (operation, result) and — with MP_PSP_CALL_LOG —
    every call appended to a file as a JSON line (the PSP's own record, which outlives us)."""

    def __init__(self, path: Path | None = None) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self._file = open(path, "a", buffering=1) if path else None  # noqa: SIM115 - lives with the log

    def record(self, operation: str, key: str, result: str, *, answered: bool, subject: tuple[str, str]) -> None:
        self.counts[(operation, result)] += 1
        metrics.PSP_CALLS.labels(operation, result if answered else "TIMEOUT").inc()
        if self._file is not None:
            line = {"op": operation, "key": key, subject[0]: subject[1], "result": result, "answered": answered}
            self._file.write(json.dumps(line) + "\n")


Outcome = TypeVar("Outcome", AuthorizationOutcome, CaptureOutcome, RefundOutcome)


class _Simulator:
    def __init__(self, scenario: Scenario, *, seed: int, log: CallLog | None) -> None:
        self.scenario = scenario
        self.seed = seed
        self.log = log or CallLog()
        self._seen: OrderedDict[str, None] = OrderedDict()

    def _replay(self, key: str) -> bool:
        """Whether `key` was received before (and remember it now)."""
        seen = key in self._seen
        self._seen[key] = None
        self._seen.move_to_end(key)
        while len(self._seen) > _REMEMBER_KEYS:
            self._seen.popitem(last=False)
        return seen

    async def _answer(
        self, operation: str, key: str, outcome: Outcome, latency_ms: int, subject: tuple[str, str]
    ) -> Outcome:
        """The PSP has acted; the answer arrives after `latency_ms`. A caller that gives up
        first does not get it, but the act stands (logged `answered: false`)."""
        try:
            await asyncio.sleep(latency_ms / 1000)
        except asyncio.CancelledError:
            self.log.record(operation, key, outcome.value, answered=False, subject=subject)
            raise
        self.log.record(operation, key, outcome.value, answered=True, subject=subject)
        return outcome


class SimulatedAuthorizationGateway(_Simulator):
    def __init__(self, scenario: str, *, seed: int = 0, log: CallLog | None = None) -> None:
        super().__init__(AUTH_SCENARIOS[scenario], seed=seed, log=log)

    def outcome(self, payment_id: int, buyer_id: str) -> tuple[AuthorizationOutcome, int]:
        """What the PSP does with this authorization, and how long it takes to answer."""
        d = draw(self.seed, "authorize", str(payment_id), self.scenario)
        if buyer_id.startswith("DECLINE"):
            return AuthorizationOutcome.DECLINED, d.latency_ms % 150
        if buyer_id.startswith("TIMEOUT"):
            return AuthorizationOutcome.APPROVED, TIMEOUT_SLEEP_MS * 2
        declined = d.roll >= self.scenario.success
        return (AuthorizationOutcome.DECLINED if declined else AuthorizationOutcome.APPROVED), d.latency_ms

    async def authorize(self, *, payment_id: int, buyer_id: str, amount: Money) -> AuthorizationOutcome:
        outcome, latency_ms = self.outcome(payment_id, buyer_id)
        key = str(payment_id)
        if self._replay(key):
            latency_ms = min(latency_ms, self.scenario.replay_ms)
        return await self._answer("authorize", key, outcome, latency_ms, ("paymentId", public_payment_id(payment_id)))

    async def authorization_status(
        self, *, payment_id: int, buyer_id: str, amount: Money
    ) -> AuthorizationOutcome | None:
        outcome, _ = self.outcome(payment_id, buyer_id)
        self.log.record(
            "authorization_status",
            str(payment_id),
            outcome.value,
            answered=True,
            subject=("paymentId", public_payment_id(payment_id)),
        )
        return outcome


class SimulatedCaptureGateway(_Simulator):
    def __init__(self, scenario: str, *, seed: int = 0, log: CallLog | None = None) -> None:
        super().__init__(CAPTURE_SCENARIOS[scenario], seed=seed, log=log)

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

    async def capture(self, *, idempotency_key: str, payment_order_id: str, amount: Money) -> CaptureOutcome:
        outcome, latency_ms = self.outcome(idempotency_key, amount)
        if self._replay(idempotency_key):
            latency_ms = self.scenario.replay_ms
        return await self._answer("capture", idempotency_key, outcome, latency_ms, ("paymentOrderId", payment_order_id))

    async def capture_status(
        self, *, idempotency_key: str, payment_order_id: str, amount: Money
    ) -> CaptureOutcome | None:
        outcome, _ = self.outcome(idempotency_key, amount)
        self._replay(idempotency_key)
        return await self._answer(
            "capture_status", idempotency_key, outcome, self.scenario.replay_ms, ("paymentOrderId", payment_order_id)
        )

    # -- refunds (the same PSP) --------------------------------------------------------------

    def refund_outcome(self, idempotency_key: str, amount: Money) -> tuple[RefundOutcome, int]:
        d = draw(self.seed, "refund", idempotency_key, self.scenario)
        if amount.amount_minor % 100 == 77:
            return RefundOutcome.DECLINED, d.latency_ms
        return RefundOutcome.REFUNDED, d.latency_ms

    async def refund(
        self, *, idempotency_key: str, refund_id: str, payment_order_id: str, amount: Money
    ) -> RefundOutcome:
        outcome, latency_ms = self.refund_outcome(idempotency_key, amount)
        if self._replay(idempotency_key):
            latency_ms = self.scenario.replay_ms
        return await self._answer("refund", idempotency_key, outcome, latency_ms, ("refundId", refund_id))

    async def refund_status(
        self, *, idempotency_key: str, refund_id: str, payment_order_id: str, amount: Money
    ) -> RefundOutcome | None:
        outcome, _ = self.refund_outcome(idempotency_key, amount)
        self._replay(idempotency_key)
        return await self._answer(
            "refund_status", idempotency_key, outcome, self.scenario.replay_ms, ("refundId", refund_id)
        )
