"""HTTP adapter of the balances context: seller and account balances."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Request, get
from litestar.exceptions import PermissionDeniedException
from litestar.params import PathParameter

from marketplace_pay.balances.application.balances import Balance
from marketplace_pay.infra.auth import FINANCE, SELLER, principal, requires
from marketplace_pay.infra.openapi import documented, problems, seller_id_schema, string_schema
from marketplace_pay.infra.params import path_id
from marketplace_pay.ledger import ACCOUNT_CODE_LENGTH_MAX, ACCOUNT_CODE_PATTERN, is_account_code
from marketplace_pay.shared.client_ids import is_seller_id
from marketplace_pay.shared.errors import NotFoundError
from marketplace_pay.shared.money import AmountView


SELLER_ID_PATH = seller_id_schema()
ACCOUNT_CODE_PATH = string_schema(
    ACCOUNT_CODE_PATTERN, max_length=ACCOUNT_CODE_LENGTH_MAX, description="TYPE.entity.CCY, e.g. PSP_RECEIVABLES.GLOBAL.EUR"
)


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
    operation_id="getMyBalance",
    operation_class=documented(
        errors=problems(401, 403, 404, 503, s403="The token lacks the SELLER role or a seller_id claim", s404="No such seller")
    ),
    summary="The calling seller's MERCHANT_PAYABLE balance (claim seller_id)",
    tags=["balances"],
)
async def my_balance(request: Request[Any, Any, Any]) -> SellerBalanceView:
    seller_id = principal(request).seller_id
    if not seller_id:
        raise PermissionDeniedException("The token has no seller_id claim that names a seller")
    return await _seller_balance(request, seller_id)


@get(
    "/api/v1/sellers/{seller_id:str}/balance",
    guards=[requires(FINANCE)],
    operation_id="getSellerBalance",
    operation_class=documented(
        path={"seller_id": SELLER_ID_PATH}, errors=problems(401, 403, 404, 503, s404="No such seller")
    ),
    summary="A seller's MERCHANT_PAYABLE balance (real time: snapshot + recent postings)",
    tags=["balances"],
)
async def seller_balance(request: Request[Any, Any, Any], seller_id: Annotated[str, PathParameter()]) -> SellerBalanceView:
    return await _seller_balance(request, path_id(seller_id, is_seller_id, "seller"))


@get(
    "/api/v1/accounts/{account_code:str}/balance",
    guards=[requires(FINANCE)],
    operation_id="getAccountBalance",
    operation_class=documented(
        path={"account_code": ACCOUNT_CODE_PATH}, errors=problems(401, 403, 404, 503, s404="No such account")
    ),
    summary="Any account's balance",
    tags=["balances"],
)
async def account_balance(request: Request[Any, Any, Any], account_code: Annotated[str, PathParameter()]) -> AccountBalanceView:
    account_code = path_id(account_code, is_account_code, "account")
    balance: Balance | None = await request.app.state.container.read_balance(account_code)
    if balance is None:
        raise NotFoundError(f"Account {account_code} not found")
    return AccountBalanceView(account_code, AmountView(balance.balance_minor, balance.currency), balance.as_of)


ROUTES = [my_balance, seller_balance, account_balance]
