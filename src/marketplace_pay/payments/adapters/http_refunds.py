"""HTTP adapter of the payments context's refunds: POST /api/v1/payments/{id}/refunds and the reads."""

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
from marketplace_pay.infra.params import (
    allow_options,
    idempotency_key_of,
    keyed_response,
    path_public_id,
    require_json,
)
from marketplace_pay.infra.telemetry import current_ids
from marketplace_pay.payments.adapters.http import PAYMENT_ID_PATH, AmountIn
from marketplace_pay.payments.application.create_payment import Replayed
from marketplace_pay.payments.application.ports import Keyed
from marketplace_pay.payments.application.refunds import RequestRefund
from marketplace_pay.payments.application.service import Payments
from marketplace_pay.payments.application.views import RefundView, refund_view
from marketplace_pay.payments.domain.refund import Refund
from marketplace_pay.shared.errors import NotFoundError
from marketplace_pay.shared.ids import (
    PAYMENT_ORDER_PREFIX,
    PAYMENT_PREFIX,
    REFUND_PREFIX,
    public_id_pattern,
)
from marketplace_pay.shared.money import Money

REASON_MAX = 255
REASON_PATTERN = "^[^\\u0000-\\u001f\\u007f]*$"  # text: no control characters (PostgreSQL refuses NUL)
REFUND_ID_PATH = public_id_schema(REFUND_PREFIX, "rf_ + 11 base64url characters")


class CreateRefundRequest(msgspec.Struct, rename="camel", frozen=True):
    payment_order_id: Annotated[
        str, msgspec.Meta(pattern=public_id_pattern(PAYMENT_ORDER_PREFIX), description="po_ + 11 base64url characters")
    ]
    amount: AmountIn
    reason: Annotated[str, msgspec.Meta(max_length=REASON_MAX, pattern=REASON_PATTERN)] | None = None


class RefundList(msgspec.Struct, rename="camel", frozen=True):
    data: list[RefundView]


def location(refund_id: str) -> str:
    return f"/api/v1/refunds/{refund_id}"


def render(refund: Refund) -> tuple[int, bytes]:
    return 202, msgspec.json.encode(refund_view(refund))


_TO_REFUND = {"operationId": "getRefund", "parameters": {"refund_id": "$response.body#/refundId"}}


@post(
    "/api/v1/payments/{payment_id:str}/refunds",
    guards=[requires(PAYMENT_WRITE)],
    status_code=202,
    operation_id="createRefund",
    operation_class=documented(
        body=CreateRefundRequest,
        body_example={
            "paymentOrderId": "po_AAAAAAAAAAE",
            "amount": {"quantity": 400, "currency": "EUR"},
            "reason": "item returned",
        },
        path={"payment_id": PAYMENT_ID_PATH},
        headers=[IDEMPOTENCY_KEY_HEADER],
        errors=problems(
            400,
            401,
            403,
            404,
            409,
            413,
            415,
            422,
            503,
            s400="Invalid body, paymentOrderId or Idempotency-Key",
            s404="No such payment, or the payment has no such payment order",
            s409="The same Idempotency-Key is still being processed",
            s422="The order is not CAPTURED, the currency is not the order's, the amount exceeds what the order "
            "can still refund (captured minus refunded minus pending), or the Idempotency-Key was used with "
            "another body",
        ),
        response_headers={202: {**LOCATION, **REPLAYED}},
        links={202: {"GetRefund": _TO_REFUND}},
    ),
    responses={202: ResponseSpec(RefundView, description="Accepted (PENDING): the PSP refunds asynchronously")},
    request_max_body_size=100_000,
    summary="Refund part or all of a captured payment order",
    tags=["refunds"],
)
async def create_refund(
    request: Request[Any, Any, Any], payment_id: Annotated[str, PathParameter()], payments: NamedDependency[Payments]
) -> Response[RefundView]:
    internal_payment_id = path_public_id(PAYMENT_PREFIX, payment_id, "payment")
    require_json(request)
    key = idempotency_key_of(request)
    body = decode_body(await request.body(), CreateRefundRequest)
    # well-formed (the body's schema checked it) but naming no order that can exist: 404
    order_id = path_public_id(PAYMENT_ORDER_PREFIX, body.payment_order_id, "payment order")
    trace_id, traceparent = current_ids()
    fingerprint = None
    if key is not None:  # the payment is part of the request: the same key for another payment is another body
        fingerprint = hashlib.sha256(msgspec.json.encode([payment_id, body])).digest()
    cmd = RequestRefund(
        payment_id=internal_payment_id,
        payment_order_id=order_id,
        amount=Money(body.amount.quantity, body.amount.currency),
        reason=body.reason,
        keyed=Keyed(principal(request).scope, key, fingerprint),
        trace_id=trace_id,
        traceparent=traceparent,
    )
    result = await payments.request_refund(cmd, render=render)
    if isinstance(result, Replayed):
        refund_id = msgspec.json.decode(result.body)["refundId"]
        return keyed_response(result.body, result.status, location(refund_id), replayed=True)
    status, content = render(result.refund)
    return keyed_response(content, status, location(result.refund.public_id), replayed=result.replayed)


_READERS = (PAYMENT_READ, PAYMENT_WRITE, FINANCE)


@get(
    "/api/v1/refunds/{refund_id:str}",
    guards=[requires(*_READERS)],
    operation_id="getRefund",
    operation_class=documented(
        path={"refund_id": REFUND_ID_PATH},
        errors=problems(401, 403, 404, 503, s404="No such refund (unknown or malformed id)"),
    ),
    summary="Get a refund",
    tags=["refunds"],
)
async def get_refund(refund_id: Annotated[str, PathParameter()], payments: NamedDependency[Payments]) -> RefundView:
    refund = await payments.refund(path_public_id(REFUND_PREFIX, refund_id, "refund"))
    if refund is None:
        raise NotFoundError(f"Refund {refund_id} not found")
    return refund_view(refund)


@get(
    "/api/v1/payments/{payment_id:str}/refunds",
    guards=[requires(*_READERS)],
    operation_id="getPaymentRefunds",
    operation_class=documented(
        path={"payment_id": PAYMENT_ID_PATH},
        errors=problems(401, 403, 404, 503, s404="No such payment (unknown or malformed id)"),
    ),
    summary="The refunds of a payment, oldest first",
    tags=["refunds"],
)
async def get_payment_refunds(
    payment_id: Annotated[str, PathParameter()], payments: NamedDependency[Payments]
) -> RefundList:
    internal = path_public_id(PAYMENT_PREFIX, payment_id, "payment")
    return RefundList(data=[refund_view(r) for r in await payments.refunds_of(internal, payment_id)])


ROUTES = [
    allow_options("/api/v1/payments/{payment_id:str}/refunds", "GET", "POST"),  # before the handlers it answers for
    create_refund,
    get_refund,
    get_payment_refunds,
]
