"""The whole service wired by bootstrap() with fakes, for unit tests: each committed event is
fed to every handler subscribed to it, in commit order, like the relay does."""

from __future__ import annotations

import asyncio
from typing import Any

from marketplace_pay.bootstrap import bootstrap
from marketplace_pay.infra.dispatch import Dispatcher
from marketplace_pay.infra.memory_bus import InMemoryEventBus
from marketplace_pay.payments.adapters.http import render
from marketplace_pay.payments.application.create_payment import CreatePayment, Created, LineRequest
from marketplace_pay.payments.application.ports import AuthorizationGateway, CaptureOutcome
from marketplace_pay.settings import Settings
from marketplace_pay.shared.clock import FixedClock
from marketplace_pay.shared.envelope import Envelope
from marketplace_pay.shared.money import Currency, Money
from tests.fakes import (
    FakeBalanceStore,
    FakeDatabase,
    FakeIds,
    FakeLedgerState,
    FakeLedgerUnitOfWork,
    FakeOverlay,
    FakePaymentsUnitOfWork,
    FakeRetryQueue,
    FakeSellerStore,
    ScriptedAuthorizationGateway,
    ScriptedCaptureGateway,
)


class NoDeadLetters:
    async def record(self, **_: object) -> None:
        raise AssertionError("unexpected dead letter")


class World:
    def __init__(
        self,
        answers: dict[int, list[CaptureOutcome]] | None = None,
        *,
        psp_auth: AuthorizationGateway | None = None,
        duplicate: bool = False,
        settings: Settings | None = None,
    ) -> None:
        self.clock = FixedClock()
        self.db = FakeDatabase(self.clock)
        self.sellers = FakeSellerStore(self.clock)
        self.ledger = FakeLedgerState(self.clock, self.sellers)
        self.psp_auth = psp_auth or ScriptedAuthorizationGateway()
        self.psp = ScriptedCaptureGateway(answers)
        self.retries = FakeRetryQueue()
        self.overlay = FakeOverlay()
        self.balance_store = FakeBalanceStore(self.ledger)
        self.container = bootstrap(
            settings or Settings(jwt_secret="x", psp_auth_timeout_ms=50, psp_capture_timeout_ms=50),
            clock=self.clock,
            ids=FakeIds(),
            bus=InMemoryEventBus(Dispatcher(dead_letters=NoDeadLetters(), max_attempts=1)),
            psp_auth=self.psp_auth,
            psp_capture=self.psp,
            payments_uow=lambda: FakePaymentsUnitOfWork(self.db),
            retries=self.retries,
            ledger_uow=lambda: FakeLedgerUnitOfWork(self.db, self.ledger),
            overlay=self.overlay,
            balance_store=self.balance_store,
            sellers=self.sellers,
            payment_view=lambda _: asyncio.sleep(0),  # type: ignore[arg-type,return-value]
        )
        self.handlers: dict[str, list[Any]] = {}
        for sub in self.container.subscriptions:
            self.handlers.setdefault(sub.event.event_type, []).append(sub.handler)
        self.cursor = 0
        self.duplicate = duplicate
        self.delivered: list[Envelope[Any]] = []

    async def create(self, cmd: CreatePayment) -> Any:
        return await self.container.create_payment(cmd, render=render)

    async def pay(self, *amounts: int, sellers: list[str] | None = None, currency: Currency = Currency.EUR) -> int:
        sellers = sellers or ["SELLER-111", "SELLER-222", "SELLER-333"]
        lines = [LineRequest(sellers[i], Money(a, currency)) for i, a in enumerate(amounts)]
        cmd = CreatePayment(
            buyer_id="b", order_id=str(self.clock.now_ms()), total=Money(sum(amounts), currency), lines=lines, trace_id="f" * 32
        )
        result = await self.create(cmd)
        assert isinstance(result, Created)
        self.clock.advance(ms=1)
        return result.payment.payment_id

    async def drain(self) -> None:
        while self.cursor < len(self.db.state.outbox):
            env = self.db.state.outbox[self.cursor]
            self.cursor += 1
            for handler in self.handlers.get(env.event_type, []):
                self.delivered.append(env)
                await handler([env, env] if self.duplicate else [env])
                if self.duplicate:
                    await handler([env])

    async def settle(self, rounds: int = 20) -> None:
        for _ in range(rounds):
            await self.drain()
            self.clock.advance(ms=60_000)
            if not await self.container.dispatch_due_retries():
                await self.drain()
                return
        raise AssertionError("did not settle")

    def orders(self) -> dict[int, Any]:
        return {i: s.order for i, s in self.db.state.orders.items()}

    def payment(self, payment_id: int) -> Any:
        return self.db.state.payments[payment_id].payment

    def events(self, event_type: str) -> list[Envelope[Any]]:
        return [e for e in self.db.state.outbox if e.event_type == event_type]

    async def balance(self, account_code: str) -> int:
        balance = await self.container.read_balance(account_code)
        assert balance is not None
        return balance.balance_minor
