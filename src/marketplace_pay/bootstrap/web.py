"""The HTTP routes of every context and what their handlers are given: each handler names the
facade it needs (`payments: Payments`, `ledger: Ledger`, `treasury: Treasury`,
`balances: Balances`) and Litestar provides it from the container the application runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from litestar.di import Provide

from marketplace_pay.balances.adapters.http import ROUTES as BALANCE_ROUTES
from marketplace_pay.bootstrap import Container
from marketplace_pay.ledger.adapters.http import ROUTES as LEDGER_ROUTES
from marketplace_pay.ledger.adapters.http_treasury import ROUTES as TREASURY_ROUTES
from marketplace_pay.payments.adapters.http import ROUTES as PAYMENT_ROUTES
from marketplace_pay.payments.adapters.http_refunds import ROUTES as REFUND_ROUTES

ROUTES: list[Any] = [*PAYMENT_ROUTES, *REFUND_ROUTES, *LEDGER_ROUTES, *TREASURY_ROUTES, *BALANCE_ROUTES]


def dependencies(container: Callable[[], Container]) -> dict[str, Provide]:
    """`container()` returns the running container (it exists only once the lifespan started)."""

    def payments() -> Any:
        return container().payments

    def ledger() -> Any:
        return container().ledger

    def treasury() -> Any:
        return container().treasury

    def balances() -> Any:
        return container().balances

    return {
        "payments": Provide(payments, sync_to_thread=False, use_cache=False),
        "ledger": Provide(ledger, sync_to_thread=False, use_cache=False),
        "treasury": Provide(treasury, sync_to_thread=False, use_cache=False),
        "balances": Provide(balances, sync_to_thread=False, use_cache=False),
    }
