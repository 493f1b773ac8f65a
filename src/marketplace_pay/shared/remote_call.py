"""The rule every call to another party's money system follows (a PSP's capture or refund, a
bank's payout): **no answer is not a failure**.

Each call carries an idempotency key that changes only after a *definite* "not done, try again";
after an unanswered call the next one repeats the key, which the other side answers with what it
did the first time. Past `max_retries` calls the next one asks for the status of the key instead
of acting again. Something is given up as failed only on a definite answer, so money is never
both moved and given up on.
"""

from __future__ import annotations

from enum import StrEnum


class CallResult(StrEnum):
    """What one call told us."""

    DONE = "DONE"  # the other side did it
    REFUSED = "REFUSED"  # final: refused for good
    RETRYABLE = "RETRYABLE"  # definitely not done; a new call, with a new key, may succeed
    UNKNOWN = "UNKNOWN"  # no answer (timeout, unreachable): it may have been done


class NextStep(StrEnum):
    DONE = "DONE"
    FAILED = "FAILED"
    RETRY_NEW_KEY = "RETRY_NEW_KEY"
    RETRY_SAME_KEY = "RETRY_SAME_KEY"


def asks_status(attempt: int, max_retries: int) -> bool:
    """The retries are used up on unanswered calls: call `attempt` asks what was done."""
    return attempt > max_retries


def next_step(result: CallResult, *, attempt: int, max_retries: int) -> NextStep:
    """What follows call `attempt`'s `result`. A definite "not done" is retried with a new key
    until `max_retries` retries are used (or when a status query says so): then FAILED. An
    unknown answer is always retried with the same key."""
    if result is CallResult.DONE:
        return NextStep.DONE
    if result is CallResult.REFUSED:
        return NextStep.FAILED
    if result is CallResult.RETRYABLE:
        if asks_status(attempt, max_retries) or attempt >= max_retries:
            return NextStep.FAILED
        return NextStep.RETRY_NEW_KEY
    return NextStep.RETRY_SAME_KEY


def backoff_step(*, unanswered: bool, answered_before: bool, attempt: int) -> int:
    """Which step of the exponential back-off the next call waits for. A call unanswered after
    an answered one is asked again soon (the first step): the other side has acted or not, and
    answers the repeated key from its record. Otherwise — a definite "not done", or silence that
    goes on — the back-off grows with the attempts."""
    return 1 if unanswered and answered_before else attempt + 1
