"""HTTP adapter of the ledger's treasury: seller payouts and PSP settlements."""

from __future__ import annotations

import hashlib
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, get, post
from litestar.di import NamedDependency
from litestar.exceptions import PermissionDeniedException
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import PathParameter

from marketplace_pay.infra.auth import FINANCE, SELLER, principal, requires
from marketplace_pay.infra.codec import decode_body
from marketplace_pay.infra.openapi import (
    IDEMPOTENCY_KEY_HEADER,
    LOCATION,
    REPLAYED,
    documented,
    problems,
    public_id_schema,
    seller_id_schema,
)
from marketplace_pay.infra.params import (
    allow_options,
    idempotency_key_of,
    keyed_response,
    path_id,
    path_public_id,
    query_int,
    query_int_schema,
    require_json,
)
from marketplace_pay.infra.telemetry import current_ids
from marketplace_pay.ledger.application.payouts import CreatePayout, Replayed
from marketplace_pay.ledger.application.ports import Keyed
from marketplace_pay.ledger.application.treasury import Treasury
from marketplace_pay.ledger.application.views import PayoutView, SettlementView, payout_view
from marketplace_pay.ledger.domain.payout import Payout
from marketplace_pay.shared.client_ids import is_seller_id
from marketplace_pay.shared.errors import NotFoundError
from marketplace_pay.shared.ids import PAYOUT_PREFIX, SETTLEMENT_PREFIX, decode_public_id
from marketplace_pay.shared.money import Currency, Money

BODY_SIZE_MAX = 1_000_000
MAX_QUANTITY = 2**53 - 1  # exact in every JSON client
Quantity = Annotated[int, msgspec.Meta(gt=0, le=MAX_QUANTITY, description="minor units (cents)")]
SELLER_ID_PATH = seller_id_schema()
PAYOUT_SELLER_PATH = {**SELLER_ID_PATH, "examples": ["SELLER-111"]}
PAYOUT_ID_PATH = public_id_schema(PAYOUT_PREFIX, "pout_ + 11 base64url characters")
LIMIT_MAX = 500
CURSOR_MAX = 2**63 - 1


class AmountIn(msgspec.Struct, rename="camel", frozen=True):
    quantity: Quantity
    currency: Currency


class CreatePayoutRequest(msgspec.Struct, rename="camel", frozen=True):
    """Without `amount`, everything the seller has available is paid out."""

    amount: AmountIn | None = None


class Page(msgspec.Struct, frozen=True, rename="camel"):
    data: list[PayoutView]
    has_more: bool
    next_cursor: str | None


class SettlementPage(msgspec.Struct, frozen=True, rename="camel"):
    data: list[SettlementView]
    has_more: bool
    next_cursor: str | None


def location(payout_id: str) -> str:
    return f"/api/v1/payouts/{payout_id}"


def render(payout: Payout) -> tuple[int, bytes]:
    return 202, msgspec.json.encode(payout_view(payout))


_TO_PAYOUT = {"operationId": "getPayout", "parameters": {"payout_id": "$response.body#/payoutId"}}
_TO_SELLER_PAYOUTS = {"operationId": "getSellerPayouts", "parameters": {"seller_id": "$response.body#/sellerId"}}


def _body(raw: bytes) -> CreatePayoutRequest:
    if not raw.strip():  # no body at all: everything available
        return CreatePayoutRequest()
    return decode_body(raw, CreatePayoutRequest)


@post(
    "/api/v1/sellers/{seller_id:str}/payouts",
    guards=[requires(FINANCE)],
    status_code=202,
    operation_id="createPayout",
    operation_class=documented(
        body=CreatePayoutRequest,
        body_example={"amount": {"quantity": 950, "currency": "EUR"}},
        body_required=False,
        path={"seller_id": PAYOUT_SELLER_PATH},
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
            s400="Invalid body or Idempotency-Key",
            s404="No such seller",
            s409="The same Idempotency-Key is still being processed",
            s422="The seller is not ACTIVE, the currency is not the seller's, the amount exceeds what is available "
            "(or nothing is), or the Idempotency-Key was used with another body",
        ),
        response_headers={202: {**LOCATION, **REPLAYED}},
        links={202: {"GetPayout": _TO_PAYOUT, "GetSellerPayouts": _TO_SELLER_PAYOUTS}},
    ),
    responses={202: ResponseSpec(PayoutView, description="Created (PENDING): the bank pays it asynchronously")},
    request_max_body_size=BODY_SIZE_MAX,
    summary="Pay a seller out: an amount, or (without a body) everything available",
    tags=["payouts"],
)
async def create_payout(
    request: Request[Any, Any, Any], seller_id: Annotated[str, PathParameter()], treasury: NamedDependency[Treasury]
) -> Response[PayoutView]:
    seller_id = path_id(seller_id, is_seller_id, "seller")
    require_json(request)
    key = idempotency_key_of(request)
    body = _body(await request.body())
    trace_id, traceparent = current_ids()
    fingerprint = None
    if key is not None:  # the seller is part of the request: the same key for another seller is another body
        fingerprint = hashlib.sha256(msgspec.json.encode([seller_id, body])).digest()
    amount = Money(body.amount.quantity, body.amount.currency) if body.amount is not None else None
    cmd = CreatePayout(
        seller_id=seller_id,
        amount=amount,
        keyed=Keyed(principal(request).scope, key, fingerprint),
        trace_id=trace_id,
        traceparent=traceparent,
    )
    result = await treasury.create_payout(cmd, render=render)
    if isinstance(result, Replayed):
        payout_id = msgspec.json.decode(result.body)["payoutId"]
        return keyed_response(result.body, result.status, location(payout_id), replayed=True)
    status, content = render(result.payout)
    return keyed_response(content, status, location(result.payout.public_id), replayed=result.replayed)


