"""HTTP adapter of the balances context (SPEC §3.5)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Request, get
from litestar.exceptions import PermissionDeniedException
from litestar.params import PathParameter

from marketplace_pay.balances.application.balances import Balance
from marketplace_pay.infra.auth import FINANCE, SELLER, principal, requires
from marketplace_pay.shared.errors import NotFoundError
from marketplace_pay.shared.money import AmountView


class SellerBalanceView(msgspec.Struct, frozen=True, rename="camel"):
    seller_id: str
    account_code: str
    balance: AmountView
    as_of: datetime


class AccountBalanceView(msgspec.Struct, frozen=True, rename="camel"):
    account_code: str
    balance: AmountView
    as_of: datetime


async def _seller_balance(request: Request[Any, Any, Any], seller_id: str) -> SellerBalanceView:
    container = request.app.state.container
    seller = await container.sellers.get(seller_id)
    if seller is None:
        raise NotFoundError(f"Seller {seller_id} not found")
    balance: Balance | None = await container.read_balance(seller.account_code)
    if balance is None:
        raise NotFoundError(f"Account {seller.account_code} not found")
    return SellerBalanceView(seller_id, seller.account_code, AmountView(balance.balance_minor, balance.currency), balance.as_of)


@get(
    "/api/v1/sellers/me/balance",
    guards=[requires(SELLER)],
    summary="The calling seller's MERCHANT_PAYABLE balance (claim seller_id)",
    tags=["balances"],
)
async def my_balance(request: Request[Any, Any, Any]) -> SellerBalanceView:
    seller_id = principal(request).seller_id
    if not seller_id:
        raise PermissionDeniedException("The token has no seller_id claim")
    return await _seller_balance(request, seller_id)


@get(
    "/api/v1/sellers/{seller_id:str}/balance",
    guards=[requires(FINANCE)],
    summary="A seller's MERCHANT_PAYABLE balance (real time: snapshot + recent postings)",
    tags=["balances"],
)
async def seller_balance(request: Request[Any, Any, Any], seller_id: Annotated[str, PathParameter()]) -> SellerBalanceView:
    return await _seller_balance(request, seller_id)


@get(
    "/api/v1/accounts/{account_code:str}/balance",
    guards=[requires(FINANCE)],
    summary="Any account's balance",
    tags=["balances"],
)
async def account_balance(request: Request[Any, Any, Any], account_code: Annotated[str, PathParameter()]) -> AccountBalanceView:
    balance: Balance | None = await request.app.state.container.read_balance(account_code)
    if balance is None:
        raise NotFoundError(f"Account {account_code} not found")
    return AccountBalanceView(account_code, AmountView(balance.balance_minor, balance.currency), balance.as_of)


ROUTES = [my_balance, seller_balance, account_balance]
