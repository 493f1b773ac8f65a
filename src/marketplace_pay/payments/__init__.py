"""Payments context: pay-in (authorization), payment orders and capture.

Other contexts and the composition root import only what is exposed here."""

from marketplace_pay.payments.application.capture import CAPTURE_AUTHORIZED, CapturePolicy
from marketplace_pay.payments.application.refunds import RefundPolicy
from marketplace_pay.payments.application.service import Payments, PaymentsPolicy, PaymentsPorts, PaymentViews
from marketplace_pay.payments.domain.events import (
    CapturePaymentOrder,
    PaymentAuthorized,
    PaymentOrderFinalized,
    RefundFailed,
    RefundSucceeded,
)
from marketplace_pay.payments.domain.payment_order import PaymentOrderStatus

__all__ = [
    "CAPTURE_AUTHORIZED",
    "CapturePaymentOrder",
    "CapturePolicy",
    "PaymentAuthorized",
    "PaymentOrderFinalized",
    "PaymentOrderStatus",
    "PaymentViews",
    "Payments",
    "PaymentsPolicy",
    "PaymentsPorts",
    "RefundFailed",
    "RefundPolicy",
    "RefundSucceeded",
]
