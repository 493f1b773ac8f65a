"""HTTP adapter of the balances context: seller and account balances."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Request, get
from litestar.di import NamedDependency
from litestar.exceptions import PermissionDeniedException
from litestar.params import PathParameter

from marketplace_pay.balances.application.service import Balances
from marketplace_pay.balances.domain.balance import Balance
from marketplace_pay.infra.auth import FINANCE, SELLER, principal, requires
from marketplace_pay.infra.openapi import documented, problems, seller_id_schema, string_schema
from marketplace_pay.infra.params import path_id
from marketplace_pay.ledger import ACCOUNT_CODE_LENGTH_MAX, ACCOUNT_CODE_PATTERN, is_account_code
from marketplace_pay.shared.client_ids import is_seller_id
from marketplace_pay.shared.errors import NotFoundError
from marketplace_pay.shared.money import AmountView

SELLER_ID_PATH = seller_id_schema()
ACCOUNT_CODE_PATH = string_schema(
    ACCOUNT_CODE_PATTERN,
    max_length=ACCOUNT_CODE_LENGTH_MAX,
    description="TYPE.entity.CCY, e.g. PSP_RECEIVABLES.GLOBAL.EUR",
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


def _seller_view(seller_id: str, balance: Balance) -> SellerBalanceView:
    return SellerBalanceView(
        seller_id, balance.account_code, AmountView(balance.balance_minor, balance.currency), balance.as_of
    )


@get(
    "/api/v1/sellers/me/balance",
    guards=[requires(SELLER)],
    operation_id="getMyBalance",
    operation_class=documented(
        errors=problems(
            401, 403, 404, 503, s403="The token lacks the SELLER role or a seller_id claim", s404="No such seller"
        )
    ),
    summary="The calling seller's MERCHANT_PAYABLE balance (claim seller_id)",
    tags=["balances"],
)
async def my_balance(request: Request[Any, Any, Any], balances: NamedDependency[Balances]) -> SellerBalanceView:
    seller_id = principal(request).seller_id
    if not seller_id:
        raise PermissionDeniedException("The token has no seller_id claim that names a seller")
    return _seller_view(seller_id, await balances.of_seller(seller_id))


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
async def seller_balance(
    seller_id: Annotated[str, PathParameter()], balances: NamedDependency[Balances]
) -> SellerBalanceView:
    seller_id = path_id(seller_id, is_seller_id, "seller")
    return _seller_view(seller_id, await balances.of_seller(seller_id))


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
async def account_balance(
    account_code: Annotated[str, PathParameter()], balances: NamedDependency[Balances]
) -> AccountBalanceView:
    account_code = path_id(account_code, is_account_code, "account")
    balance = await balances.of_account(account_code)
    if balance is None:
        raise NotFoundError(f"Account {account_code} not found")
    return AccountBalanceView(account_code, AmountView(balance.balance_minor, balance.currency), balance.as_of)


ROUTES = [my_balance, seller_balance, account_balance]
