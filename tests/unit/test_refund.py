"""The refund's state machine and the rule it shares with every call to another party's money
system: no answer is not a failure."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from marketplace_pay.payments.domain.refund import Refund, RefundStatus
from marketplace_pay.shared.errors import InvariantViolation
from marketplace_pay.shared.money import Currency, Money
from marketplace_pay.shared.remote_call import CallResult

NOW = datetime(2026, 1, 1, tzinfo=UTC)
MAX_RETRIES = 2


def new_refund() -> Refund:
    return Refund(
        refund_id=7,
        payment_id=1,
        payment_order_id=2,
        seller_id="SELLER-1",
        amount=Money(400, Currency.EUR),
        reason=None,
        status=RefundStatus.PENDING,
        created_at=NOW,
        updated_at=NOW,
    )


def run(*results: CallResult) -> tuple[Refund, list[str]]:
    refund, keys = new_refund(), []
    for result in results:
        keys.append(("status " if refund.asks_status(MAX_RETRIES) else "") + refund.psp_key)
        refund.apply(result, attempt=refund.attempt, now=NOW, max_retries=MAX_RETRIES, retry_delay_ms=10)
    return refund, keys


@pytest.mark.parametrize(
    ("results", "status", "keys"),
    [
        ([CallResult.DONE], RefundStatus.SUCCEEDED, ["rf_AAAAAAAAAAc:0"]),
        ([CallResult.REFUSED], RefundStatus.FAILED, ["rf_AAAAAAAAAAc:0"]),
        # a definite "not refunded" tries a new key, and fails once the retries are used
        (
            [CallResult.RETRYABLE, CallResult.RETRYABLE, CallResult.RETRYABLE],
            RefundStatus.FAILED,
            ["rf_AAAAAAAAAAc:0", "rf_AAAAAAAAAAc:1", "rf_AAAAAAAAAAc:2"],
        ),
        # no answer repeats the key, never fails, and past the retries asks for the status
        (
            [CallResult.UNKNOWN, CallResult.UNKNOWN, CallResult.UNKNOWN, CallResult.UNKNOWN],
            RefundStatus.PENDING,
            ["rf_AAAAAAAAAAc:0"] * 3 + ["status rf_AAAAAAAAAAc:0"],
        ),
        (
            [CallResult.UNKNOWN, CallResult.UNKNOWN, CallResult.UNKNOWN, CallResult.DONE],
            RefundStatus.SUCCEEDED,
            ["rf_AAAAAAAAAAc:0"] * 3 + ["status rf_AAAAAAAAAAc:0"],
        ),
        # a status query that finds nothing refunded: FAILED, the money never left
        (
            [CallResult.UNKNOWN, CallResult.UNKNOWN, CallResult.UNKNOWN, CallResult.RETRYABLE],
            RefundStatus.FAILED,
            ["rf_AAAAAAAAAAc:0"] * 3 + ["status rf_AAAAAAAAAAc:0"],
        ),
        (
            [CallResult.RETRYABLE, CallResult.UNKNOWN, CallResult.DONE],
            RefundStatus.SUCCEEDED,
            ["rf_AAAAAAAAAAc:0", "rf_AAAAAAAAAAc:1", "rf_AAAAAAAAAAc:1"],
        ),
    ],
)
def test_refund_state_machine(results: list[CallResult], status: RefundStatus, keys: list[str]) -> None:
    refund, asked = run(*results)
    assert refund.status is status
    assert asked == keys
    assert (refund.next_retry_at is None) == status.final
    assert refund.psp_outcome_unknown == (results[-1] is CallResult.UNKNOWN and not status.final)


def test_an_answer_for_another_attempt_or_a_final_refund_is_refused() -> None:
    refund, _ = run(CallResult.RETRYABLE)
    with pytest.raises(InvariantViolation):
        refund.apply(CallResult.DONE, attempt=0, now=NOW, max_retries=MAX_RETRIES, retry_delay_ms=10)
    refund.apply(CallResult.DONE, attempt=1, now=NOW, max_retries=MAX_RETRIES, retry_delay_ms=10)
    with pytest.raises(InvariantViolation):
        refund.apply(CallResult.REFUSED, attempt=1, now=NOW, max_retries=MAX_RETRIES, retry_delay_ms=10)
    assert refund.status is RefundStatus.SUCCEEDED
