"""HTTP adapter of the ledger context: sellers (SPEC §3.5)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, get, patch, post
from litestar.exceptions import PermissionDeniedException
from litestar.params import PathParameter

from marketplace_pay.infra.auth import ADMIN, FINANCE, requires
from marketplace_pay.infra.codec import decode_error
from marketplace_pay.infra.openapi import json_body
from marketplace_pay.ledger.application.directory import (
    OnboardSeller,
    Seller,
    change_seller_status,
    onboard_seller,
)
from marketplace_pay.infra.auth import SELLER, principal
from marketplace_pay.ledger.adapters.postgres import JournalView, PostingLine
from marketplace_pay.ledger.domain.accounts import AccountStatus, AccountType, InvalidAccountCode, parse_account_code
from marketplace_pay.shared.errors import FieldError, NotFoundError, ValidationError
from marketplace_pay.shared.ids import PAYMENT_PREFIX, InvalidPublicId, decode_public_id
from marketplace_pay.shared.money import Currency


class CreateSellerRequest(msgspec.Struct, rename="camel", frozen=True):
    seller_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^\S+$")]
    currency: Currency
    commission_bps: Annotated[int, msgspec.Meta(ge=0, le=10000)]


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


def _decode(raw: bytes, type_: type[Any]) -> Any:
    try:
        return msgspec.json.decode(raw, type=type_)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise decode_error(exc) from None


@post(
    "/api/v1/sellers",
    guards=[requires(ADMIN)],
    operation_class=json_body(CreateSellerRequest),
    summary="Onboard a seller (creates its MERCHANT_PAYABLE account)",
    tags=["sellers"],
)
async def create_seller(request: Request[Any, Any, Any]) -> Response[SellerView]:
    body: CreateSellerRequest = _decode(await request.body(), CreateSellerRequest)
    seller = await onboard_seller(
        OnboardSeller(body.seller_id, body.currency, body.commission_bps),
        store=request.app.state.container.sellers,
        cache=request.app.state.container.seller_cache,
    )
    return Response(
        SellerView.of(seller), status_code=201, headers={"Location": f"/api/v1/sellers/{seller.seller_id}"}
    )


@get("/api/v1/sellers/{seller_id:str}", guards=[requires(FINANCE)], summary="Get a seller", tags=["sellers"])
async def get_seller(request: Request[Any, Any, Any], seller_id: Annotated[str, PathParameter()]) -> SellerView:
    seller = await request.app.state.container.sellers.get(seller_id)
    if seller is None:
        raise NotFoundError(f"Seller {seller_id} not found")
    return SellerView.of(seller)


@patch(
    "/api/v1/sellers/{seller_id:str}",
    guards=[requires(ADMIN)],
    operation_class=json_body(UpdateSellerRequest),
    summary="Change a seller's status (ACTIVE, SUSPENDED, CLOSED)",
    tags=["sellers"],
)
async def update_seller(request: Request[Any, Any, Any], seller_id: Annotated[str, PathParameter()]) -> SellerView:
    body: UpdateSellerRequest = _decode(await request.body(), UpdateSellerRequest)
    container = request.app.state.container
    seller = await change_seller_status(seller_id, body.status, store=container.sellers, cache=container.seller_cache)
    return SellerView.of(seller)


class Statement(msgspec.Struct, frozen=True, rename="camel"):
    data: list[PostingLine]
    has_more: bool
    next_cursor: str | None


def _limit(raw: str | None) -> int:
    if raw is None:
        return 50
    if not raw.isdigit() or not 1 <= int(raw) <= 500:
        raise ValidationError("Invalid limit", errors=[FieldError("limit", "must be an integer from 1 to 500")])
    return int(raw)


def _cursor(raw: str | None) -> int | None:
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 19:
        raise ValidationError("Invalid cursor", errors=[FieldError("after", "must be a nextCursor value")])
    return int(raw)


@get(
    "/api/v1/accounts/{account_code:str}/postings",
    guards=[requires(FINANCE, SELLER)],
    summary="An account's postings, newest first (keyset paging: ?limit=&after=<nextCursor>)",
    tags=["ledger"],
)
async def account_postings(request: Request[Any, Any, Any], account_code: Annotated[str, PathParameter()]) -> Statement:
    who = principal(request)
    if not who.has_any([FINANCE]):  # a seller reads only its own payable account
        try:
            account = parse_account_code(account_code)
        except InvalidAccountCode:
            account = None
        if account is None or account.type is not AccountType.MERCHANT_PAYABLE or account.entity_id != who.seller_id:
            raise PermissionDeniedException("A seller may only read its own MERCHANT_PAYABLE account")
    limit = _limit(request.query_params.get("limit"))
    after = _cursor(request.query_params.get("after"))
    container = request.app.state.container
    if not await container.account_exists(account_code):
        raise NotFoundError(f"Account {account_code} not found")
    lines, has_more = await container.statement(account_code, limit=limit, before_posting_id=after)
    return Statement(data=lines, has_more=has_more, next_cursor=lines[-1].posting_id if has_more else None)


@get(
    "/api/v1/payments/{payment_id:str}/journal-entries",
    guards=[requires(FINANCE)],
    summary="Every journal entry of a payment, with its postings",
    tags=["ledger"],
)
async def payment_journal_entries(
    request: Request[Any, Any, Any], payment_id: Annotated[str, PathParameter()]
) -> dict[str, list[JournalView]]:
    try:
        internal = decode_public_id(PAYMENT_PREFIX, payment_id)
    except InvalidPublicId:
        raise NotFoundError(f"Payment {payment_id} not found") from None
    container = request.app.state.container
    if await container.payment_view(internal) is None:
        raise NotFoundError(f"Payment {payment_id} not found")
    return {"data": await container.payment_journals(internal)}


ROUTES = [create_seller, get_seller, update_seller, account_postings, payment_journal_entries]
