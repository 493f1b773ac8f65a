"""The composition root: the one place that knows every concrete class.

`bootstrap(settings, resources)` wires the contexts on the real adapters; unit tests pass fakes
for the ports instead of `resources`. Starting and stopping services is infra/resources.py.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from marketplace_pay.balances.adapters.postgres import PgBalanceStore
from marketplace_pay.balances.adapters.redis import RedisBalanceOverlay
from marketplace_pay.balances.application import balances
from marketplace_pay.balances.application.balances import Balance, BalanceStore, Overlay
from marketplace_pay.infra.auth import JwtVerifier, resolve_jwt_secret
from marketplace_pay.infra.db import vacuum_if_autovacuum_off
from marketplace_pay.infra.dead_letters import PgDeadLetters
from marketplace_pay.infra.partitions import maintain_queue_tables
from marketplace_pay.infra.dispatch import Dispatcher
from marketplace_pay.infra.kafka_bus import KafkaEventBus
from marketplace_pay.infra.memory_bus import InMemoryEventBus
from marketplace_pay.infra.relay import OutboxRelay, live_instances
from marketplace_pay.infra.resources import Resources
from marketplace_pay.ledger.adapters.postgres import (
    JournalView,
    PgLedgerUnitOfWork,
    PgSellerStore,
    PostingLine,
    account_exists,
    fetch_payment_journals,
    fetch_postings,
)
from marketplace_pay.ledger.application import recording
from marketplace_pay.ledger.application.directory import CachedSellers, SellerStore
from marketplace_pay.ledger.application.recording import LedgerUnitOfWork
from marketplace_pay.ledger.domain.events import LedgerEntriesRecorded
from marketplace_pay.payments import CapturePaymentOrder, PaymentAuthorized, PaymentOrderFinalized
from marketplace_pay.payments.adapters.postgres import PgCaptureStore, PgPaymentStore, PgRetryUnitOfWork, fetch_payment_view
from marketplace_pay.payments.adapters.psp import CallLog, SimulatedAuthorizationGateway, SimulatedCaptureGateway
from marketplace_pay.payments.adapters.redis import RedisRetryQueue
from marketplace_pay.payments.application import capture
from marketplace_pay.payments.application.capture import Capturer, CapturePolicy, RetryQueue
from marketplace_pay.payments.application.create_payment import create_payment, resolve_pending_authorizations
from marketplace_pay.payments.application.ports import (
    AuthorizationGateway,
    CaptureGateway,
    CaptureStore,
    IdGenerator,
    PaymentStore,
    RetryUnitOfWork,
    SellerAccount,
)
from marketplace_pay.payments.application.views import PaymentView
from marketplace_pay.settings import Settings
from marketplace_pay.shared.bus import EventBus, Subscription
from marketplace_pay.shared.clock import Clock, SystemClock
from marketplace_pay.shared.faults import faults

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Job:
    """A job the scheduler runs every `every_ms`; `exclusive`: once per cluster at a time."""

    name: str
    every_ms: int
    run: Callable[[], Awaitable[Any]]
    exclusive: bool = False


class LedgerSellerDirectory:
    """Payments' SellerDirectory port, answered by the ledger's account directory."""

    def __init__(self, sellers: CachedSellers) -> None:
        self._sellers = sellers

    async def sellers(self, seller_ids: Sequence[str]) -> dict[str, SellerAccount]:
        return {
            s.seller_id: SellerAccount(s.seller_id, s.currency, s.status.value, s.commission_bps)
            for s in await self._sellers.many(seller_ids)
        }


@dataclass
class Container:
    settings: Settings
    clock: Clock
    bus: EventBus
    verifier: JwtVerifier
    psp_log: CallLog
    sellers: SellerStore
    seller_cache: CachedSellers
    retries: RetryQueue
    overlay: Overlay
    balance_store: BalanceStore
    create_payment: Callable[..., Awaitable[Any]]
    payment_view: Callable[[int], Awaitable[PaymentView | None]]
    resolve_pending_authorizations: Callable[[], Awaitable[int]]
    dispatch_due_retries: Callable[[], Awaitable[int]]
    requeue_lost_retries: Callable[[], Awaitable[int]]
    sweep_stuck_orders: Callable[[], Awaitable[int]]
    read_balance: Callable[[str], Awaitable[Balance | None]]
    fold_balances: Callable[[], Awaitable[Any]]
    reconcile: Callable[..., Awaitable[balances.ReconcileReport]]
    statement: Callable[..., Awaitable[tuple[list[PostingLine], bool]]]
    payment_journals: Callable[[int], Awaitable[list[JournalView]]]
    account_exists: Callable[[str], Awaitable[bool]]
    subscriptions: list[Subscription] = field(default_factory=list)
    jobs: list[Job] = field(default_factory=list)
    relay: OutboxRelay | None = None
    resources: Resources | None = None

    async def start(self) -> None:
        """Subscribe the handlers, start the bus and the outbox relay."""
        for subscription in self.subscriptions:
            self.bus.subscribe(subscription)
        await self.bus.start()
        if self.relay is not None:
            await self.relay.start()

    async def stop(self) -> None:
        if self.relay is not None:
            await self.relay.stop(grace_s=self.settings.shutdown_grace_s / 2)
        await self.bus.stop()


@dataclass
class Ports:
    """What the contexts need from the outside; `bootstrap` fills in the real adapters."""

    ids: IdGenerator
    bus: EventBus
    payments: PaymentStore
    capture: CaptureStore
    retry_uow: Callable[[], RetryUnitOfWork]
    retries: RetryQueue
    ledger_uow: Callable[[], LedgerUnitOfWork]
    sellers: SellerStore
    overlay: Overlay
    balance_store: BalanceStore
    payment_view: Callable[[int], Awaitable[PaymentView | None]]
    statement: Callable[..., Awaitable[tuple[list[PostingLine], bool]]] | None = None
    payment_journals: Callable[[int], Awaitable[list[JournalView]]] | None = None
    account_exists: Callable[[str], Awaitable[bool]] | None = None


def real_ports(settings: Settings, resources: Resources, relay_wake: Callable[..., None]) -> Ports:
    pool = resources.pool
    assert resources.ids is not None
    return Ports(
        ids=resources.ids,
        bus=_bus(settings, Dispatcher(dead_letters=PgDeadLetters(pool), max_attempts=settings.handler_max_attempts)),
        payments=PgPaymentStore(pool, on_commit=relay_wake),
        capture=PgCaptureStore(pool, on_commit=relay_wake),
        retry_uow=lambda: PgRetryUnitOfWork(pool, on_commit=relay_wake),
        retries=RedisRetryQueue(resources.redis, prefix=settings.redis_prefix),
        ledger_uow=lambda: PgLedgerUnitOfWork(pool, on_commit=relay_wake),
        sellers=PgSellerStore(pool),
        overlay=RedisBalanceOverlay(resources.redis, prefix=settings.redis_prefix),
        balance_store=PgBalanceStore(pool),
        payment_view=partial(fetch_payment_view, pool),
        statement=partial(fetch_postings, pool),
        payment_journals=partial(fetch_payment_journals, pool),
        account_exists=partial(account_exists, pool),
    )


def _bus(settings: Settings, dispatcher: Dispatcher) -> EventBus:
    if settings.kafka_bootstrap_servers:
        return KafkaEventBus(
            dispatcher,
            bootstrap_servers=settings.kafka_bootstrap_servers,
            client_id=settings.instance_name,
            topics=(),
            topic_partitions=settings.kafka_topic_partitions,
            replication_factor=settings.kafka_replication_factor,
            session_timeout_ms=settings.kafka_session_timeout_ms,
        )
    return InMemoryEventBus(dispatcher, partitions=settings.bus_partitions)


async def _unavailable(*_: Any, **__: Any) -> Any:
    raise RuntimeError("this read needs the database")


def bootstrap(
    settings: Settings,
    resources: Resources | None = None,
    *,
    ports: Ports | None = None,
    clock: Clock | None = None,
    psp_auth: AuthorizationGateway | None = None,
    psp_capture: CaptureGateway | None = None,
    rng: random.Random | None = None,
) -> Container:
    """Wire everything: on the real adapters with `resources`, else on the given `ports`."""
    faults.configure(settings.faults)
    clock = clock or SystemClock()
    psp_log = CallLog(path=settings.psp_call_log)
    psp_auth = psp_auth or SimulatedAuthorizationGateway(settings.psp_scenario, seed=settings.psp_seed, log=psp_log)
    psp_capture = psp_capture or SimulatedCaptureGateway(settings.psp_scenario, seed=settings.psp_seed, log=psp_log)
    relay = None
    if ports is None:
        if resources is None:
            raise ValueError("bootstrap needs resources or ports")
        pool = resources.pool
        wake = _Wake()
        ports = real_ports(settings, resources, wake)
        relay = OutboxRelay(
            pool,
            ports.bus,
            locks=resources.locks,
            live_instances=partial(live_instances, pool),
            batch_size=settings.outbox_batch_size,
            poll_ms=settings.outbox_poll_ms,
            inflight_max=settings.outbox_inflight_max,
        )
        wake.relay = relay
    s = settings
    seller_cache = CachedSellers(ports.sellers, clock=clock)
    capturer = Capturer(
        store=ports.capture,
        psp=psp_capture,
        retries=ports.retries,
        clock=clock,
        policy=CapturePolicy(
            timeout_ms=s.psp_capture_timeout_ms, max_retries=s.retry_max, base_ms=s.retry_base_ms, cap_ms=s.retry_cap_ms
        ),
        inflight=asyncio.Semaphore(s.psp_max_inflight),
        rng=rng,
    )
    batch = s.handler_batch_max
    psp_batches = max(1, s.psp_max_inflight // 16)
    subscriptions = [
        Subscription(
            capture.CAPTURE_AUTHORIZED,
            PaymentAuthorized,
            partial(capture.capture_authorized_payments, capturer=capturer),
            batch,
            ordered=False,
            concurrency=psp_batches,
        ),
        Subscription(
            capture.CAPTURE_RETRIES,
            CapturePaymentOrder,
            partial(capture.capture_due_orders, capturer=capturer),
            batch,
            ordered=False,
            concurrency=psp_batches,
        ),
        Subscription(
            recording.RECORD_AUTHORIZATIONS,
            PaymentAuthorized,
            partial(recording.record_authorizations, uow=ports.ledger_uow, clock=clock),
            batch,
            ordered=False,
            concurrency=2,
        ),
        Subscription(
            recording.RECORD_FINALIZATIONS,
            PaymentOrderFinalized,
            partial(recording.record_finalizations, uow=ports.ledger_uow, rates=seller_cache, clock=clock),
            batch,
            ordered=False,
            concurrency=2,
        ),
        Subscription(
            balances.APPLY_LEDGER_ENTRIES,
            LedgerEntriesRecorded,
            partial(balances.apply_ledger_entries, overlay=ports.overlay),
            batch,
            ordered=False,
            concurrency=2,
        ),
    ]
    verifier = JwtVerifier(
        secret=None if s.jwt_jwks_url else resolve_jwt_secret(s.jwt_secret, s.data_dir),
        jwks_url=s.jwt_jwks_url,
        issuer=s.jwt_issuer,
        audience=s.jwt_audience,
        jwks_cache_s=s.jwt_jwks_cache_s,
    )
    container = Container(
        settings=s,
        clock=clock,
        bus=ports.bus,
        verifier=verifier,
        psp_log=psp_log,
        sellers=ports.sellers,
        seller_cache=seller_cache,
        retries=ports.retries,
        overlay=ports.overlay,
        balance_store=ports.balance_store,
        create_payment=partial(
            create_payment,
            store=ports.payments,
            sellers=LedgerSellerDirectory(seller_cache),
            psp=psp_auth,
            ids=ports.ids,
            clock=clock,
            auth_timeout_ms=s.psp_auth_timeout_ms,
            in_progress_ms=s.idempotency_in_progress_ms,
        ),
        payment_view=ports.payment_view,
        resolve_pending_authorizations=partial(
            resolve_pending_authorizations,
            store=ports.payments,
            psp=psp_auth,
            clock=clock,
            older_than_ms=s.pending_auth_check_after_ms,
        ),
        dispatch_due_retries=partial(capture.dispatch_due_retries, uow=ports.retry_uow, retries=ports.retries, clock=clock),
        requeue_lost_retries=partial(
            capture.requeue_lost_retries, store=ports.capture, retries=ports.retries, clock=clock, overdue_ms=s.retry_requeue_after_ms
        ),
        sweep_stuck_orders=partial(
            capture.sweep_stuck_orders, store=ports.capture, uow=ports.retry_uow, clock=clock, stuck_after_s=s.sweep_stuck_after_s
        ),
        read_balance=partial(balances.read_balance, store=ports.balance_store, overlay=ports.overlay, clock=clock),
        fold_balances=partial(balances.fold_balances, store=ports.balance_store, overlay=ports.overlay),
        reconcile=partial(balances.reconcile, store=ports.balance_store, overlay=ports.overlay, clock=clock),
        statement=ports.statement or _unavailable,
        payment_journals=ports.payment_journals or _unavailable,
        account_exists=ports.account_exists or _unavailable,
        subscriptions=subscriptions,
        relay=relay,
        resources=resources,
    )
    container.jobs = _jobs(container, resources, ports)
    return container


def _jobs(c: Container, resources: Resources | None, ports: Ports) -> list[Job]:
    s = c.settings

    async def reclaim_retries() -> int:
        return await ports.retries.reclaim(now_ms=c.clock.now_ms(), older_than_ms=s.retry_inflight_timeout_ms)

    async def sweep_overlay() -> None:
        await balances.sweep_overlay(store=ports.balance_store, overlay=ports.overlay)

    async def reconcile() -> None:
        report = await c.reconcile()
        if not report.ok:
            log.error("reconciliation found differences", extra={"drift": balances.drift_report(report)[:50]})

    jobs = [
        Job("payments-resolve-pending-auth", s.pending_auth_poll_ms, c.resolve_pending_authorizations),
        Job("payments-retry-dispatch", s.retry_poll_ms, c.dispatch_due_retries),
        Job("payments-retry-requeue", max(1000, s.retry_requeue_after_ms // 2), c.requeue_lost_retries),
        Job("payments-retry-reclaim", max(1000, s.retry_inflight_timeout_ms // 4), reclaim_retries),
        Job("payments-retry-gauge", 5000, ports.retries.sizes),
        Job("payments-sweep-stuck-orders", max(1000, s.sweep_stuck_after_s * 250), c.sweep_stuck_orders, exclusive=True),
        Job("balances-fold", s.balance_fold_ms, c.fold_balances),
        Job("balances-overlay-sweep", 60_000, sweep_overlay),
        Job("balances-reconcile", s.reconcile_interval_s * 1000, reconcile, exclusive=True),
    ]
    if resources is not None and c.relay is not None:
        jobs += queue_jobs(s, resources, c.relay)
    return jobs


def queue_jobs(s: Settings, resources: Resources, relay: OutboxRelay) -> list[Job]:
    """Upkeep of the delivery machinery: the relay, the queue tables, dead letters, vacuum."""
    pool = resources.pool
    dead_letters = PgDeadLetters(pool)

    async def supervise_relay() -> None:
        relay.ensure_running()

    async def maintain_partitions() -> None:
        async with pool.acquire() as conn:
            await maintain_queue_tables(conn, outbox_retention_s=s.outbox_retention_s, responses_ttl_hours=s.idempotency_ttl_hours)

    jobs = [
        Job("outbox-relay", 2000, supervise_relay),
        Job("outbox-backlog", 5000, relay.backlog),
        Job("queue-partitions", 60_000, maintain_partitions, exclusive=True),
        Job("dead-letters-gauge", 10_000, dead_letters.gauge),
    ]
    if s.db_vacuum_s > 0:

        async def vacuum() -> None:
            async with pool.acquire() as conn:
                await vacuum_if_autovacuum_off(conn)

        jobs.append(Job("db-vacuum", s.db_vacuum_s * 1000, vacuum, exclusive=True))
    return jobs


class _Wake:
    """Lets the stores, built before the relay, wake it after their commits."""

    relay: OutboxRelay | None = None

    def __call__(self, shards: Any) -> None:
        if self.relay is not None:
            self.relay.committed(shards)
