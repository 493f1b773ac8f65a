"""The one place that knows every concrete class.

`open_resources(settings)` starts or connects to the services (embedded PostgreSQL/Redis when
no URL is set), applies migrations and leases a snowflake instance id. `bootstrap(settings,
resources)` wires the contexts into a `Container`; unit tests call `bootstrap` with fakes
instead of resources.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from marketplace_pay.infra.auth import JwtVerifier, resolve_jwt_secret
from marketplace_pay.infra.db import create_pool, migrate
from marketplace_pay.infra.dispatch import Dispatcher, PgDeadLetters
from marketplace_pay.infra.embedded import EmbeddedRedis, embedded_postgres
from marketplace_pay.infra.kafka_bus import KafkaEventBus
from marketplace_pay.infra.locks import LeasedIdGenerator, SessionLocks
from marketplace_pay.infra.memory_bus import InMemoryEventBus
from marketplace_pay.infra.outbox import OutboxRelay
from marketplace_pay.balances.adapters.postgres import PgBalanceStore
from marketplace_pay.balances.adapters.redis import RedisBalanceOverlay
from marketplace_pay.balances.application import balances
from marketplace_pay.balances.application.balances import Balance, BalanceStore, Overlay
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
from marketplace_pay.ledger.application.directory import SellerStore
from marketplace_pay.ledger.application.recording import LedgerUnitOfWork
from marketplace_pay.ledger.domain.events import LedgerEntriesRecorded, LedgerRecordingCommand
from marketplace_pay.payments.adapters.postgres import PgPaymentsUnitOfWork, fetch_payment_view
from marketplace_pay.payments.adapters.psp import CallLog, SimulatedAuthorizationGateway, SimulatedCaptureGateway
from marketplace_pay.payments.adapters.redis import RedisRetryQueue
from marketplace_pay.payments.application import capture
from marketplace_pay.payments.application.capture import RetryQueue
from marketplace_pay.payments.application.create_payment import create_payment, resolve_pending_authorizations
from marketplace_pay.payments.application.ports import (
    AuthorizationGateway,
    CaptureGateway,
    IdGenerator,
    PaymentsUnitOfWork,
    SellerAccount,
    SellerDirectory,
)
from marketplace_pay.payments.application.views import PaymentView
from marketplace_pay.payments.domain.events import (
    PaymentAuthorized,
    PaymentOrderCaptureCommand,
    PaymentOrderCreated,
    PaymentOrderFinalized,
    PaymentOrderPspResultUpdated,
)
from marketplace_pay.settings import Settings
from marketplace_pay.shared.bus import EventBus, Subscription
from marketplace_pay.shared.clock import Clock, SystemClock
from marketplace_pay.shared.faults import faults

log = logging.getLogger(__name__)


@dataclass
class Resources:
    """Connections to the backing services, owned by whoever opened them."""

    dsn: str
    redis_url: str
    pool: asyncpg.Pool
    redis: aioredis.Redis
    locks: SessionLocks
    ids: LeasedIdGenerator
    embedded_redis: EmbeddedRedis | None = None

    async def close(self) -> None:
        await self.ids.release()
        await self.locks.stop()
        await self.redis.aclose()
        await self.pool.close()
        if self.embedded_redis is not None:
            await asyncio.to_thread(self.embedded_redis.stop)


async def resolve_dsn(settings: Settings) -> str:
    if settings.database_url:
        return settings.database_url
    return await asyncio.to_thread(embedded_postgres, settings.data_dir)


@dataclass
class Stores:
    """The databases only (for CLI commands): no id lease, no relay."""

    pool: asyncpg.Pool
    redis: aioredis.Redis
    embedded_redis: EmbeddedRedis | None

    async def close(self) -> None:
        await self.redis.aclose()
        await self.pool.close()
        if self.embedded_redis is not None:
            await asyncio.to_thread(self.embedded_redis.stop)


async def _connect(settings: Settings) -> tuple[str, str, EmbeddedRedis | None]:
    """DSN and Redis URL (starting the embedded ones when unset), with migrations applied."""
    dsn = await resolve_dsn(settings)
    embedded_redis = None
    redis_url = settings.redis_url
    if not redis_url:
        embedded_redis = EmbeddedRedis(settings.data_dir)
        redis_url = await asyncio.to_thread(embedded_redis.start)
    conn = await asyncpg.connect(dsn)
    try:
        applied = await migrate(conn)
        if applied:
            log.info("migrations applied", extra={"migrations": applied})
    finally:
        await conn.close()
    return dsn, redis_url, embedded_redis


def _redis(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5, health_check_interval=30)


async def open_stores(settings: Settings) -> Stores:
    dsn, redis_url, embedded_redis = await _connect(settings)
    pool = await create_pool(dsn, min_size=1, max_size=4, application_name=f"marketplace-pay:{settings.instance_name}:cli")
    return Stores(pool, _redis(redis_url), embedded_redis)


async def claim_redis(pool: asyncpg.Pool, client: aioredis.Redis, prefix: str) -> None:
    """Redis keys under `prefix` belong to one database. Keys left by another (the database was
    recreated or restored) would mislead the retry timers and the balance overlay: drop them —
    Postgres holds everything they derive from (pending retries are requeued from it, the
    overlay refills and the fold catches up)."""
    identity = await pool.fetchval("SELECT identity FROM database_identity")
    key = f"{prefix}database"
    previous = await client.get(key)  # (SET NX GET needs Redis 7; the embedded one is 6.2)
    if previous is None:
        await client.set(key, identity, nx=True)
    elif previous.decode() != identity:
        stale = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000) if k.decode() != key]
        for i in range(0, len(stale), 1000):
            await client.delete(*stale[i : i + 1000])
        await client.set(key, identity)
        log.warning("Redis held state of another database; cleared it", extra={"keys": len(stale), "prefix": prefix})


async def open_resources(settings: Settings) -> Resources:
    dsn, redis_url, embedded_redis = await _connect(settings)
    pool = await create_pool(
        dsn,
        min_size=settings.db_pool_min,
        max_size=settings.db_pool_max,
        application_name=f"marketplace-pay:{settings.instance_name}",
        notify=settings.kafka_bootstrap_servers is not None,
    )
    locks = SessionLocks(dsn, application_name=f"marketplace-pay:{settings.instance_name}")
    await locks.start()
    ids = LeasedIdGenerator(locks, holder=settings.instance_name)
    await ids.acquire()
    ids.start()
    redis_client = _redis(redis_url)
    await claim_redis(pool, redis_client, settings.redis_prefix)
    return Resources(dsn, redis_url, pool, redis_client, locks, ids, embedded_redis)


class LedgerSellerDirectory:
    """Payments' SellerDirectory port, answered by the ledger's account directory."""

    def __init__(self, store: SellerStore) -> None:
        self._store = store

    async def sellers(self, seller_ids: Sequence[str]) -> dict[str, SellerAccount]:
        return {
            s.seller_id: SellerAccount(s.seller_id, s.currency, s.status.value, s.commission_bps)
            for s in await self._store.many(seller_ids)
        }


@dataclass
class Container:
    settings: Settings
    clock: Clock
    ids: IdGenerator
    bus: EventBus
    psp_log: CallLog
    psp_auth: AuthorizationGateway
    psp_capture: CaptureGateway
    payments_uow: Callable[[], PaymentsUnitOfWork]
    sellers: SellerStore
    seller_directory: SellerDirectory
    verifier: JwtVerifier
    payment_view: Callable[[int], Awaitable[PaymentView | None]]
    retries: RetryQueue
    ledger_uow: Callable[[], LedgerUnitOfWork]
    overlay: Overlay
    balance_store: BalanceStore
    statement: Callable[..., Awaitable[tuple[list[PostingLine], bool]]]
    payment_journals: Callable[[int], Awaitable[list[JournalView]]]
    account_exists: Callable[[str], Awaitable[bool]]
    resources: Resources | None = None
    relay: OutboxRelay | None = None
    subscriptions: list[Subscription] = field(default_factory=list)
    create_payment: Callable[..., Awaitable[Any]] = field(init=False)
    resolve_pending_authorizations: Callable[[], Awaitable[int]] = field(init=False)
    dispatch_due_retries: Callable[[], Awaitable[int]] = field(init=False)
    requeue_lost_retries: Callable[[], Awaitable[int]] = field(init=False)
    read_balance: Callable[[str], Awaitable[Balance | None]] = field(init=False)
    fold_balances: Callable[[], Awaitable[Any]] = field(init=False)
    reconcile: Callable[..., Awaitable[balances.ReconcileReport]] = field(init=False)

    def __post_init__(self) -> None:
        s = self.settings
        self._wire_capture()
        self._wire_ledger()
        self.create_payment = partial(
            create_payment,
            uow=self.payments_uow,
            sellers=self.seller_directory,
            psp=self.psp_auth,
            ids=self.ids,
            clock=self.clock,
            auth_timeout_ms=s.psp_auth_timeout_ms,
            idempotency_lease_ms=s.idempotency_lease_ms,
        )
        self.resolve_pending_authorizations = partial(
            resolve_pending_authorizations,
            uow=self.payments_uow,
            psp=self.psp_auth,
            clock=self.clock,
            older_than_ms=s.pending_auth_check_after_ms,
        )

    def _wire_capture(self) -> None:
        s, uow, clock = self.settings, self.payments_uow, self.clock
        batch = s.handler_batch_max
        self.subscriptions += [
            Subscription(
                capture.EXPAND,
                PaymentAuthorized,
                partial(capture.expand_authorized_payments, uow=uow, clock=clock),
                batch,
            ),
            Subscription(capture.ENQUEUE, PaymentOrderCreated, partial(capture.request_captures, uow=uow, clock=clock), batch),
            Subscription(
                capture.CAPTURE,
                PaymentOrderCaptureCommand,
                partial(
                    capture.capture_payment_orders,
                    uow=uow,
                    psp=self.psp_capture,
                    clock=clock,
                    timeout_ms=s.psp_capture_timeout_ms,
                ),
                batch,
            ),
            Subscription(
                capture.APPLY,
                PaymentOrderPspResultUpdated,
                partial(
                    capture.apply_capture_results,
                    uow=uow,
                    retries=self.retries,
                    clock=clock,
                    max_retries=s.retry_max,
                    base_ms=s.retry_base_ms,
                    cap_ms=s.retry_cap_ms,
                ),
                batch,
            ),
        ]
        self.dispatch_due_retries = partial(capture.dispatch_due_retries, uow=uow, retries=self.retries, clock=clock)
        self.requeue_lost_retries = partial(
            capture.requeue_lost_retries, uow=uow, retries=self.retries, clock=clock, overdue_ms=s.retry_requeue_after_ms
        )

    def _wire_ledger(self) -> None:
        uow, clock, batch = self.ledger_uow, self.clock, self.settings.handler_batch_max
        self.subscriptions += [
            Subscription(
                recording.DISPATCH_AUTHORIZED,
                PaymentAuthorized,
                partial(recording.request_recording_of_authorizations, uow=uow, clock=clock),
                batch,
            ),
            Subscription(
                recording.DISPATCH_FINALIZED,
                PaymentOrderFinalized,
                partial(recording.request_recording_of_finalizations, uow=uow, clock=clock),
                batch,
            ),
            Subscription(
                recording.RECORD, LedgerRecordingCommand, partial(recording.record_ledger_entries, uow=uow, clock=clock), batch
            ),
            Subscription(
                balances.APPLY, LedgerEntriesRecorded, partial(balances.apply_ledger_entries, overlay=self.overlay), batch
            ),
        ]
        self.read_balance = partial(balances.read_balance, store=self.balance_store, overlay=self.overlay, clock=clock)
        self.fold_balances = partial(balances.fold_balances, store=self.balance_store, overlay=self.overlay)
        self.reconcile = partial(balances.reconcile, store=self.balance_store, overlay=self.overlay, clock=clock)

    async def start(self) -> None:
        """Subscribe the handlers, start the bus and the outbox relay."""
        for subscription in self.subscriptions:
            self.bus.subscribe(subscription)
        await self.bus.start()
        if self.relay is not None:
            self.relay.ensure_running()

    async def stop(self) -> None:
        if self.relay is not None:
            await self.relay.stop(grace_s=self.settings.shutdown_grace_s / 2)
        await self.bus.stop()


async def _unavailable(*_: Any, **__: Any) -> Any:
    raise RuntimeError("reads need the database (bootstrap with resources)")


def _bus(settings: Settings, dispatcher: Dispatcher, topics: Sequence[str]) -> EventBus:
    if settings.kafka_bootstrap_servers:
        return KafkaEventBus(
            dispatcher,
            bootstrap_servers=settings.kafka_bootstrap_servers,
            client_id=settings.instance_name,
            topics=topics,
            topic_partitions=settings.kafka_topic_partitions,
            session_timeout_ms=settings.kafka_session_timeout_ms,
        )
    return InMemoryEventBus(dispatcher, partitions=settings.bus_partitions)


def bootstrap(
    settings: Settings,
    resources: Resources | None = None,
    *,
    clock: Clock | None = None,
    ids: IdGenerator | None = None,
    bus: EventBus | None = None,
    psp_auth: AuthorizationGateway | None = None,
    psp_capture: CaptureGateway | None = None,
    payments_uow: Callable[[], PaymentsUnitOfWork] | None = None,
    retries: RetryQueue | None = None,
    ledger_uow: Callable[[], LedgerUnitOfWork] | None = None,
    overlay: Overlay | None = None,
    balance_store: BalanceStore | None = None,
    sellers: SellerStore | None = None,
    payment_view: Callable[[int], Awaitable[PaymentView | None]] | None = None,
) -> Container:
    """Wire everything. With `resources`, every adapter is the real one unless overridden;
    without, the caller passes fakes for what it uses."""
    faults.configure(settings.faults)
    clock = clock or SystemClock()
    psp_log = CallLog(path=settings.psp_call_log)
    psp_auth = psp_auth or SimulatedAuthorizationGateway(settings.psp_scenario, seed=settings.psp_seed, log=psp_log)
    psp_capture = psp_capture or SimulatedCaptureGateway(settings.psp_scenario, seed=settings.psp_seed, log=psp_log)
    relay = None
    if resources is not None:
        pool = resources.pool
        dispatcher = Dispatcher(dead_letters=PgDeadLetters(pool), max_attempts=settings.handler_max_attempts)
        bus = bus or _bus(settings, dispatcher, topics=())
        relay = OutboxRelay(
            pool,
            bus,
            locks=resources.locks,
            batch_size=settings.outbox_batch_size,
            poll_ms=settings.outbox_poll_ms,
            inflight_max=settings.outbox_inflight_max,
            relay_id=f"{settings.instance_name}-relay",
        )
        wake = relay.wake
        payments_uow = payments_uow or (lambda: PgPaymentsUnitOfWork(pool, on_commit=wake))
        sellers = sellers or PgSellerStore(pool)
        payment_view = payment_view or partial(fetch_payment_view, pool)
        ids = ids or resources.ids
        retries = retries or RedisRetryQueue(resources.redis, prefix=settings.redis_prefix)
        ledger_uow = ledger_uow or (lambda: PgLedgerUnitOfWork(pool, on_commit=wake))
        overlay = overlay or RedisBalanceOverlay(resources.redis, prefix=settings.redis_prefix)
        balance_store = balance_store or PgBalanceStore(pool)
        reads: dict[str, Any] = {
            "statement": partial(fetch_postings, pool),
            "payment_journals": partial(fetch_payment_journals, pool),
            "account_exists": partial(account_exists, pool),
        }
    else:
        reads = {"statement": _unavailable, "payment_journals": _unavailable, "account_exists": _unavailable}
    needed = (bus, ids, payments_uow, sellers, payment_view, retries, ledger_uow, overlay, balance_store)
    if any(x is None for x in needed):
        raise ValueError(
            "without resources, pass bus, ids, payments_uow, sellers, payment_view, retries, ledger_uow, overlay "
            "and balance_store"
        )
    verifier = JwtVerifier(
        secret=None if settings.jwt_jwks_url else resolve_jwt_secret(settings.jwt_secret, settings.data_dir),
        jwks_url=settings.jwt_jwks_url,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
        jwks_cache_s=settings.jwt_jwks_cache_s,
    )
    container = Container(
        settings=settings,
        clock=clock,
        ids=ids,
        bus=bus,
        psp_log=psp_log,
        psp_auth=psp_auth,
        psp_capture=psp_capture,
        payments_uow=payments_uow,
        sellers=sellers,
        seller_directory=LedgerSellerDirectory(sellers),
        verifier=verifier,
        payment_view=payment_view,
        retries=retries,
        ledger_uow=ledger_uow,
        overlay=overlay,
        balance_store=balance_store,
        resources=resources,
        **reads,
        relay=relay,
    )
    return container
