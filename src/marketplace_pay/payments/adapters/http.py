"""HTTP adapter of the payments context (SPEC §3.3, §3.4)."""

from __future__ import annotations

import hashlib
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, get, post
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import PathParameter

from marketplace_pay.infra.auth import FINANCE, PAYMENT_READ, PAYMENT_WRITE, principal, requires
from marketplace_pay.infra.codec import decode_error
from marketplace_pay.infra.openapi import json_body
from marketplace_pay.infra.telemetry import current_ids
from marketplace_pay.payments.application.create_payment import CreatePayment, LineRequest, Replayed
from marketplace_pay.payments.application.ports import Keyed
from marketplace_pay.payments.application.views import PaymentView, payment_view
from marketplace_pay.payments.domain.payment import Payment, PaymentStatus
from marketplace_pay.shared.errors import FieldError, NotFoundError, ValidationError
from marketplace_pay.shared.ids import InvalidPublicId, PAYMENT_PREFIX, decode_public_id
from marketplace_pay.shared.money import Currency, Money

MAX_QUANTITY = 2**53 - 1  # exact in every JSON client; 100 of them still fit a bigint
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"\S", description="non-blank, ≤ 128 chars")]
Quantity = Annotated[int, msgspec.Meta(gt=0, le=MAX_QUANTITY, description="minor units (cents)")]


class AmountIn(msgspec.Struct, rename="camel", frozen=True):
    quantity: Quantity
    currency: Currency


class PaymentOrderIn(msgspec.Struct, rename="camel", frozen=True):
    seller_id: Id
    amount: AmountIn


class CreatePaymentRequest(msgspec.Struct, rename="camel", frozen=True):
    buyer_id: Id
    order_id: Id
    total_amount: AmountIn
    payment_orders: Annotated[list[PaymentOrderIn], msgspec.Meta(min_length=1, max_length=100)]


_request_decoder = msgspec.json.Decoder(CreatePaymentRequest)


def _money(amount: AmountIn) -> Money:
    return Money(amount.quantity, amount.currency)


def location(payment_id: str) -> str:
    return f"/api/v1/payments/{payment_id}"


def render(payment: Payment) -> tuple[int, bytes]:
    """The response for a payment: 402 if declined, else 202 (SPEC §3.3)."""
    status = 402 if payment.status is PaymentStatus.DECLINED else 202
    return status, msgspec.json.encode(payment_view(payment))


def _idempotency_key(request: Request[Any, Any, Any]) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not 1 <= len(key) <= 255 or not key.isprintable():
        raise ValidationError(
            "Invalid Idempotency-Key header",
            errors=[FieldError("Idempotency-Key", "must be 1-255 printable characters")],
        )
    return key


def _check_media_type(request: Request[Any, Any, Any]) -> None:
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type != "application/json" and not content_type.endswith("+json"):
        from litestar.exceptions import HTTPException

        raise HTTPException(status_code=415, detail=f"Content-Type must be application/json, not {content_type}")


_PAYMENT_RESPONSES = {
    202: ResponseSpec(PaymentView, description="Authorized, or authorization pending (status PENDING_AUTH)"),
    402: ResponseSpec(PaymentView, description="Declined by the PSP"),
    400: ResponseSpec(None, description="Malformed request (problem+json)"),
    401: ResponseSpec(None, description="No or invalid token"),
    403: ResponseSpec(None, description="Token lacks payment:write"),
    409: ResponseSpec(None, description="Same Idempotency-Key still in progress"),
    422: ResponseSpec(None, description="Unknown/inactive seller, or Idempotency-Key reused with another body"),
    503: ResponseSpec(None, description="Database or Redis unavailable; retry (Retry-After)"),
}


@post(
    "/api/v1/payments",
    guards=[requires(PAYMENT_WRITE)],
    operation_class=json_body(CreatePaymentRequest),
    responses=_PAYMENT_RESPONSES,
    request_max_body_size=1_000_000,
    summary="Create a payment and authorize it at the PSP",
    tags=["payments"],
)
async def create_payment_endpoint(request: Request[Any, Any, Any]) -> Response[PaymentView]:
    container = request.app.state.container
    _check_media_type(request)
    key = _idempotency_key(request)
    raw = await request.body()
    try:
        body = _request_decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise decode_error(exc) from None
    trace_id, traceparent = current_ids()
    keyed = Keyed(
        client_id=principal(request).scope,
        idempotency_key=key,
        fingerprint=hashlib.sha256(msgspec.json.encode(body)).digest() if key is not None else None,
    )
    cmd = CreatePayment(
        buyer_id=body.buyer_id,
        order_id=body.order_id,
        total=_money(body.total_amount),
        lines=[LineRequest(seller_id=o.seller_id, amount=_money(o.amount)) for o in body.payment_orders],
        keyed=keyed,
        trace_id=trace_id,
        traceparent=traceparent,
    )
    result = await container.create_payment(cmd, render=render)
    if isinstance(result, Replayed):
        payment_id = msgspec.json.decode(result.body)["paymentId"]
        return Response(
            content=result.body,  # type: ignore[arg-type]
            status_code=result.status,
            media_type="application/json",
            headers={"Location": location(payment_id), "Idempotent-Replayed": "true"},
        )
    status, content = render(result.payment)
    headers = {"Location": location(result.payment.public_id)}
    if result.replayed:
        headers["Idempotent-Replayed"] = "true"
    return Response(content=content, status_code=status, media_type="application/json", headers=headers)  # type: ignore[arg-type]


def parse_payment_id(public_id: str) -> int:
    try:
        return decode_public_id(PAYMENT_PREFIX, public_id)
    except InvalidPublicId:
        raise NotFoundError(f"Payment {public_id} not found") from None


@get(
    "/api/v1/payments/{payment_id:str}",
    guards=[requires(PAYMENT_READ, PAYMENT_WRITE, FINANCE)],
    summary="Get a payment with its payment orders",
    tags=["payments"],
)
async def get_payment_endpoint(request: Request[Any, Any, Any], payment_id: Annotated[str, PathParameter()]) -> PaymentView:
    view = await request.app.state.container.payment_view(parse_payment_id(payment_id))
    if view is None:
        raise NotFoundError(f"Payment {payment_id} not found")
    return view


ROUTES = [create_payment_endpoint, get_payment_endpoint]
