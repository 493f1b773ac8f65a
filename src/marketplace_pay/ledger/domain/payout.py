"""Payout: money a seller is owed, on its way to the seller's bank account.

    PENDING(attempt n) ──bank: paid──▶ PAID                 PAYOUT_PAID: PAYOUTS_IN_TRANSIT → PLATFORM_CASH
                       ──bank: failed─▶ FAILED              PAYOUT_RETURNED: PAYOUTS_IN_TRANSIT → the seller
                       ──bank: not paid, try again──▶ PENDING(n+1), new key   (FAILED after `max_retries`)
                       ──no answer──▶ PENDING(n+1), same key (past `max_retries`: a status query)

The PAYOUT journal (the seller's MERCHANT_PAYABLE → PAYOUTS_IN_TRANSIT) is written when the
payout is created, so the money is no longer available from that moment. PAID and FAILED are
final (the SQL update repeats the guard, as does a trigger).

**No answer is not a failure.** The bank may have sent the money although its answer never
arrived. Each call carries an idempotency key that changes only after a *definite* "not paid, try
again"; after an unanswered call the next one repeats the key, which the bank answers with what
it did the first time. A payout is never FAILED while its last answer is unknown, so the money
is never both sent and returned.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum

from marketplace_pay.shared.errors import InvariantViolation
from marketplace_pay.shared.ids import public_payout_id
from marketplace_pay.shared.money import Money
from marketplace_pay.shared.remote_call import CallResult, NextStep, asks_status, next_step


class PayoutStatus(StrEnum):
    PENDING = "PENDING"
    PAID = "PAID"
    FAILED = "FAILED"

    @property
    def final(self) -> bool:
        return self is not PayoutStatus.PENDING


class BankResult(StrEnum):
    """What one call to the bank told us about the payout."""

    PAID = "PAID"
    FAILED = "FAILED"  # final: the bank refuses this payout for good (the money goes back)
    RETRYABLE = "RETRYABLE"  # definitely not paid; a new call, with a new key, may succeed
    UNKNOWN = "UNKNOWN"  # no answer (timeout, unreachable): it may have been paid


_CALL_RESULT = {
    BankResult.PAID: CallResult.DONE,
    BankResult.FAILED: CallResult.REFUSED,
    BankResult.RETRYABLE: CallResult.RETRYABLE,
    BankResult.UNKNOWN: CallResult.UNKNOWN,
}


class Payout:
    __slots__ = (
        "amount",
        "attempt",
        "bank_key_attempt",
        "bank_outcome_unknown",
        "created_at",
        "next_retry_at",
        "payout_id",
        "seller_id",
        "status",
        "updated_at",
    )

    def __init__(
        self,
        *,
        payout_id: int,
        seller_id: str,
        amount: Money,
        status: PayoutStatus,
        created_at: datetime,
        updated_at: datetime,
        attempt: int = 0,
        bank_key_attempt: int = 0,
        bank_outcome_unknown: bool = False,
        next_retry_at: datetime | None = None,
    ) -> None:
        if amount.amount_minor <= 0:
            raise InvariantViolation("a payout's amount must be positive")
        if not 0 <= bank_key_attempt <= attempt:
            raise InvariantViolation("0 <= bank key attempt <= attempt")
        self.payout_id = payout_id
        self.seller_id = seller_id
        self.amount = amount
        self.status = status
        self.attempt = attempt
        self.bank_key_attempt = bank_key_attempt
        self.bank_outcome_unknown = bank_outcome_unknown
        self.next_retry_at = next_retry_at
        self.created_at = created_at
        self.updated_at = updated_at

    @classmethod
    def create(cls, *, payout_id: int, seller_id: str, amount: Money, now: datetime) -> Payout:
        return cls(
            payout_id=payout_id,
            seller_id=seller_id,
            amount=amount,
            status=PayoutStatus.PENDING,
            created_at=now,
            updated_at=now,
        )

    @property
    def public_id(self) -> str:
        return public_payout_id(self.payout_id)

    @property
    def bank_key(self) -> str:
        """The bank idempotency key of the next call: `<pout_…>:<attempt that first used it>`."""
        return f"{self.public_id}:{self.bank_key_attempt}"

    def state(self) -> tuple[PayoutStatus, int]:
        """What a guarded update compares with: (status, attempt)."""
        return self.status, self.attempt

    def expects(self, attempt: int) -> bool:
        """A bank call (or its answer) applies only to a pending payout waiting for it."""
        return self.status is PayoutStatus.PENDING and self.attempt == attempt

    def asks_status(self, max_retries: int) -> bool:
        """The retries are used up on unanswered calls: the next call asks what the bank did."""
        return asks_status(self.attempt, max_retries)

    def apply(
        self, result: BankResult, *, attempt: int, now: datetime, max_retries: int, retry_delay_ms: int
    ) -> PayoutStatus:
        """Apply what call `attempt` learnt from the bank; returns the new status.

        PAID / FAILED are final. RETRYABLE (definitely not paid): a new call with a new key, or
        FAILED once `max_retries` retries are used. UNKNOWN: a new call with the same key — past
        `max_retries` a status query — never a failure. A status query that answers anything but
        PAID or unknown means the money was not sent: FAILED."""
        if not self.expects(attempt):
            raise InvariantViolation(
                f"cannot apply the bank's answer to call {attempt} of payout {self.public_id} "
                f"({self.status}, waiting for call {self.attempt})"
            )
        step = next_step(_CALL_RESULT[result], attempt=attempt, max_retries=max_retries)
        if step is NextStep.DONE:
            self._finish(PayoutStatus.PAID, now)
        elif step is NextStep.FAILED:
            self._finish(PayoutStatus.FAILED, now)
        else:
            new_key = step is NextStep.RETRY_NEW_KEY
            self._retry(new_key=new_key, unknown=not new_key, now=now, delay_ms=retry_delay_ms)
        return self.status

    def _finish(self, status: PayoutStatus, now: datetime) -> None:
        self.status = status
        self.bank_outcome_unknown = False
        self.next_retry_at = None
        self.updated_at = max(self.updated_at, now)

    def _retry(self, *, new_key: bool, unknown: bool, now: datetime, delay_ms: int) -> None:
        self.attempt += 1
        if new_key:
            self.bank_key_attempt = self.attempt
        self.bank_outcome_unknown = unknown
        self.next_retry_at = now + timedelta(milliseconds=delay_ms)
        self.updated_at = max(self.updated_at, now)
