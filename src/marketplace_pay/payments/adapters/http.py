"""HTTP adapter of the payments context: POST and GET /api/v1/payments."""

from __future__ import annotations

import hashlib
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, get, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import PathParameter

from marketplace_pay.infra.auth import FINANCE, PAYMENT_READ, PAYMENT_WRITE, principal, requires
from marketplace_pay.infra.codec import decode_body
from marketplace_pay.infra.openapi import (
    IDEMPOTENCY_KEY_HEADER,
    LOCATION,
    REPLAYED,
    documented,
    problems,
    public_id_schema,
)
from marketplace_pay.infra.params import idempotency_key_of, keyed_response, path_public_id, require_json
from marketplace_pay.infra.telemetry import current_ids
from marketplace_pay.payments.application.create_payment import CreatePayment, LineRequest, Replayed
from marketplace_pay.payments.application.ports import Keyed
from marketplace_pay.payments.application.service import Payments
from marketplace_pay.payments.application.views import PaymentView, payment_view
from marketplace_pay.payments.domain.payment import Payment, PaymentStatus
from marketplace_pay.shared.client_ids import ClientId, check_client_id
from marketplace_pay.shared.errors import NotFoundError
from marketplace_pay.shared.ids import PAYMENT_PREFIX
from marketplace_pay.shared.money import Currency, Money

MAX_QUANTITY = 2**53 - 1  # exact in every JSON client; 100 of them still fit a bigint
Quantity = Annotated[int, msgspec.Meta(gt=0, le=MAX_QUANTITY, description="minor units (cents)")]


class AmountIn(msgspec.Struct, rename="camel", frozen=True):
    quantity: Quantity
    currency: Currency


class PaymentOrderIn(msgspec.Struct, rename="camel", frozen=True):
    seller_id: ClientId
    amount: AmountIn

    def __post_init__(self) -> None:
        check_client_id("sellerId", self.seller_id)


class CreatePaymentRequest(msgspec.Struct, rename="camel", frozen=True):
    buyer_id: ClientId
    order_id: ClientId
    total_amount: AmountIn
    payment_orders: Annotated[list[PaymentOrderIn], msgspec.Meta(min_length=1, max_length=100)]

    def __post_init__(self) -> None:
        check_client_id("buyerId", self.buyer_id)
        check_client_id("orderId", self.order_id)


def _money(amount: AmountIn) -> Money:
    return Money(amount.quantity, amount.currency)


def location(payment_id: str) -> str:
    return f"/api/v1/payments/{payment_id}"


def render(payment: Payment) -> tuple[int, bytes]:
    """The response for a payment: 402 if declined, else 202 (authorized, or pending authorization)."""
    status = 402 if payment.status is PaymentStatus.DECLINED else 202
    return status, msgspec.json.encode(payment_view(payment))


PAYMENT_ID_PATH = public_id_schema(PAYMENT_PREFIX, "pay_ + 11 base64url characters")
_EXAMPLE = {
    "buyerId": "BUYER-1",
    "orderId": "ORDER-1",
    "totalAmount": {"quantity": 3000, "currency": "EUR"},
    "paymentOrders": [
        {"sellerId": "SELLER-111", "amount": {"quantity": 1000, "currency": "EUR"}},
        {"sellerId": "SELLER-222", "amount": {"quantity": 2000, "currency": "EUR"}},
    ],
}
_TO_PAYMENT = {"operationId": "getPayment", "parameters": {"payment_id": "$response.body#/paymentId"}}
_TO_JOURNAL = {"operationId": "getPaymentJournalEntries", "parameters": {"payment_id": "$response.body#/paymentId"}}
_PAYMENT_LINKS = {"GetPayment": _TO_PAYMENT, "GetPaymentJournalEntries": _TO_JOURNAL}


@post(
    "/api/v1/payments",
    guards=[requires(PAYMENT_WRITE)],
    status_code=202,
    operation_id="createPayment",
    operation_class=documented(
        body=CreatePaymentRequest,
        body_example=_EXAMPLE,
        headers=[IDEMPOTENCY_KEY_HEADER],
        errors=problems(
            400,
            401,
            403,
            409,
            413,
            415,
            422,
            503,
            s400="Invalid body or Idempotency-Key; order amounts not summing to the total, a seller twice, "
            "or an order in another currency",
            s409="The same Idempotency-Key is still being processed",
            s422="Unknown, inactive or other-currency seller, or an Idempotency-Key used with another body",
        ),
        response_headers={202: {**LOCATION, **REPLAYED}, 402: {**LOCATION, **REPLAYED}},
        links={202: _PAYMENT_LINKS, 402: _PAYMENT_LINKS},
    ),
    responses={
        202: ResponseSpec(PaymentView, description="Authorized, or authorization pending (status PENDING_AUTH)"),
        402: ResponseSpec(PaymentView, description="Declined by the PSP"),
    },
    request_max_body_size=1_000_000,
    summary="Create a payment and authorize it at the PSP",
    tags=["payments"],
)
async def create_payment_endpoint(
    request: Request[Any, Any, Any], payments: NamedDependency[Payments]
) -> Response[PaymentView]:
    require_json(request)
    key = idempotency_key_of(request)
    body = decode_body(await request.body(), CreatePaymentRequest)
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
    result = await payments.create(cmd, render=render)
    if isinstance(result, Replayed):
        payment_id = msgspec.json.decode(result.body)["paymentId"]
        return keyed_response(result.body, result.status, location(payment_id), replayed=True)
    status, content = render(result.payment)
    return keyed_response(content, status, location(result.payment.public_id), replayed=result.replayed)


@get(
    "/api/v1/payments/{payment_id:str}",
    guards=[requires(PAYMENT_READ, PAYMENT_WRITE, FINANCE)],
    operation_id="getPayment",
    operation_class=documented(
        path={"payment_id": PAYMENT_ID_PATH},
        errors=problems(401, 403, 404, 503, s404="No such payment (unknown or malformed id)"),
    ),
    summary="Get a payment with its payment orders",
    tags=["payments"],
)
async def get_payment_endpoint(
    payment_id: Annotated[str, PathParameter()], payments: NamedDependency[Payments]
) -> PaymentView:
    view = await payments.view(path_public_id(PAYMENT_PREFIX, payment_id, "payment"))
    if view is None:
        raise NotFoundError(f"Payment {payment_id} not found")
    return view


ROUTES = [create_payment_endpoint, get_payment_endpoint]
