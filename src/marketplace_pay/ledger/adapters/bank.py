"""The bank simulator: pays sellers out, behaving like a real bank where it matters for money.

- **Deterministic per idempotency key.** The outcome and latency of a call are drawn from a
  random source seeded with (MP_PSP_SEED, "payout", key): asking again — after a timeout, or from
  another process after a crash — gets the same answer.
- **It acts when it receives the request**, whether or not the caller waits for the answer: a
  payout whose caller gave up has still been sent (the call log says so, `answered: false`).
- **A repeated key is a replay**, answered quickly with the original outcome, never a second
  transfer; `payment_status` answers what was done under a key.

Behaviour follows the PSP scenario (`MP_PSP_SCENARIO`): the share of calls that take 5 s (past
any caller's budget, `MP_PAYOUT_BANK_TIMEOUT_MS`), the latencies, and a small share of "not
paid, try again" answers. Test values force an outcome in every scenario:

- an amount whose quantity ends in 99 → FAILED (final: the money goes back to the seller);
- ends in 98 → RETRYABLE on every call (FAILED once the retries are used up);
- ends in 97 → the first call under a key gets no answer within any budget (it is paid; asking
  again answers PAID).

`MP_PSP_CALL_LOG`: every call is appended to the PSP's call log as a JSON line — `op` (`payout`,
`payout_status`), `key`, `payoutId`, `result`, `answered` — the bank's own record, to compare
the database with.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from pathlib import Path
from typing import NamedTuple

from marketplace_pay.infra import metrics
from marketplace_pay.ledger.application.ports import BankOutcome
from marketplace_pay.shared.money import Money

TIMEOUT_SLEEP_MS = 5000


class BankScenario(NamedTuple):
    timeout_percent: int
    min_ms: int
    max_ms: int  # exclusive
    retryable_percent: int


SCENARIOS = {
    "NORMAL": BankScenario(0, 20, 120, 5),
    "PEAK": BankScenario(10, 100, 1500, 10),
    "DEGRADED": BankScenario(20, 1000, 2500, 10),
    "BEST_PSP_EVER": BankScenario(0, 1, 2, 0),
}


class BankCallLog:
    """What the simulated bank did: counts per (operation, result) and — with a path — every call
    appended as a JSON line to the file the PSP simulator writes too (whole lines, append mode:
    the two never interleave within a line)."""

    def __init__(self, path: Path | None = None) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self._file = open(path, "a", buffering=1) if path else None  # noqa: SIM115 - lives with the log

    def record(self, operation: str, key: str, payout_id: str, result: str, *, answered: bool) -> None:
        self.counts[(operation, result)] += 1
        metrics.BANK_CALLS.labels(operation, result if answered else "TIMEOUT").inc()
        if self._file is not None:
            line = {"op": operation, "key": key, "payoutId": payout_id, "result": result, "answered": answered}
            self._file.write(json.dumps(line) + "\n")


class SimulatedBank:
    def __init__(self, scenario: str, *, seed: int = 0, log: BankCallLog | None = None) -> None:
        self.scenario = SCENARIOS[scenario]
        self.seed = seed
        self.log = log or BankCallLog()
        self._seen: set[str] = set()  # keys received (bounded by the payouts made: low volume)

    def outcome(self, key: str, amount: Money) -> tuple[BankOutcome, int]:
        """The outcome of a transfer under `key`, and how long its answer takes."""
        rng = random.Random(f"{self.seed}:payout:{key}")
        s = self.scenario
        latency = rng.randrange(s.min_ms, s.max_ms)
        if s.timeout_percent and rng.randrange(100) < s.timeout_percent:
            latency += TIMEOUT_SLEEP_MS
        last_two = amount.amount_minor % 100
        if last_two == 99:
            return BankOutcome.FAILED, latency
        if last_two == 98:
            return BankOutcome.RETRYABLE, latency
        if last_two == 97:
            return BankOutcome.PAID, TIMEOUT_SLEEP_MS * 2
        if s.retryable_percent and rng.randrange(100) < s.retryable_percent:
            return BankOutcome.RETRYABLE, latency
        return BankOutcome.PAID, latency

    async def pay(self, *, idempotency_key: str, payout_id: str, seller_id: str, amount: Money) -> BankOutcome:
        outcome, latency_ms = self.outcome(idempotency_key, amount)
        if idempotency_key in self._seen:
            latency_ms = min(latency_ms, self.scenario.min_ms)  # a replay is a lookup
        self._seen.add(idempotency_key)  # received: acted upon, whatever happens to the answer
        try:
            await asyncio.sleep(latency_ms / 1000)
        except asyncio.CancelledError:
            self.log.record("payout", idempotency_key, payout_id, outcome.value, answered=False)
            raise
        self.log.record("payout", idempotency_key, payout_id, outcome.value, answered=True)
        return outcome

    async def payment_status(
        self, *, idempotency_key: str, payout_id: str, seller_id: str, amount: Money
    ) -> BankOutcome | None:
        outcome, _ = self.outcome(idempotency_key, amount)
        self._seen.add(idempotency_key)
        await asyncio.sleep(self.scenario.min_ms / 1000)
        self.log.record("payout_status", idempotency_key, payout_id, outcome.value, answered=True)
        return outcome
