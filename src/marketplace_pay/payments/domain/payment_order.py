"""PaymentOrder: the part of a payment owed to one seller, captured on its own.

    INITIATED_PENDING ──request_capture──▶ CAPTURE_REQUESTED ──attempt 0──┐
                                                                         ▼
          PENDING_CAPTURE(n) ◀── retryable or no answer ── attempt n ──▶ CAPTURED | CAPTURE_FAILED

`retry_count` is the attempt the order waits for: a PSP answer for another attempt is stale.
CAPTURED and CAPTURE_FAILED are terminal and sticky: nothing moves an order out of them (and
the SQL update repeats that guard, as does a trigger).

**No answer is not a failure.** A PSP may have captured the money although its answer never
arrived. So each attempt calls the PSP with an idempotency key, and the key changes only after a
*definite* "not captured, try again" answer; after an unanswered call the next attempt repeats
the same key, which an idempotent PSP answers with what it did the first time. An order is never
failed while its last answer is unknown: once the retries are used up on unanswered calls, the
order keeps asking the PSP for the capture's status (with back-off) until it knows. So at most one
key can ever capture, and the order ends in the state the PSP is in.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum

from marketplace_pay.shared.errors import InvariantViolation
from marketplace_pay.shared.ids import public_payment_id, public_payment_order_id
from marketplace_pay.shared.money import Money
from marketplace_pay.shared.remote_call import CallResult, NextStep, asks_status, next_step


class PaymentOrderStatus(StrEnum):
    INITIATED_PENDING = "INITIATED_PENDING"  # created, not yet asked to capture (never stored)
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
    """What one PSP call told us about the capture."""

    CAPTURED = "CAPTURED"
    DECLINED = "DECLINED"  # final: the PSP refuses this capture for good
    RETRYABLE = "RETRYABLE"  # definitely not captured; a new attempt, with a new key, may succeed
    UNKNOWN = "UNKNOWN"  # no answer (timeout, unreachable): it may have been captured


_CALL_RESULT = {
    CaptureResult.CAPTURED: CallResult.DONE,
    CaptureResult.DECLINED: CallResult.REFUSED,
    CaptureResult.RETRYABLE: CallResult.RETRYABLE,
    CaptureResult.UNKNOWN: CallResult.UNKNOWN,
}


class PaymentOrder:
    __slots__ = (
        "amount",
        "created_at",
        "next_retry_at",
        "payment_id",
        "payment_order_id",
        "psp_key_attempt",
        "psp_outcome_unknown",
        "retry_count",
        "seller_id",
        "status",
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
        psp_key_attempt: int = 0,
        psp_outcome_unknown: bool = False,
        next_retry_at: datetime | None = None,
    ) -> None:
        if amount.amount_minor <= 0:
            raise InvariantViolation("a payment order's amount must be positive")
        if not seller_id.strip():
            raise InvariantViolation("seller id cannot be blank")
        if retry_count < 0 or not 0 <= psp_key_attempt <= retry_count:
            raise InvariantViolation("0 <= PSP key attempt <= retry count")
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
        self.psp_key_attempt = psp_key_attempt
        self.psp_outcome_unknown = psp_outcome_unknown
        self.next_retry_at = next_retry_at
        self.created_at = created_at
        self.updated_at = updated_at

    @classmethod
    def create(
        cls, *, payment_order_id: int, payment_id: int, seller_id: str, amount: Money, now: datetime
    ) -> PaymentOrder:
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

    @property
    def psp_key(self) -> str:
        """The PSP idempotency key of the next call: `<po_…>:<attempt that first used it>`."""
        return f"{self.public_id}:{self.psp_key_attempt}"

    def state(self) -> tuple[PaymentOrderStatus, int]:
        """What a guarded update compares with: (status, retry count)."""
        return self.status, self.retry_count

    def _refuse(self, action: str) -> InvariantViolation:
        return InvariantViolation(
            f"Invalid transition: cannot {action} payment order {self.public_id} "
            f"in {self.status} (retry {self.retry_count})"
        )

    def _move(self, status: PaymentOrderStatus, now: datetime) -> None:
        self.status = status
        self.updated_at = max(self.updated_at, now)

    def request_capture(self, now: datetime) -> None:
        if self.status is not PaymentOrderStatus.INITIATED_PENDING or self.retry_count != 0:
            raise self._refuse("request capture of")
        self._move(PaymentOrderStatus.CAPTURE_REQUESTED, now)

    def expects(self, attempt: int) -> bool:
        """A capture attempt (or its answer) applies only to a non-terminal order waiting for it."""
        return self.status.awaiting_capture and self.retry_count == attempt

    def asks_status(self, max_retries: int) -> bool:
        """The retries are used up on unanswered calls: the next call asks the PSP what it did."""
        return asks_status(self.retry_count, max_retries)

    def apply_result(
        self, result: CaptureResult, *, attempt: int, now: datetime, max_retries: int, retry_delay_ms: int
    ) -> PaymentOrderStatus:
        """Apply what attempt `attempt` learnt from the PSP; returns the new status.

        CAPTURED / DECLINED end the order. RETRYABLE (definitely not captured): a new attempt with
        a new key, or CAPTURE_FAILED once `max_retries` retries are used. UNKNOWN: a new attempt
        with the same key — past `max_retries` it asks for the capture's status instead — and
        never a failure. An answer to a status query that is not CAPTURED or unknown means the
        money was not taken: CAPTURE_FAILED."""
        if not self.expects(attempt):
            raise self._refuse(f"apply the result of attempt {attempt} to")
        step = next_step(_CALL_RESULT[result], attempt=attempt, max_retries=max_retries)
        if step is NextStep.DONE:
            self._finish(PaymentOrderStatus.CAPTURED, now)
        elif step is NextStep.FAILED:
            self._finish(PaymentOrderStatus.CAPTURE_FAILED, now)
        else:
            new_key = step is NextStep.RETRY_NEW_KEY
            self._retry(attempt, new_key=new_key, unknown=not new_key, now=now, delay_ms=retry_delay_ms)
        return self.status

    def _finish(self, status: PaymentOrderStatus, now: datetime) -> None:
        self.psp_outcome_unknown = False
        self.next_retry_at = None
        self._move(status, now)

    def _retry(self, attempt: int, *, new_key: bool, unknown: bool, now: datetime, delay_ms: int) -> None:
        self.retry_count = attempt + 1
        if new_key:
            self.psp_key_attempt = self.retry_count
        self.psp_outcome_unknown = unknown
        self.next_retry_at = now + timedelta(milliseconds=delay_ms)
        self._move(PaymentOrderStatus.PENDING_CAPTURE, now)
