"""The Payment aggregate: one shopper payment, split into one line per seller.

    PENDING_AUTH ──authorize──▶ AUTHORIZED ──(every order terminal)──▶ CAPTURED
          │                                                         ├▶ CAPTURED_PARTIALLY
          └──decline──▶ DECLINED                                    └▶ CAPTURE_FAILED

    CAPTURED / CAPTURED_PARTIALLY ──refund succeeded──▶ PARTIALLY_REFUNDED ──rest refunded──▶ REFUNDED

A refund changes the status only once every order is finished (refunds/SQL do the roll-up);
`refundedAmount` says what went back at any time.

The ids of the payment orders are allocated with the payment and travel in
`PaymentAuthorized`, so expanding the payment into orders is a pure function of the event.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

import msgspec

from marketplace_pay.payments.domain.events import PaymentAuthorized, PaymentLineData
from marketplace_pay.shared.errors import InvariantViolation
from marketplace_pay.shared.ids import public_payment_id, public_payment_order_id
from marketplace_pay.shared.money import Currency, Money

MAX_LINES = 100


class PaymentStatus(StrEnum):
    PENDING_AUTH = "PENDING_AUTH"
    AUTHORIZED = "AUTHORIZED"
    DECLINED = "DECLINED"
    CAPTURED = "CAPTURED"
    CAPTURED_PARTIALLY = "CAPTURED_PARTIALLY"
    CAPTURE_FAILED = "CAPTURE_FAILED"
    PARTIALLY_REFUNDED = "PARTIALLY_REFUNDED"  # orders all finished, part of what was captured refunded
    REFUNDED = "REFUNDED"  # orders all finished, everything captured refunded


class PaymentLine(msgspec.Struct, frozen=True):
    payment_order_id: int
    seller_id: str
    amount: Money


class Payment:
    __slots__ = (
        "buyer_id",
        "captured",
        "created_at",
        "events",
        "lines",
        "order_id",
        "orders_open",
        "payment_id",
        "status",
        "total",
        "updated_at",
    )

    def __init__(
        self,
        *,
        payment_id: int,
        buyer_id: str,
        order_id: str,
        total: Money,
        captured: Money,
        status: PaymentStatus,
        lines: list[PaymentLine],
        created_at: datetime,
        updated_at: datetime,
        orders_open: int | None = None,
    ) -> None:
        self.payment_id = payment_id
        self.buyer_id = buyer_id
        self.order_id = order_id
        self.total = total
        self.captured = captured
        self.status = status
        self.lines = lines
        self.orders_open = len(lines) if orders_open is None else orders_open
        self.created_at = created_at
        self.updated_at = updated_at
        self.events: list[PaymentAuthorized] = []

    @classmethod
    def create(
        cls,
        *,
        payment_id: int,
        buyer_id: str,
        order_id: str,
        total: Money,
        lines: list[PaymentLine],
        now: datetime,
    ) -> Payment:
        if not lines or len(lines) > MAX_LINES:
            raise InvariantViolation(f"a payment has 1..{MAX_LINES} lines, got {len(lines)}")
        if total.amount_minor <= 0:
            raise InvariantViolation("total amount must be positive")
        if len({line.seller_id for line in lines}) != len(lines):
            raise InvariantViolation("a seller appears twice in one payment")
        if any(line.amount.currency != total.currency for line in lines):
            raise InvariantViolation("every line must be in the payment's currency")
        if any(line.amount.amount_minor <= 0 for line in lines):
            raise InvariantViolation("line amounts must be positive")
        if sum(line.amount.amount_minor for line in lines) != total.amount_minor:
            raise InvariantViolation("lines must add up to the total")
        return cls(
            payment_id=payment_id,
            buyer_id=buyer_id,
            order_id=order_id,
            total=total,
            captured=Money.zero(total.currency),
            status=PaymentStatus.PENDING_AUTH,
            lines=lines,
            created_at=now,
            updated_at=now,
        )

    @property
    def currency(self) -> Currency:
        return self.total.currency

    @property
    def public_id(self) -> str:
        return public_payment_id(self.payment_id)

    def authorize(self, now: datetime) -> None:
        if self.status is not PaymentStatus.PENDING_AUTH:
            raise InvariantViolation(f"payment can only be authorized from PENDING_AUTH, is {self.status}")
        self.status = PaymentStatus.AUTHORIZED
        self.updated_at = now
        self.events.append(
            PaymentAuthorized(
                payment_id=str(self.payment_id),
                public_payment_id=self.public_id,
                buyer_id=self.buyer_id,
                order_id=self.order_id,
                total_amount_minor=self.total.amount_minor,
                currency=self.currency.value,
                payment_lines=[
                    PaymentLineData(
                        payment_order_id=str(line.payment_order_id),
                        public_payment_order_id=public_payment_order_id(line.payment_order_id),
                        seller_id=line.seller_id,
                        amount_minor=line.amount.amount_minor,
                        currency=line.amount.currency.value,
                    )
                    for line in self.lines
                ],
                authorized_at=now,
            )
        )

    def decline(self, now: datetime) -> None:
        if self.status is not PaymentStatus.PENDING_AUTH:
            raise InvariantViolation(f"payment can only be declined from PENDING_AUTH, is {self.status}")
        self.status = PaymentStatus.DECLINED
        self.updated_at = now

    def record_order_outcome(self, *, captured: Money | None, now: datetime) -> bool:
        """One of the payment's orders reached a terminal state (captured: its amount, else
        None). Returns True when that was the last one: the payment is then CAPTURED (all
        captured), CAPTURED_PARTIALLY (some) or CAPTURE_FAILED (none)."""
        if self.status is not PaymentStatus.AUTHORIZED or self.orders_open <= 0:
            raise InvariantViolation(f"payment {self.public_id} has no open order ({self.status})")
        if captured is not None:
            total = self.captured + captured
            if total.amount_minor > self.total.amount_minor:
                raise InvariantViolation("captured amount cannot exceed the total")
            self.captured = total
        self.orders_open -= 1
        self.updated_at = max(self.updated_at, now)
        if self.orders_open:
            return False
        if self.captured == self.total:
            self.status = PaymentStatus.CAPTURED
        elif self.captured.amount_minor > 0:
            self.status = PaymentStatus.CAPTURED_PARTIALLY
        else:
            self.status = PaymentStatus.CAPTURE_FAILED
        return True

    def pull_events(self) -> list[PaymentAuthorized]:
        events, self.events = self.events, []
        return events
