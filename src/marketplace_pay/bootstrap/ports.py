"""The ports every context needs, on the real adapters (`real_ports`) — unit tests build a
`Ports` of fakes instead."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from marketplace_pay.balances import BalanceStore, Overlay
from marketplace_pay.balances.adapters.postgres import PgBalanceStore
from marketplace_pay.balances.adapters.redis import RedisBalanceOverlay
from marketplace_pay.infra.dead_letters import DeadLetters, PgDeadLetters
from marketplace_pay.infra.relay import OutboxRelay
from marketplace_pay.infra.resources import Resources, Stores
from marketplace_pay.ledger import (
    BankGateway,
    LedgerReads,
    LedgerUnitOfWork,
    SellerStore,
    TreasuryReads,
    TreasuryUnitOfWork,
)
from marketplace_pay.ledger.adapters.pg_treasury import PgTreasuryReads, PgTreasuryUnitOfWork
from marketplace_pay.ledger.adapters.postgres import PgLedgerReads, PgLedgerUnitOfWork, PgSellerStore
from marketplace_pay.payments import PaymentViews
from marketplace_pay.payments.adapters.pg_capture import PgCaptureStore, PgRetryUnitOfWork
from marketplace_pay.payments.adapters.pg_payments import PgPaymentStore, PgPaymentViews
from marketplace_pay.payments.adapters.pg_refunds import PgRefundReads, PgRefundUnitOfWork
from marketplace_pay.payments.adapters.redis import RedisRetryQueue
from marketplace_pay.payments.application.capture import RetryQueue
from marketplace_pay.payments.application.ports import (
    CaptureStore,
    IdGenerator,
    PaymentStore,
    RefundReads,
    RefundUnitOfWork,
    RetryUnitOfWork,
)
from marketplace_pay.settings import Settings


@dataclass
class Ports:
    """What the contexts need from the outside, besides the PSP and the bus. `bank` None: the bank
    simulator, which bootstrap makes (it logs to the PSP's call log)."""

    ids: IdGenerator
    payments: PaymentStore
    capture: CaptureStore
    retry_uow: Callable[[], RetryUnitOfWork]
    retries: RetryQueue
    payment_views: PaymentViews
    ledger_uow: Callable[[], LedgerUnitOfWork]
    sellers: SellerStore
    ledger_reads: LedgerReads
    overlay: Overlay
    balance_store: BalanceStore
    dead_letters: DeadLetters
    treasury_uow: Callable[[], TreasuryUnitOfWork]
    treasury_reads: TreasuryReads
    bank: BankGateway | None = None
    refund_uow: Callable[[], RefundUnitOfWork] | None = None
    refund_reads: RefundReads | None = None


class NoIdLease:
    """The ids of a process that leased no generator (a CLI command): it creates no payment."""

    def next_id(self, shard: int) -> int:
        raise RuntimeError("this process holds no id lease: only a serving process creates payments")


class RelayWake:
    """Lets the stores, built before the relay, wake it after their commits."""

    relay: OutboxRelay | None = None

    def __call__(self, shards: Any) -> None:
        if self.relay is not None:
            self.relay.committed(shards)


def real_ports(settings: Settings, stores: Stores, wake: RelayWake) -> Ports:
    pool = stores.pool
    ids = stores.ids if isinstance(stores, Resources) and stores.ids is not None else NoIdLease()
    return Ports(
        ids=ids,
        payments=PgPaymentStore(pool, on_commit=wake),
        capture=PgCaptureStore(pool, on_commit=wake),
        retry_uow=lambda: PgRetryUnitOfWork(pool, on_commit=wake),
        retries=RedisRetryQueue(stores.redis, prefix=settings.redis.prefix),
        payment_views=PgPaymentViews(pool),
        ledger_uow=lambda: PgLedgerUnitOfWork(pool, on_commit=wake),
        sellers=PgSellerStore(pool),
        ledger_reads=PgLedgerReads(pool),
        overlay=RedisBalanceOverlay(stores.redis, prefix=settings.redis.prefix),
        balance_store=PgBalanceStore(pool),
        dead_letters=PgDeadLetters(pool),
        treasury_uow=lambda: PgTreasuryUnitOfWork(pool, on_commit=wake),
        treasury_reads=PgTreasuryReads(pool),
        refund_uow=lambda: PgRefundUnitOfWork(pool, on_commit=wake),
        refund_reads=PgRefundReads(pool),
    )
