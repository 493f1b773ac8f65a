"""The composition root: the one place that knows every concrete class, and does nothing but
wire them.

`bootstrap(settings, stores)` builds the three contexts — one wiring function each
(bootstrap/contexts.py) — on the real adapters (bootstrap/ports.py), the bus and, in a serving
process, the outbox relay and the jobs. Unit tests pass `ports=` of fakes instead. Opening and
closing the services (PostgreSQL, Redis, leases) is infra/resources.py; `open_container` does
both for a command-line process.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from marketplace_pay.balances import Balances
from marketplace_pay.bootstrap.contexts import (
    redrive_refund_recordings,
    wire_balances,
    wire_ledger,
    wire_payments,
    wire_treasury,
)
from marketplace_pay.bootstrap.delivery import delivery_jobs, make_bus, make_relay, relay_job
from marketplace_pay.bootstrap.jobs import Job, balances_jobs, payments_jobs, treasury_jobs
from marketplace_pay.bootstrap.ports import Ports, RelayWake, real_ports
from marketplace_pay.infra.auth import JwtVerifier, resolve_jwt_secret
from marketplace_pay.infra.dead_letters import DeadLetters
from marketplace_pay.infra.locks import run_exclusive
from marketplace_pay.infra.relay import OutboxRelay
from marketplace_pay.infra.resources import Resources, Stores, open_stores
from marketplace_pay.ledger import CachedSellers, Ledger, PayoutFailed, PayoutPaid, SettlementRecorded, Treasury
from marketplace_pay.ledger.adapters.bank import BankCallLog, SimulatedBank
from marketplace_pay.payments import Payments, RefundFailed
from marketplace_pay.payments.adapters.psp import CallLog, SimulatedAuthorizationGateway, SimulatedCaptureGateway
from marketplace_pay.payments.application.ports import AuthorizationGateway, CaptureGateway, RefundGateway
from marketplace_pay.settings import Settings
from marketplace_pay.shared.bus import EventBus, Subscription
from marketplace_pay.shared.clock import Clock, SystemClock
from marketplace_pay.shared.faults import faults

__all__ = ["Container", "Job", "Ports", "bootstrap", "open_container"]


@dataclass
class Container:
    """Everything a process runs: the contexts' facades, the bus with their subscriptions, the
    relay and the jobs. HTTP handlers, jobs and CLI commands use only what is here."""

    settings: Settings
    clock: Clock
    bus: EventBus
    verifier: JwtVerifier
    psp_log: CallLog
    payments: Payments
    ledger: Ledger
    treasury: Treasury
    balances: Balances
    dead_letters: DeadLetters
    subscriptions: list[Subscription] = field(default_factory=list)
    jobs: list[Job] = field(default_factory=list)
    relay: OutboxRelay | None = None
    stores: Stores | None = None

    async def start(self) -> None:
        """Subscribe the handlers, start the bus and the outbox relay."""
        for subscription in self.subscriptions:
            self.bus.subscribe(subscription)
        await self.bus.start()
        if self.relay is not None:
            await self.relay.start()

    async def stop(self) -> None:
        if self.relay is not None:
            await self.relay.stop(grace_s=self.settings.shutdown.grace_s / 2)
        await self.bus.stop()

    def scheduled(self, job: Job) -> Callable[[], Awaitable[Any]]:
        """What the scheduler calls for `job`: an exclusive job under its cluster-wide lock."""
        if not job.exclusive or self.stores is None:
            return job.run
        pool = self.stores.pool

        async def once_per_cluster() -> Any:
            return await run_exclusive(pool, job.name, lambda _conn: job.run())

        return once_per_cluster

    def probes(self) -> dict[str, Callable[[], Awaitable[Any]]]:
        """The readiness probes of the services this process depends on."""
        probes: dict[str, Callable[[], Awaitable[Any]]] = {}
        if self.stores is not None:
            stores = self.stores
            probes["database"] = lambda: stores.pool.fetchval("SELECT true")
            probes["redis"] = stores.redis.ping
        probes["bus"] = self.bus.ready
        return probes


def bootstrap(
    settings: Settings,
    stores: Stores | None = None,
    *,
    ports: Ports | None = None,
    clock: Clock | None = None,
    psp_auth: AuthorizationGateway | None = None,
    psp_capture: CaptureGateway | None = None,
    psp_refund: RefundGateway | None = None,
    rng: random.Random | None = None,
) -> Container:
    """Wire everything on the real adapters over `stores` (a serving process passes its
    Resources: then the relay and the upkeep jobs run too), or on the given `ports`."""
    s = settings
    faults.configure(s.process.faults)
    clock = clock or SystemClock()
    psp_log = CallLog(path=s.psp.call_log)
    psp_auth = psp_auth or SimulatedAuthorizationGateway(s.psp.scenario, seed=s.psp.seed, log=psp_log)
    simulated_psp = SimulatedCaptureGateway(s.psp.scenario, seed=s.psp.seed, log=psp_log)
    psp_capture = psp_capture or simulated_psp
    psp_refund = psp_refund or simulated_psp  # refunds go to the PSP that captured
    wake = RelayWake()
    if ports is None:
        if stores is None:
            raise ValueError("bootstrap needs stores or ports")
        ports = real_ports(s, stores, wake)
    # events no handler of ours consumes still get their Kafka topics (for other consumers)
    bus = make_bus(
        s, ports.dead_letters, topics=[e.topic for e in (RefundFailed, PayoutPaid, PayoutFailed, SettlementRecorded)]
    )

    directory = CachedSellers(ports.sellers, clock=clock)
    payments = wire_payments(
        s,
        ports,
        directory=directory,
        authorizer=psp_auth,
        capturer=psp_capture,
        refunder=psp_refund,
        clock=clock,
        rng=rng,
    )
    ledger = wire_ledger(ports, directory=directory, payments=payments, clock=clock)
    bank = ports.bank or SimulatedBank(s.psp.scenario, seed=s.psp.seed, log=BankCallLog(s.psp.call_log))
    treasury = wire_treasury(s, ports, bank=bank, clock=clock, rng=rng)
    balances = wire_balances(ports, ledger=ledger, clock=clock)

    pipeline = s.process.runs_pipeline  # else the handlers and jobs run in other processes
    relay = None
    jobs: list[Job] = []
    if pipeline:
        jobs = [*payments_jobs(s, payments), *treasury_jobs(s, treasury), *balances_jobs(s, balances)]
        jobs.append(
            Job(
                "ledger-redrive-refund-recordings",
                max(1000, s.sweep.stuck_after_s * 250),
                redrive_refund_recordings(s, ports.dead_letters, clock),
                exclusive=True,
            )
        )
    if isinstance(stores, Resources) and stores.locks is not None:
        relay = wake.relay = make_relay(s, stores, bus)
        jobs += delivery_jobs(s, stores, relay, ports.dead_letters) if pipeline else [relay_job(relay)]
    batch = s.handler.batch_max
    subscriptions = (
        [
            *payments.subscriptions(batch_max=batch),
            *ledger.subscriptions(batch_max=batch),
            *treasury.subscriptions(batch_max=batch),
            *balances.subscriptions(batch_max=batch),
        ]
        if pipeline
        else []
    )
    return Container(
        settings=s,
        clock=clock,
        bus=bus,
        verifier=JwtVerifier(
            secret=None if s.jwt.jwks_url else resolve_jwt_secret(s.jwt.secret, s.process.data_dir),
            jwks_url=s.jwt.jwks_url,
            issuer=s.jwt.issuer,
            audience=s.jwt.audience,
            jwks_cache_s=s.jwt.jwks_cache_s,
        ),
        psp_log=psp_log,
        payments=payments,
        ledger=ledger,
        treasury=treasury,
        balances=balances,
        dead_letters=ports.dead_letters,
        subscriptions=subscriptions,
        jobs=jobs,
        relay=relay,
        stores=stores,
    )


@asynccontextmanager
async def open_container(settings: Settings) -> AsyncIterator[Container]:
    """For a command-line process: the databases (embedded ones started, migrations applied) and
    the contexts on them — no relay, no jobs, no id lease; closed on exit."""
    stores = await open_stores(settings)
    try:
        yield bootstrap(settings, stores)
    finally:
        await stores.close()
