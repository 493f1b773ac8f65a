"""Payments context: pay-in (authorization), payment orders and capture.

Other contexts import only what is exposed here."""

from marketplace_pay.payments.domain.events import CapturePaymentOrder, PaymentAuthorized, PaymentOrderFinalized

__all__ = ["CapturePaymentOrder", "PaymentAuthorized", "PaymentOrderFinalized"]
