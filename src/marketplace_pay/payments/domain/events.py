"""Messages of the payments context, with deterministic ids: the same fact always has the same id.

PaymentAuthorized     event    a payment was authorized; its orders are to be captured
CapturePaymentOrder   command  call the PSP again for one order (a due retry)
PaymentOrderFinalized event    an order reached CAPTURED or CAPTURE_FAILED
RefundRequested       event    a refund was accepted; the PSP is to be asked
CallRefund            command  call the PSP again for one refund (a due retry)
RefundSucceeded       event    the PSP refunded: the ledger records REFUND (+ COMMISSION_REFUND)
RefundFailed          event    the PSP declined the refund; nothing moved
"""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

import msgspec

from marketplace_pay.payments.domain.payment_order import PaymentOrderStatus
from marketplace_pay.shared.envelope import Event


class PaymentLineData(msgspec.Struct, frozen=True, rename="camel"):
    payment_order_id: str
    public_payment_order_id: str
    seller_id: str
    amount_minor: int
    currency: str


class PaymentAuthorized(Event, frozen=True):
    event_type: ClassVar[str] = "payment_authorized"
    topic: ClassVar[str] = "payment_authorized_topic"

    payment_id: str
    public_payment_id: str
    buyer_id: str
    order_id: str
    total_amount_minor: int
    currency: str
    payment_lines: list[PaymentLineData]
    authorized_at: datetime

    def event_id(self) -> str:
        return f"{self.public_payment_id}:authorized"

    def partition_key(self) -> str:
        return self.payment_id


class PaymentOrderMessage(Event, frozen=True):
    """Fields every payment-order message carries."""

    payment_order_id: str
    public_payment_order_id: str
    payment_id: str
    public_payment_id: str
    seller_id: str
    amount_minor: int
    currency: str
    timestamp: datetime

    def partition_key(self) -> str:
        return self.payment_order_id


class CapturePaymentOrder(PaymentOrderMessage, frozen=True):
    """Make capture attempt `attempt` of an order (or ask the PSP about it, once its retries are
    used up on unanswered calls)."""

    event_type: ClassVar[str] = "capture_payment_order"
    topic: ClassVar[str] = "payment_order_capture_request_queue_topic"

    attempt: int = 0

    def event_id(self) -> str:
        return f"{self.public_payment_order_id}:capture:{self.attempt}"


class PaymentOrderFinalized(PaymentOrderMessage, frozen=True):
    event_type: ClassVar[str] = "payment_order_finalized"
    topic: ClassVar[str] = "payment_order_finalized_topic"

    status: PaymentOrderStatus  # CAPTURED or CAPTURE_FAILED
    retry_count: int = 0

    def event_id(self) -> str:
        return f"{self.public_payment_order_id}:payment_order_finalized:{self.status}"


class RefundMessage(Event, frozen=True):
    """Fields every refund message carries. Keyed by the payment order, so one order's refunds
    stay in order on the bus."""

    refund_id: str
    public_refund_id: str
    payment_id: str
    public_payment_id: str
    payment_order_id: str
    public_payment_order_id: str
    seller_id: str
    amount_minor: int
    currency: str
    timestamp: datetime

    def partition_key(self) -> str:
        return self.payment_order_id


class RefundRequested(RefundMessage, frozen=True):
    event_type: ClassVar[str] = "refund_requested"
    topic: ClassVar[str] = "refund_requested_topic"

    def event_id(self) -> str:
        return f"{self.public_refund_id}:requested"


class CallRefund(RefundMessage, frozen=True):
    """Make PSP call `attempt` of a refund (or ask the PSP about it, once its retries are used
    up on unanswered calls)."""

    event_type: ClassVar[str] = "call_refund"
    topic: ClassVar[str] = "refund_call_queue_topic"

    attempt: int = 0

    def event_id(self) -> str:
        return f"{self.public_refund_id}:call:{self.attempt}"


class RefundSucceeded(RefundMessage, frozen=True):
    """`order_amount_minor` is what the order captured, `order_refunded_minor` what it has
    refunded with this refund included (the ledger refunds the whole remaining commission when
    nothing captured remains)."""

    event_type: ClassVar[str] = "refund_succeeded"
    topic: ClassVar[str] = "refund_succeeded_topic"

    order_amount_minor: int
    order_refunded_minor: int

    def event_id(self) -> str:
        return f"{self.public_refund_id}:succeeded"


class RefundFailed(RefundMessage, frozen=True):
    event_type: ClassVar[str] = "refund_failed"
    topic: ClassVar[str] = "refund_failed_topic"

    def event_id(self) -> str:
        return f"{self.public_refund_id}:failed"
