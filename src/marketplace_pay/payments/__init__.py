"""Payments context: pay-in (authorization), payment orders and capture.

Other contexts import only what is exposed here."""

from marketplace_pay.payments.domain.events import (
    PaymentAuthorized,
    PaymentOrderCaptureCommand,
    PaymentOrderCreated,
    PaymentOrderFinalized,
    PaymentOrderPspResultUpdated,
)

__all__ = [
    "PaymentAuthorized",
    "PaymentOrderCaptureCommand",
    "PaymentOrderCreated",
    "PaymentOrderFinalized",
    "PaymentOrderPspResultUpdated",
]
