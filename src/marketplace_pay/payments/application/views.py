"""The payment and refund resources: what POST answers, GET returns and Idempotency-Key replays."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import msgspec

from marketplace_pay.payments.domain.payment import Payment
from marketplace_pay.payments.domain.refund import Refund
from marketplace_pay.shared.ids import public_payment_id, public_payment_order_id
from marketplace_pay.shared.money import AmountView, Money


class PaymentOrderView(msgspec.Struct, rename="camel", frozen=True):
    payment_order_id: str
    seller_id: str
    amount: AmountView
    status: str | None  # None until the order exists (authorization pending, declined, or being split)
    retry_count: int
    updated_at: datetime | None
    refunded_amount: AmountView


class PaymentView(msgspec.Struct, rename="camel", frozen=True):
    payment_id: str
    buyer_id: str
    order_id: str
    status: str
    total_amount: AmountView
    captured_amount: AmountView
    refunded_amount: AmountView
    created_at: datetime
    updated_at: datetime
    payment_orders: list[PaymentOrderView]


class OrderState(msgspec.Struct, frozen=True):
    status: str
    retry_count: int
    updated_at: datetime
    refunded_minor: int = 0


def payment_view(
    payment: Payment, orders: Mapping[int, OrderState] | None = None, *, refunded_minor: int = 0
) -> PaymentView:
    orders = orders or {}
    lines = []
    for line in payment.lines:
        state = orders.get(line.payment_order_id)
        lines.append(
            PaymentOrderView(
                payment_order_id=public_payment_order_id(line.payment_order_id),
                seller_id=line.seller_id,
                amount=AmountView.of(line.amount),
                status=state.status if state else None,
                retry_count=state.retry_count if state else 0,
                updated_at=state.updated_at if state else None,
                refunded_amount=AmountView.of(Money(state.refunded_minor if state else 0, line.amount.currency)),
            )
        )
    return PaymentView(
        payment_id=public_payment_id(payment.payment_id),
        buyer_id=payment.buyer_id,
        order_id=payment.order_id,
        status=payment.status.value,
        total_amount=AmountView.of(payment.total),
        captured_amount=AmountView.of(payment.captured),
        refunded_amount=AmountView.of(Money(refunded_minor, payment.currency)),
        created_at=payment.created_at,
        updated_at=payment.updated_at,
        payment_orders=lines,
    )


class RefundView(msgspec.Struct, rename="camel", frozen=True):
    refund_id: str  # rf_…
    payment_id: str
    payment_order_id: str
    seller_id: str
    amount: AmountView
    status: str  # PENDING, SUCCEEDED, FAILED
    reason: str | None
    created_at: datetime
    updated_at: datetime


def refund_view(refund: Refund) -> RefundView:
    return RefundView(
        refund_id=refund.public_id,
        payment_id=refund.public_payment_id,
        payment_order_id=refund.public_payment_order_id,
        seller_id=refund.seller_id,
        amount=AmountView.of(refund.amount),
        status=refund.status.value,
        reason=refund.reason,
        created_at=refund.created_at,
        updated_at=refund.updated_at,
    )
