"""Events of the payments context (seed §4.3: types, topics, keys, deterministic ids)."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar

import msgspec

from marketplace_pay.shared.envelope import Event


class PaymentLineData(msgspec.Struct, frozen=True, rename="camel"):
    payment_order_id: str
    public_payment_order_id: str
    seller_id: str
    amount_value: int
    currency: str


class PaymentAuthorized(Event, frozen=True):
    event_type: ClassVar[str] = "payment_authorized"
    topic: ClassVar[str] = "payment_authorized_topic"

    payment_id: str
    public_payment_id: str
    buyer_id: str
    order_id: str
    total_amount_value: int
    currency: str
    payment_lines: list[PaymentLineData]
    authorized_at: datetime

    def event_id(self) -> str:
        return f"{self.public_payment_id}:authorized"

    def partition_key(self) -> str:
        return self.payment_id


class PaymentOrderEvent(Event, frozen=True):
    """Fields every payment-order event carries (seed PaymentOrderBaseEvent)."""

    payment_order_id: str
    public_payment_order_id: str
    payment_id: str
    public_payment_id: str
    seller_id: str
    amount_value: int
    currency: str
    timestamp: datetime

    def partition_key(self) -> str:
        return self.payment_order_id


class PaymentOrderCreated(PaymentOrderEvent, frozen=True):
    event_type: ClassVar[str] = "payment_order_created"
    topic: ClassVar[str] = "payment_order_created_topic"

    def event_id(self) -> str:
        return f"{self.public_payment_order_id}:payment_order_created"


class PaymentOrderCaptureCommand(PaymentOrderEvent, frozen=True):
    event_type: ClassVar[str] = "payment_order_capture_requested"
    topic: ClassVar[str] = "payment_order_capture_request_queue_topic"

    attempt: int = 0

    def event_id(self) -> str:
        return f"{self.public_payment_order_id}:payment_order_capture_requested:{self.attempt}"


class PaymentOrderPspResultUpdated(PaymentOrderEvent, frozen=True):
    event_type: ClassVar[str] = "payment_order_psp_result_updated"
    topic: ClassVar[str] = "payment_order_psp_result_updated_topic"

    psp_status: str = ""
    attempt: int = 0
    latency_ms: int = 0
    reason: str | None = None

    def event_id(self) -> str:
        return f"{self.public_payment_order_id}:payment_order_psp_result_updated:{self.psp_status}:{self.attempt}"


class PaymentOrderFinalized(PaymentOrderEvent, frozen=True):
    event_type: ClassVar[str] = "payment_order_finalized"
    topic: ClassVar[str] = "payment_order_finalized_topic"

    status: str = ""
    retry_count: int = 0

    def event_id(self) -> str:
        return f"{self.public_payment_order_id}:payment_order_finalized:{self.status}"
