"""HTTP adapter of the ledger context: sellers, account statements and a payment's journals."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from urllib.parse import quote

import msgspec
from litestar import Request, Response, get, patch, post
from litestar.di import NamedDependency
from litestar.exceptions import PermissionDeniedException
from litestar.params import PathParameter

from marketplace_pay.infra.auth import ADMIN, FINANCE, SELLER, principal, requires
from marketplace_pay.infra.codec import decode_body
from marketplace_pay.infra.openapi import (
    LOCATION,
    documented,
    problems,
    public_id_schema,
    seller_id_schema,
    string_schema,
)
from marketplace_pay.infra.params import (
    allow_options,
    path_id,
    path_public_id,
    query_int,
    query_int_schema,
    require_json,
)
from marketplace_pay.ledger.application.directory import OnboardSeller, Seller
from marketplace_pay.ledger.application.service import Ledger
from marketplace_pay.ledger.application.views import JournalView, PostingLine
from marketplace_pay.ledger.domain.accounts import (
    ACCOUNT_CODE_LENGTH_MAX,
    ACCOUNT_CODE_PATTERN,
    AccountStatus,
    AccountType,
    is_account_code,
    parse_account_code,
)
from marketplace_pay.shared.client_ids import SellerId, check_seller_id, is_seller_id
from marketplace_pay.shared.ids import PAYMENT_PREFIX
from marketplace_pay.shared.money import Currency

BODY_SIZE_MAX = 1_000_000
SELLER_ID_PATH = seller_id_schema()
PAYMENT_ID_PATH = public_id_schema(PAYMENT_PREFIX, "pay_ + 11 base64url characters")
ACCOUNT_CODE_PATH = string_schema(
    ACCOUNT_CODE_PATTERN,
    max_length=ACCOUNT_CODE_LENGTH_MAX,
    description="TYPE.entity.CCY, e.g. MERCHANT_PAYABLE.SELLER-111.EUR",
)


class CreateSellerRequest(msgspec.Struct, rename="camel", frozen=True):
    seller_id: SellerId
    currency: Currency
    commission_bps: Annotated[int, msgspec.Meta(ge=0, le=10000)]

    def __post_init__(self) -> None:
        check_seller_id("sellerId", self.seller_id)


class UpdateSellerRequest(msgspec.Struct, rename="camel", frozen=True):
    status: AccountStatus


class SellerView(msgspec.Struct, rename="camel", frozen=True):
    seller_id: str
    account_code: str
    currency: str
    status: str
    commission_bps: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, seller: Seller) -> SellerView:
        return cls(
            seller_id=seller.seller_id,
            account_code=seller.account_code,
            currency=seller.currency.value,
            status=seller.status.value,
            commission_bps=seller.commission_bps,
            created_at=seller.created_at,
            updated_at=seller.updated_at,
        )


def _seller_links(source: str) -> dict[str, dict[str, Any]]:
    seller = {"seller_id": f"$response.body#/{source}"} if source else {}
    account = {"account_code": "$response.body#/accountCode"}
    return {
        "GetSeller": {"operationId": "getSeller", "parameters": seller},
        "UpdateSeller": {"operationId": "updateSeller", "parameters": seller},
        "GetSellerBalance": {"operationId": "getSellerBalance", "parameters": seller},
        "GetAccountBalance": {"operationId": "getAccountBalance", "parameters": account},
        "GetAccountPostings": {"operationId": "getAccountPostings", "parameters": account},
    }


@post(
    "/api/v1/sellers",
    guards=[requires(ADMIN)],
    operation_id="createSeller",
    operation_class=documented(
        body=CreateSellerRequest,
        body_example={"sellerId": "SELLER-444", "currency": "USD", "commissionBps": 250},
        errors=problems(
            400,
            401,
            403,
            409,
            413,
            415,
            503,
            s400="Invalid body, or a reserved seller id (GLOBAL, me)",
            s409="The seller exists",
        ),
        response_headers={201: LOCATION},
        links={201: _seller_links("sellerId")},
    ),
    request_max_body_size=BODY_SIZE_MAX,
    summary="Onboard a seller (creates its MERCHANT_PAYABLE account)",
    tags=["sellers"],
)
async def create_seller(request: Request[Any, Any, Any], ledger: NamedDependency[Ledger]) -> Response[SellerView]:
    require_json(request)
    body = decode_body(await request.body(), CreateSellerRequest)
    seller = await ledger.onboard_seller(OnboardSeller(body.seller_id, body.currency, body.commission_bps))
    return Response(
        SellerView.of(seller),
        status_code=201,
        # a header is latin-1 on the wire: the id (any Unicode) goes percent-encoded, as in a URL
        headers={"Location": f"/api/v1/sellers/{quote(seller.seller_id, safe='')}"},
    )


@get(
    "/api/v1/sellers/{seller_id:str}",
    guards=[requires(FINANCE)],
    operation_id="getSeller",
    operation_class=documented(
        path={"seller_id": SELLER_ID_PATH}, errors=problems(401, 403, 404, 503, s404="No such seller")
    ),
    summary="Get a seller",
    tags=["sellers"],
)
async def get_seller(seller_id: Annotated[str, PathParameter()], ledger: NamedDependency[Ledger]) -> SellerView:
    return SellerView.of(await ledger.seller(path_id(seller_id, is_seller_id, "seller")))


@patch(
    "/api/v1/sellers/{seller_id:str}",
    guards=[requires(ADMIN)],
    operation_id="updateSeller",
    operation_class=documented(
        body=UpdateSellerRequest,
        body_example={"status": "SUSPENDED"},
        path={"seller_id": SELLER_ID_PATH},
        errors=problems(400, 401, 403, 404, 413, 415, 503, s404="No such seller"),
    ),
    request_max_body_size=BODY_SIZE_MAX,
    summary="Change a seller's status (ACTIVE, SUSPENDED, CLOSED)",
    tags=["sellers"],
)
async def update_seller(
    request: Request[Any, Any, Any], seller_id: Annotated[str, PathParameter()], ledger: NamedDependency[Ledger]
) -> SellerView:
    seller_id = path_id(seller_id, is_seller_id, "seller")
    require_json(request)
    body = decode_body(await request.body(), UpdateSellerRequest)
    return SellerView.of(await ledger.change_seller_status(seller_id, body.status))


class Statement(msgspec.Struct, frozen=True, rename="camel"):
    data: list[PostingLine]
    has_more: bool
    next_cursor: str | None


LIMIT_MAX = 500
CURSOR_MAX = 2**63 - 1  # posting ids are bigints


@get(
    "/api/v1/accounts/{account_code:str}/postings",
    guards=[requires(FINANCE, SELLER)],
    operation_id="getAccountPostings",
    operation_class=documented(
        path={"account_code": ACCOUNT_CODE_PATH},
        query=[
            query_int_schema("limit", minimum=1, maximum=LIMIT_MAX, default=50, description="Postings per page"),
            query_int_schema("after", minimum=0, maximum=CURSOR_MAX, description="The nextCursor of the previous page"),
        ],
        errors=problems(
            400,
            401,
            403,
            404,
            503,
            s400="limit or after out of range or not an integer",
            s403="The token lacks the role, or a seller asked for another account than its own",
            s404="No such account",
        ),
    ),
    summary="An account's postings, newest first (keyset paging: ?limit=&after=<nextCursor>)",
    tags=["ledger"],
)
async def account_postings(
    request: Request[Any, Any, Any], account_code: Annotated[str, PathParameter()], ledger: NamedDependency[Ledger]
) -> Statement:
    who = principal(request)
    if not who.has_any([FINANCE]):  # a seller reads only its own payable account, and learns nothing of others
        account = parse_account_code(account_code) if is_account_code(account_code) else None
        if account is None or account.type is not AccountType.MERCHANT_PAYABLE or account.entity_id != who.seller_id:
            raise PermissionDeniedException("A seller may only read its own MERCHANT_PAYABLE account")
    account_code = path_id(account_code, is_account_code, "account")
    limit = query_int(request, "limit", default=50, minimum=1, maximum=LIMIT_MAX) or 50
    after = query_int(request, "after", default=None, minimum=0, maximum=CURSOR_MAX)
    lines, has_more = await ledger.statement(account_code, limit=limit, after=after)
    return Statement(data=lines, has_more=has_more, next_cursor=lines[-1].posting_id if has_more else None)


class Journals(msgspec.Struct, frozen=True):
    data: list[JournalView]


@get(
    "/api/v1/payments/{payment_id:str}/journal-entries",
    guards=[requires(FINANCE)],
    operation_id="getPaymentJournalEntries",
    operation_class=documented(
        path={"payment_id": PAYMENT_ID_PATH}, errors=problems(401, 403, 404, 503, s404="No such payment")
    ),
    summary="Every journal entry of a payment, with its postings",
    tags=["ledger"],
)
async def payment_journal_entries(
    payment_id: Annotated[str, PathParameter()], ledger: NamedDependency[Ledger]
) -> Journals:
    internal = path_public_id(PAYMENT_PREFIX, payment_id, "payment")
    return Journals(data=await ledger.payment_journals(internal, payment_id))


ROUTES = [
    allow_options("/api/v1/sellers/{seller_id:str}", "GET", "PATCH"),  # before the handlers it answers for
    create_seller,
    get_seller,
    update_seller,
    account_postings,
    payment_journal_entries,
]
