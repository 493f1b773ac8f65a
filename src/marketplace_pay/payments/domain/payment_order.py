"""PaymentOrder: the part of a payment owed to one seller, captured on its own (seed §2.4).

    INITIATED_PENDING ──request_capture──▶ CAPTURE_REQUESTED ──capture attempt 0──┐
                                                                                 │
              ┌──────────── retryable (attempt n < max): retry_count = n+1 ◀──────┤
              ▼                                                                  │
      PENDING_CAPTURE ──capture attempt n──▶ retryable again / CAPTURED / CAPTURE_FAILED
                                             (retryable at attempt == max → CAPTURE_FAILED)

`retry_count` is the attempt the order waits for: a PSP result for another attempt is stale.
CAPTURED and CAPTURE_FAILED are terminal and sticky: nothing moves an order out of them (and
the SQL update repeats that guard, as does a trigger).
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from enum import StrEnum

from marketplace_pay.shared.errors import InvariantViolation
from marketplace_pay.shared.ids import public_payment_id, public_payment_order_id
from marketplace_pay.shared.money import Money


class PaymentOrderStatus(StrEnum):
    INITIATED_PENDING = "INITIATED_PENDING"
    CAPTURE_REQUESTED = "CAPTURE_REQUESTED"
    PENDING_CAPTURE = "PENDING_CAPTURE"
    CAPTURED = "CAPTURED"
    CAPTURE_FAILED = "CAPTURE_FAILED"

    @property
    def terminal(self) -> bool:
        return self in (PaymentOrderStatus.CAPTURED, PaymentOrderStatus.CAPTURE_FAILED)

    @property
    def awaiting_capture(self) -> bool:
        return self in (PaymentOrderStatus.CAPTURE_REQUESTED, PaymentOrderStatus.PENDING_CAPTURE)


class CaptureResult(StrEnum):
    """What one capture attempt came back with (the PspResultUpdated `pspStatus`)."""

    CAPTURED = "CAPTURED"
    CAPTURE_FAILED = "CAPTURE_FAILED"  # declined for good
    PENDING_CAPTURE = "PENDING_CAPTURE"  # retryable: soft decline, PSP busy, timeout


def equal_jitter_backoff_ms(attempt: int, *, base_ms: int, cap_ms: int, rng: random.Random | None = None) -> int:
    """Seed §7.1: capped = min(base·2^(attempt-1), cap); delay ∈ [capped/2, capped]."""
    exp = base_ms * (2 ** max(attempt - 1, 0))
    capped = min(exp, cap_ms)
    half = capped // 2
    return half + (rng or random).randint(0, half)


class PaymentOrder:
    __slots__ = (
        "payment_order_id",
        "payment_id",
        "seller_id",
        "amount",
        "status",
        "retry_count",
        "next_retry_at",
        "created_at",
        "updated_at",
    )

    def __init__(
        self,
        *,
        payment_order_id: int,
        payment_id: int,
        seller_id: str,
        amount: Money,
        status: PaymentOrderStatus,
        retry_count: int,
        created_at: datetime,
        updated_at: datetime,
        next_retry_at: datetime | None = None,
    ) -> None:
        if amount.amount_minor <= 0:
            raise InvariantViolation("a payment order's amount must be positive")
        if not seller_id.strip():
            raise InvariantViolation("seller id cannot be blank")
        if retry_count < 0:
            raise InvariantViolation("retry count cannot be negative")
        if status is PaymentOrderStatus.CAPTURE_REQUESTED and retry_count != 0:
            raise InvariantViolation("CAPTURE_REQUESTED means the first attempt: retry count 0")
        if status is PaymentOrderStatus.PENDING_CAPTURE and retry_count == 0:
            raise InvariantViolation("PENDING_CAPTURE means a retry: retry count > 0")
        self.payment_order_id = payment_order_id
        self.payment_id = payment_id
        self.seller_id = seller_id
        self.amount = amount
        self.status = status
        self.retry_count = retry_count
        self.next_retry_at = next_retry_at
        self.created_at = created_at
        self.updated_at = updated_at

    @classmethod
    def create(cls, *, payment_order_id: int, payment_id: int, seller_id: str, amount: Money, now: datetime) -> PaymentOrder:
        return cls(
            payment_order_id=payment_order_id,
            payment_id=payment_id,
            seller_id=seller_id,
            amount=amount,
            status=PaymentOrderStatus.INITIATED_PENDING,
            retry_count=0,
            created_at=now,
            updated_at=now,
        )

    @property
    def public_id(self) -> str:
        return public_payment_order_id(self.payment_order_id)

    @property
    def public_payment_id(self) -> str:
        return public_payment_id(self.payment_id)

    def _refuse(self, action: str) -> InvariantViolation:
        return InvariantViolation(
            f"Invalid transition: cannot {action} payment order {self.public_id} in {self.status} (retry {self.retry_count})"
        )

    def _move(self, status: PaymentOrderStatus, now: datetime) -> None:
        self.status = status
        self.updated_at = max(self.updated_at, now)

    def request_capture(self, now: datetime) -> None:
        if self.status is not PaymentOrderStatus.INITIATED_PENDING or self.retry_count != 0:
            raise self._refuse("request capture of")
        self._move(PaymentOrderStatus.CAPTURE_REQUESTED, now)

    def expects(self, attempt: int) -> bool:
        """A capture attempt (or its result) applies only to a non-terminal order waiting for it."""
        return self.status.awaiting_capture and self.retry_count == attempt

    def apply_result(
        self, result: CaptureResult, *, attempt: int, now: datetime, max_retries: int, retry_delay_ms: int
    ) -> PaymentOrderStatus:
        """Apply the result of capture attempt `attempt`; returns the new status.

        Retryable before `max_retries` retries: PENDING_CAPTURE, retry_count = attempt + 1, due
        after `retry_delay_ms`. Retryable at attempt == max_retries (the 6th PSP call with the
        default 5): CAPTURE_FAILED."""
        if not self.expects(attempt):
            raise self._refuse(f"apply the result of attempt {attempt} to")
        if result is CaptureResult.CAPTURED:
            self._move(PaymentOrderStatus.CAPTURED, now)
        elif result is CaptureResult.CAPTURE_FAILED or attempt >= max_retries:
            self._move(PaymentOrderStatus.CAPTURE_FAILED, now)
        else:
            self.retry_count = attempt + 1
            self.next_retry_at = now + timedelta(milliseconds=retry_delay_ms)
            self._move(PaymentOrderStatus.PENDING_CAPTURE, now)
        if self.status.terminal:
            self.next_retry_at = None
        return self.status
