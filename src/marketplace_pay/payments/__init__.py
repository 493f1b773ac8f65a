"""Payments context: pay-in (authorization), payment orders and capture.

Other contexts and the composition root import only what is exposed here."""

from marketplace_pay.payments.application.capture import CapturePolicy
from marketplace_pay.payments.application.service import Payments, PaymentsPolicy, PaymentsPorts, PaymentViews
from marketplace_pay.payments.domain.events import CapturePaymentOrder, PaymentAuthorized, PaymentOrderFinalized

__all__ = [
    "CapturePaymentOrder",
    "CapturePolicy",
    "PaymentAuthorized",
    "PaymentOrderFinalized",
    "PaymentViews",
    "Payments",
    "PaymentsPolicy",
    "PaymentsPorts",
]
