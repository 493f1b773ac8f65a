"""The payment-order state machine and the retry back-off."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from marketplace_pay.payments.domain.payment import Payment, PaymentLine, PaymentStatus
from marketplace_pay.payments.domain.payment_order import (
    CaptureResult,
    PaymentOrder,
    PaymentOrderStatus,
)
from marketplace_pay.shared.backoff import equal_jitter_backoff_ms
from marketplace_pay.shared.errors import InvariantViolation
from marketplace_pay.shared.money import Currency, Money

S = PaymentOrderStatus
R = CaptureResult
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def order(
    status: PaymentOrderStatus = S.INITIATED_PENDING, retry: int = 0, key: int = 0, unknown: bool = False
) -> PaymentOrder:
    return PaymentOrder(
        payment_order_id=7,
        payment_id=6,
        seller_id="SELLER-111",
        amount=Money(1000, Currency.EUR),
        status=status,
        retry_count=retry,
        psp_key_attempt=key,
        psp_outcome_unknown=unknown,
        created_at=T0,
        updated_at=T0,
    )


def test_request_capture_only_from_initiated() -> None:
    o = order()
    o.request_capture(T0 + timedelta(seconds=1))
    assert (o.status, o.retry_count, o.updated_at) == (S.CAPTURE_REQUESTED, 0, T0 + timedelta(seconds=1))
    for status, retry in [(S.CAPTURE_REQUESTED, 0), (S.PENDING_CAPTURE, 1), (S.CAPTURED, 0), (S.CAPTURE_FAILED, 2)]:
        with pytest.raises(InvariantViolation, match="Invalid transition"):
            order(status, retry).request_capture(T0)


# (status, retry, key attempt, answer, attempt) → (status, retry, key attempt, unknown); None = refused.
# max_retries = 5. The key changes only after a definite "not captured"; an unanswered call keeps
# it; past the retries, the order asks for the status of its last key and only a definite answer ends it.
TABLE = [
    (S.CAPTURE_REQUESTED, 0, 0, R.CAPTURED, 0, (S.CAPTURED, 0, 0, False)),
    (S.CAPTURE_REQUESTED, 0, 0, R.DECLINED, 0, (S.CAPTURE_FAILED, 0, 0, False)),
    (S.CAPTURE_REQUESTED, 0, 0, R.RETRYABLE, 0, (S.PENDING_CAPTURE, 1, 1, False)),  # new key
    (S.CAPTURE_REQUESTED, 0, 0, R.UNKNOWN, 0, (S.PENDING_CAPTURE, 1, 0, True)),  # same key again
    (S.PENDING_CAPTURE, 1, 0, R.CAPTURED, 1, (S.CAPTURED, 1, 0, False)),  # the repeat learnt it was captured
    (S.PENDING_CAPTURE, 1, 0, R.UNKNOWN, 1, (S.PENDING_CAPTURE, 2, 0, True)),
    (S.PENDING_CAPTURE, 2, 0, R.RETRYABLE, 2, (S.PENDING_CAPTURE, 3, 3, False)),
    (S.PENDING_CAPTURE, 3, 1, R.DECLINED, 3, (S.CAPTURE_FAILED, 3, 1, False)),
    (S.PENDING_CAPTURE, 4, 4, R.RETRYABLE, 4, (S.PENDING_CAPTURE, 5, 5, False)),
    (S.PENDING_CAPTURE, 5, 5, R.RETRYABLE, 5, (S.CAPTURE_FAILED, 5, 5, False)),  # 6th call, definite: exhausted
    (S.PENDING_CAPTURE, 5, 5, R.CAPTURED, 5, (S.CAPTURED, 5, 5, False)),
    (S.PENDING_CAPTURE, 5, 3, R.UNKNOWN, 5, (S.PENDING_CAPTURE, 6, 3, True)),  # exhausted on an unknown: never failed
    (S.PENDING_CAPTURE, 6, 3, R.UNKNOWN, 6, (S.PENDING_CAPTURE, 7, 3, True)),  # status query unanswered: ask again
    (S.PENDING_CAPTURE, 7, 3, R.CAPTURED, 7, (S.CAPTURED, 7, 3, False)),  # status: it was captured
    (S.PENDING_CAPTURE, 7, 3, R.RETRYABLE, 7, (S.CAPTURE_FAILED, 7, 3, False)),  # status: not captured
    (S.PENDING_CAPTURE, 7, 3, R.DECLINED, 7, (S.CAPTURE_FAILED, 7, 3, False)),
    # refused: stale or future attempts, terminal orders, orders not yet requested
    (S.PENDING_CAPTURE, 2, 2, R.CAPTURED, 1, None),
    (S.PENDING_CAPTURE, 2, 2, R.RETRYABLE, 3, None),
    (S.CAPTURE_REQUESTED, 0, 0, R.CAPTURED, 1, None),
    (S.CAPTURED, 0, 0, R.DECLINED, 0, None),
    (S.CAPTURED, 2, 2, R.UNKNOWN, 2, None),
    (S.CAPTURE_FAILED, 1, 1, R.CAPTURED, 1, None),
    (S.INITIATED_PENDING, 0, 0, R.CAPTURED, 0, None),
]


@pytest.mark.parametrize(("status", "retry", "key", "result", "attempt", "expected"), TABLE)
def test_apply_result(
    status: PaymentOrderStatus,
    retry: int,
    key: int,
    result: CaptureResult,
    attempt: int,
    expected: tuple[PaymentOrderStatus, int, int, bool] | None,
) -> None:
    o = order(status, retry, key, unknown=status is S.PENDING_CAPTURE and retry > 5)
    now = T0 + timedelta(seconds=5)
    if expected is None:
        assert not o.expects(attempt)
        with pytest.raises(InvariantViolation, match="Invalid transition"):
            o.apply_result(result, attempt=attempt, now=now, max_retries=5, retry_delay_ms=1000)
        assert (o.status, o.retry_count) == (status, retry)
        return
    assert o.expects(attempt)
    assert o.apply_result(result, attempt=attempt, now=now, max_retries=5, retry_delay_ms=1000) is expected[0]
    assert (o.status, o.retry_count, o.psp_key_attempt, o.psp_outcome_unknown) == expected
    assert o.psp_key == f"{o.public_id}:{expected[2]}"
    if o.status is S.PENDING_CAPTURE:
        assert o.next_retry_at == now + timedelta(milliseconds=1000)
        assert o.asks_status(5) is (o.retry_count > 5)
    else:
        assert o.next_retry_at is None


def test_a_key_can_only_capture_once_along_any_path() -> None:
    """Whatever the PSP answers, a new key is only taken after a definite "not captured": so of
    all the keys an order ever used, at most one can have captured."""
    rng = random.Random(3)
    for _ in range(2000):
        o = order(S.CAPTURE_REQUESTED)
        definite_not_captured: set[int] = set()
        while not o.status.terminal:
            key = o.psp_key_attempt
            result = rng.choice(list(R))
            if result is R.RETRYABLE:
                definite_not_captured.add(key)
            o.apply_result(result, attempt=o.retry_count, now=T0, max_retries=5, retry_delay_ms=1)
            if o.status is S.PENDING_CAPTURE and o.psp_key_attempt != key:
                assert key in definite_not_captured  # the old key was never left while it might have captured
            if o.retry_count > 40:
                break


@pytest.mark.parametrize(("status", "retry"), [(S.CAPTURE_REQUESTED, 1), (S.PENDING_CAPTURE, 0)])
def test_inconsistent_states_cannot_be_built(status: PaymentOrderStatus, retry: int) -> None:
    with pytest.raises(InvariantViolation):
        order(status, retry)


@pytest.mark.parametrize(
    ("attempt", "low", "high"),
    [
        (1, 1000, 2000),
        (2, 2000, 4000),
        (3, 4000, 8000),
        (4, 8000, 16000),
        (5, 16000, 32000),
        (6, 30000, 60000),
        (9, 30000, 60000),
    ],
)
def test_equal_jitter_backoff_ranges(attempt: int, low: int, high: int) -> None:
    rng = random.Random(attempt)
    delays = [equal_jitter_backoff_ms(attempt, base_ms=2000, cap_ms=60000, rng=rng) for _ in range(3000)]
    assert min(delays) >= low and max(delays) <= high
    assert min(delays) < low + (high - low) * 0.05 and max(delays) > high - (high - low) * 0.05  # spans the range


def test_backoff_scales_with_configured_base() -> None:
    assert all(25 <= equal_jitter_backoff_ms(1, base_ms=50, cap_ms=500) <= 50 for _ in range(100))
    assert all(250 <= equal_jitter_backoff_ms(8, base_ms=50, cap_ms=500) <= 500 for _ in range(100))


def payment(*amounts: int) -> Payment:
    p = Payment.create(
        payment_id=1,
        buyer_id="b",
        order_id="o",
        total=Money(sum(amounts), Currency.EUR),
        lines=[PaymentLine(10 + i, f"S{i}", Money(a, Currency.EUR)) for i, a in enumerate(amounts)],
        now=T0,
    )
    p.authorize(T0)
    return p


@pytest.mark.parametrize(
    ("outcomes", "status", "captured"),
    [
        ([True, True], PaymentStatus.CAPTURED, 3000),
        ([True, False], PaymentStatus.CAPTURED_PARTIALLY, 1000),
        ([False, False], PaymentStatus.CAPTURE_FAILED, 0),
    ],
)
def test_payment_rolls_up_when_its_last_order_finishes(
    outcomes: list[bool], status: PaymentStatus, captured: int
) -> None:
    p = payment(1000, 2000)
    amounts = [Money(1000, Currency.EUR), Money(2000, Currency.EUR)]
    assert p.record_order_outcome(captured=amounts[0] if outcomes[0] else None, now=T0) is False
    assert p.status is PaymentStatus.AUTHORIZED
    assert p.record_order_outcome(captured=amounts[1] if outcomes[1] else None, now=T0) is True
    assert (p.status, p.captured.amount_minor, p.orders_open) == (status, captured, 0)
    with pytest.raises(InvariantViolation):
        p.record_order_outcome(captured=None, now=T0)
