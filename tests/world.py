"""The whole service wired by bootstrap() with fakes, for unit tests: each committed event is
fed to every handler subscribed to it, in commit order, like the relay does."""

from __future__ import annotations

import random
from typing import Any

from marketplace_pay.bootstrap import Ports, bootstrap
from marketplace_pay.payments.adapters.http import render
from marketplace_pay.payments.application.create_payment import Created, CreatePayment, LineRequest
from marketplace_pay.payments.application.ports import AuthorizationGateway, CaptureOutcome, Keyed
from marketplace_pay.settings import Settings
from marketplace_pay.shared.clock import FixedClock
from marketplace_pay.shared.envelope import Envelope
from marketplace_pay.shared.money import Currency, Money
from tests.fakes import (
    FakeBalanceStore,
    FakeCaptureStore,
    FakeDatabase,
    FakeIds,
    FakeLedgerReads,
    FakeLedgerUnitOfWork,
    FakeOverlay,
    FakePaymentStore,
    FakePaymentViews,
    FakeRetryQueue,
    FakeRetryUnitOfWork,
    FakeSellerStore,
    FakeTreasuryReads,
    FakeTreasuryUnitOfWork,
    ScriptedAuthorizationGateway,
    ScriptedBank,
    ScriptedCaptureGateway,
)
from tests.fakes.payments import Lost


class NoDeadLetters:
    """Unit tests expect every event to be handled."""

    async def record(self, **_: object) -> None:
        raise AssertionError("unexpected dead letter")

    async def find(self, **_: object) -> list[Any]:
        return []

    async def replay(self, **_: object) -> list[Any]:  # nothing was dead-lettered
        return []

    async def gauge(self) -> int:
        return 0


class World:
    def __init__(
        self,
        answers: dict[int, list[CaptureOutcome | Lost]] | None = None,
        *,
        psp_auth: AuthorizationGateway | None = None,
        duplicate: bool = False,
        settings: Settings | None = None,
        bank: ScriptedBank | None = None,
    ) -> None:
        self.clock = FixedClock()
        self.db = FakeDatabase(self.clock)
        self.sellers = FakeSellerStore(self.clock)
        self.psp_auth = psp_auth or ScriptedAuthorizationGateway()
        self.psp = ScriptedCaptureGateway(answers)
        self.retries = FakeRetryQueue()
        self.overlay = FakeOverlay()
        self.balance_store = FakeBalanceStore(self.db)
        self.payments = FakePaymentStore(self.db)
        self.bank = bank or ScriptedBank()
        self.container = bootstrap(
            settings or Settings().with_(jwt_secret="x" * 40, psp_auth_timeout_ms=50, psp_capture_timeout_ms=50),
            ports=Ports(
                ids=FakeIds(),
                payments=self.payments,
                capture=FakeCaptureStore(self.db),
                retry_uow=lambda: FakeRetryUnitOfWork(self.db),
                retries=self.retries,
                payment_views=FakePaymentViews(self.db),
                ledger_uow=lambda: FakeLedgerUnitOfWork(self.db),
                sellers=self.sellers,
                ledger_reads=FakeLedgerReads(lambda: self.db.tables),
                overlay=self.overlay,
                balance_store=self.balance_store,
                dead_letters=NoDeadLetters(),
                treasury_uow=lambda: FakeTreasuryUnitOfWork(self.db, self.sellers),
                treasury_reads=FakeTreasuryReads(self.db, self.sellers),
                bank=self.bank,
            ),
            clock=self.clock,
            psp_auth=self.psp_auth,
            psp_capture=self.psp,
            rng=random.Random(7),
        )
        self.handlers: dict[str, list[Any]] = {}
        for sub in self.container.subscriptions:
            self.handlers.setdefault(sub.event.event_type, []).append(sub.handler)
        self.cursor = 0
        self.duplicate = duplicate
        self.delivered: list[Envelope[Any]] = []

    async def create(self, cmd: CreatePayment) -> Any:
        return await self.container.payments.create(cmd, render=render)

    async def pay(self, *amounts: int, sellers: list[str] | None = None, currency: Currency = Currency.EUR) -> int:
        sellers = sellers or ["SELLER-111", "SELLER-222", "SELLER-333"]
        lines = [LineRequest(sellers[i], Money(a, currency)) for i, a in enumerate(amounts)]
        cmd = CreatePayment(
            buyer_id="b",
            order_id=str(self.clock.now_ms()),
            total=Money(sum(amounts), currency),
            lines=lines,
            keyed=Keyed("client"),
            trace_id="f" * 32,
        )
        result = await self.create(cmd)
        assert isinstance(result, Created)
        self.clock.advance(ms=1)
        return result.payment.payment_id

    async def drain(self) -> None:
        while self.cursor < len(self.db.tables.outbox):
            env = self.db.tables.outbox[self.cursor]
            self.cursor += 1
            for handler in self.handlers.get(env.event_type, []):
                self.delivered.append(env)
                await handler([env, env] if self.duplicate else [env])
                if self.duplicate:
                    await handler([env])

    async def settle(self, rounds: int = 40) -> None:
        for _ in range(rounds):
            await self.drain()
            self.clock.advance(ms=60_000)
            if not await self.container.payments.dispatch_due_retries():
                await self.drain()
                return
        raise AssertionError("did not settle")

    def orders(self) -> dict[int, Any]:
        return {i: s.order for i, s in self.db.tables.orders.items()}

    def payment(self, payment_id: int) -> Any:
        return self.db.tables.payments[payment_id].payment

    def events(self, event_type: str) -> list[Envelope[Any]]:
        return [e for e in self.db.tables.outbox if e.event_type == event_type]

    async def balance(self, account_code: str) -> int:
        balance = await self.container.balances.of_account(account_code)
        assert balance is not None
        return balance.balance_minor
