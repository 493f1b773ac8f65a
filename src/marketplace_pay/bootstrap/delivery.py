"""The delivery machinery: the bus (in memory or Kafka), the outbox relay and their upkeep."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from itertools import count

from marketplace_pay.bootstrap.jobs import Job
from marketplace_pay.infra.db import CHURNING_TABLES, REWRITTEN_TABLES, vacuum_if_autovacuum_off
from marketplace_pay.infra.dead_letters import DeadLetters
from marketplace_pay.infra.dispatch import Dispatcher
from marketplace_pay.infra.kafka_bus import KafkaEventBus
from marketplace_pay.infra.memory_bus import InMemoryEventBus
from marketplace_pay.infra.partitions import maintain_queue_tables
from marketplace_pay.infra.relay import OutboxRelay
from marketplace_pay.infra.relay_support import backlog, live_instances
from marketplace_pay.infra.resources import Resources
from marketplace_pay.settings import Settings
from marketplace_pay.shared.bus import EventBus


def make_bus(s: Settings, dead_letters: DeadLetters, *, topics: Sequence[str] = ()) -> EventBus:
    """`topics`: created on Kafka besides those of the subscriptions."""
    dispatcher = Dispatcher(dead_letters=dead_letters, max_attempts=s.handler.max_attempts)
    if s.services.kafka_bootstrap_servers:
        return KafkaEventBus(
            dispatcher,
            bootstrap_servers=s.services.kafka_bootstrap_servers,
            client_id=s.process.instance_name,
            topics=topics,
            topic_partitions=s.kafka.topic_partitions,
            replication_factor=s.kafka.replication_factor,
            session_timeout_ms=s.kafka.session_timeout_ms,
        )
    return InMemoryEventBus(dispatcher, partitions=s.bus.partitions)


def make_relay(s: Settings, resources: Resources, bus: EventBus) -> OutboxRelay:
    leads = s.process.runs_pipeline
    return OutboxRelay(
        resources.pool,
        bus,
        locks=resources.locks,
        # an API-only process leads no shard: it need not count the others every second
        live_instances=partial(live_instances, resources.pool) if leads else None,
        batch_size=s.outbox.batch_size,
        poll_ms=s.outbox.poll_ms,
        inflight_max=s.outbox.inflight_max,
        leads_shards=leads,
    )


def relay_job(relay: OutboxRelay) -> Job:
    """Restarts the relay loop if it died (every process has one: an API-only process's relay
    leads no shard but wakes the others' on commit)."""

    async def supervise_relay() -> None:
        relay.ensure_running()

    return Job("outbox-relay", 2000, supervise_relay)


def delivery_jobs(s: Settings, resources: Resources, relay: OutboxRelay, dead_letters: DeadLetters) -> list[Job]:
    """Upkeep of the delivery machinery: the relay, the queue tables, dead letters, vacuum."""
    pool = resources.pool

    async def maintain_partitions() -> None:
        async with pool.acquire() as conn:
            await maintain_queue_tables(
                conn, outbox_retention_s=s.outbox.retention_s, responses_ttl_hours=s.idempotency.ttl_hours
            )

    runs = count()

    async def vacuum() -> None:
        # The insert-only ledger every tenth run: vacuuming it takes seconds of disk and WAL on a
        # big ledger, and it only needs its statistics and visibility map kept roughly current.
        tables = CHURNING_TABLES if next(runs) % 10 == 0 else REWRITTEN_TABLES
        async with pool.acquire() as conn:
            await vacuum_if_autovacuum_off(conn, tables)

    jobs = [
        relay_job(relay),
        Job("outbox-backlog", 5000, partial(backlog, pool)),
        Job("queue-partitions", 60_000, maintain_partitions, exclusive=True),
        Job("dead-letters-gauge", 10_000, dead_letters.gauge),
    ]
    if s.db.vacuum_s > 0:
        jobs.append(Job("db-vacuum", s.db.vacuum_s * 1000, vacuum, exclusive=True))
    return jobs
