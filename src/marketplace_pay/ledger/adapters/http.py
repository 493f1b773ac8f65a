"""HTTP adapter of the ledger context: sellers (SPEC §3.5)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, get, patch, post
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
from marketplace_pay.ledger.domain.accounts import AccountStatus
from marketplace_pay.shared.errors import NotFoundError
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
        OnboardSeller(body.seller_id, body.currency, body.commission_bps), store=request.app.state.container.sellers
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
    seller = await change_seller_status(seller_id, body.status, store=request.app.state.container.sellers)
    return SellerView.of(seller)


ROUTES = [create_seller, get_seller, update_seller]