@get(
    "/api/v1/payouts/{payout_id:str}",
    guards=[requires(FINANCE, SELLER)],
    operation_id="getPayout",
    operation_class=documented(
        path={"payout_id": PAYOUT_ID_PATH},
        errors=problems(401, 403, 404, 503, s404="No such payout (for a SELLER token: none of its own)"),
    ),
    summary="Get a payout (a SELLER token: only its own)",
    tags=["payouts"],
)
async def get_payout(
    request: Request[Any, Any, Any], payout_id: Annotated[str, PathParameter()], treasury: NamedDependency[Treasury]
) -> PayoutView:
    view = await treasury.payout(path_public_id(PAYOUT_PREFIX, payout_id, "payout"))
    who = principal(request)
    # another seller's payout is answered as if it did not exist: a seller learns nothing of others
    if view is None or (not who.has_any([FINANCE]) and view.seller_id != who.seller_id):
        raise NotFoundError(f"Payout {payout_id} not found")
    return view


_PAGING = [
    query_int_schema("limit", minimum=1, maximum=LIMIT_MAX, default=50, description="Items per page"),
    query_int_schema("after", minimum=0, maximum=CURSOR_MAX, description="The nextCursor of the previous page"),
]


async def _payouts_page(request: Request[Any, Any, Any], seller_id: str, treasury: Treasury) -> Page:
    limit = query_int(request, "limit", default=50, minimum=1, maximum=LIMIT_MAX)
    after = query_int(request, "after", default=None, minimum=0, maximum=CURSOR_MAX)
    views, has_more = await treasury.payouts_of(seller_id, limit=limit or 50, after=after)
    cursor = str(decode_public_id(PAYOUT_PREFIX, views[-1].payout_id)) if has_more else None
    return Page(data=views, has_more=has_more, next_cursor=cursor)


@get(
    "/api/v1/sellers/me/payouts",
    guards=[requires(SELLER)],
    operation_id="getMyPayouts",
    operation_class=documented(
        query=_PAGING,
        errors=problems(400, 401, 403, 503, s403="The token lacks the SELLER role or a seller_id claim"),
    ),
    summary="The calling seller's payouts, newest first (claim seller_id)",
    tags=["payouts"],
)
async def my_payouts(request: Request[Any, Any, Any], treasury: NamedDependency[Treasury]) -> Page:
    seller_id = principal(request).seller_id
    if not seller_id:
        raise PermissionDeniedException("The token has no seller_id claim that names a seller")
    return await _payouts_page(request, seller_id, treasury)


@get(
    "/api/v1/sellers/{seller_id:str}/payouts",
    guards=[requires(FINANCE)],
    operation_id="getSellerPayouts",
    operation_class=documented(
        path={"seller_id": SELLER_ID_PATH},
        query=_PAGING,
        errors=problems(400, 401, 403, 404, 503, s404="No such seller"),
    ),
    summary="A seller's payouts, newest first (keyset paging: ?limit=&after=<nextCursor>)",
    tags=["payouts"],
)
async def seller_payouts(
    request: Request[Any, Any, Any], seller_id: Annotated[str, PathParameter()], treasury: NamedDependency[Treasury]
) -> Page:
    seller_id = path_id(seller_id, is_seller_id, "seller")
    if not await treasury.seller_exists(seller_id):
        raise NotFoundError(f"Seller {seller_id} not found")
    return await _payouts_page(request, seller_id, treasury)


@get(
    "/api/v1/settlements",
    guards=[requires(FINANCE)],
    operation_id="getSettlements",
    operation_class=documented(query=_PAGING, errors=problems(400, 401, 403, 503)),
    summary="PSP settlements, newest first: gross, fee, net and the journals each covered",
    tags=["settlements"],
)
async def settlements(request: Request[Any, Any, Any], treasury: NamedDependency[Treasury]) -> SettlementPage:
    limit = query_int(request, "limit", default=50, minimum=1, maximum=LIMIT_MAX)
    after = query_int(request, "after", default=None, minimum=0, maximum=CURSOR_MAX)
    views, has_more = await treasury.settlements(limit=limit or 50, after=after)
    cursor = str(decode_public_id(SETTLEMENT_PREFIX, views[-1].settlement_id)) if has_more else None
    return SettlementPage(data=views, has_more=has_more, next_cursor=cursor)


ROUTES = [
    allow_options("/api/v1/sellers/{seller_id:str}/payouts", "GET", "POST"),  # before the handlers it answers for
    create_payout,
    get_payout,
    my_payouts,
    seller_payouts,
    settlements,
]
