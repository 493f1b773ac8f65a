"""Refund: money of one captured payment order given back to the shopper through the PSP.

    PENDING(attempt n) ──PSP: refunded──▶ SUCCEEDED      REFUND (+ COMMISSION_REFUND) in the ledger
                       ──PSP: declined──▶ FAILED         nothing moved; the amount can be refunded again
                       ──PSP: not refunded, try again──▶ PENDING(n+1), new key   (FAILED after `max_retries`)
                       ──no answer──▶ PENDING(n+1), same key (past `max_retries`: a status query)

While PENDING, the amount is reserved on the order, so the order never refunds more than it
captured, whatever runs concurrently. A refund is never FAILED while its last answer is unknown:
the PSP may have refunded although its answer never arrived, and the next call repeats the key,
which the PSP answers with what it did the first time.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum

from marketplace_pay.shared.errors import InvariantViolation
from marketplace_pay.shared.ids import public_payment_id, public_payment_order_id, public_refund_id
from marketplace_pay.shared.money import Money
from marketplace_pay.shared.remote_call import CallResult, NextStep, asks_status, next_step


class RefundStatus(StrEnum):
    PENDING = "PENDING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"

    @property
    def final(self) -> bool:
        return self is not RefundStatus.PENDING


class Refund:
    __slots__ = (
        "amount",
        "attempt",
        "created_at",
        "next_retry_at",
        "payment_id",
        "payment_order_id",
        "psp_key_attempt",
        "psp_outcome_unknown",
        "reason",
        "refund_id",
        "seller_id",
        "status",
        "updated_at",
    )

    def __init__(
        self,
        *,
        refund_id: int,
        payment_id: int,
        payment_order_id: int,
        seller_id: str,
        amount: Money,
        reason: str | None,
        status: RefundStatus,
        created_at: datetime,
        updated_at: datetime,
        attempt: int = 0,
        psp_key_attempt: int = 0,
        psp_outcome_unknown: bool = False,
        next_retry_at: datetime | None = None,
    ) -> None:
        if amount.amount_minor <= 0:
            raise InvariantViolation("a refund's amount must be positive")
        if not 0 <= psp_key_attempt <= attempt:
            raise InvariantViolation("0 <= PSP key attempt <= attempt")
        self.refund_id = refund_id
        self.payment_id = payment_id
        self.payment_order_id = payment_order_id
        self.seller_id = seller_id
        self.amount = amount
        self.reason = reason
        self.status = status
        self.attempt = attempt
        self.psp_key_attempt = psp_key_attempt
        self.psp_outcome_unknown = psp_outcome_unknown
        self.next_retry_at = next_retry_at
        self.created_at = created_at
        self.updated_at = updated_at

    @property
    def public_id(self) -> str:
        return public_refund_id(self.refund_id)

    @property
    def public_payment_id(self) -> str:
        return public_payment_id(self.payment_id)

    @property
    def public_payment_order_id(self) -> str:
        return public_payment_order_id(self.payment_order_id)

    @property
    def psp_key(self) -> str:
        """The PSP idempotency key of the next call: `<rf_…>:<attempt that first used it>`."""
        return f"{self.public_id}:{self.psp_key_attempt}"

    def state(self) -> tuple[RefundStatus, int]:
        """What a guarded update compares with: (status, attempt)."""
        return self.status, self.attempt

    def expects(self, attempt: int) -> bool:
        """A PSP call (or its answer) applies only to a pending refund waiting for it."""
        return self.status is RefundStatus.PENDING and self.attempt == attempt

    def asks_status(self, max_retries: int) -> bool:
        return asks_status(self.attempt, max_retries)

    def apply(
        self, result: CallResult, *, attempt: int, now: datetime, max_retries: int, retry_delay_ms: int
    ) -> RefundStatus:
        """Apply what call `attempt` learnt from the PSP; returns the new status."""
        if not self.expects(attempt):
            raise InvariantViolation(
                f"cannot apply the PSP's answer to call {attempt} of refund {self.public_id} "
                f"({self.status}, waiting for call {self.attempt})"
            )
        step = next_step(result, attempt=attempt, max_retries=max_retries)
        if step is NextStep.DONE:
            self._finish(RefundStatus.SUCCEEDED, now)
        elif step is NextStep.FAILED:
            self._finish(RefundStatus.FAILED, now)
        else:
            self.attempt += 1
            if step is NextStep.RETRY_NEW_KEY:
                self.psp_key_attempt = self.attempt
            self.psp_outcome_unknown = step is NextStep.RETRY_SAME_KEY
            self.next_retry_at = now + timedelta(milliseconds=retry_delay_ms)
            self.updated_at = max(self.updated_at, now)
        return self.status

    def _finish(self, status: RefundStatus, now: datetime) -> None:
        self.status = status
        self.psp_outcome_unknown = False
        self.next_retry_at = None
        self.updated_at = max(self.updated_at, now)
