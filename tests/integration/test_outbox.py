"""The transactional outbox, the relay and the inbox against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

import asyncpg
import pytest

from marketplace_pay.infra.db import CHURNING_TABLES, create_pool, vacuum_if_autovacuum_off
from marketplace_pay.infra.dispatch import Dispatcher, PgDeadLetters
from marketplace_pay.infra.locks import SessionLocks, run_exclusive
from marketplace_pay.infra.memory_bus import InMemoryEventBus
from marketplace_pay.infra.outbox import OutboxRelay
from marketplace_pay.infra.uow import PgUnitOfWork
from marketplace_pay.shared.bus import Message, Subscription
from marketplace_pay.shared.envelope import Envelope, Event, envelope


class Pinged(Event, frozen=True):
    event_type: ClassVar[str] = "pinged"
    topic: ClassVar[str] = "test_pinged_topic"

    key: str
    n: int

    def event_id(self) -> str:
        return f"{self.key}:{self.n}"

    def partition_key(self) -> str:
        return self.key


def ping(key: str, n: int) -> Envelope[Pinged]:
    return envelope(Pinged(key=key, n=n), aggregate_id=key, timestamp=datetime.now(UTC), trace_id="0" * 32)


@pytest.fixture
async def pool(fresh_database: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(fresh_database, min_size=1, max_size=10, application_name="test-outbox")
    await pool.execute("CREATE TABLE effects (event_id text, consumer text)")
    yield pool
    await pool.close()


async def commit(pool: asyncpg.Pool, envelopes: Sequence[Envelope[Any]], on_commit: Any = None) -> None:
    async with PgUnitOfWork(pool, on_commit=on_commit) as uow:
        uow.publish(*envelopes)
        await uow.commit()


class Recorder:
    def __init__(self) -> None:
        self.seen: list[Envelope[Pinged]] = []

    async def __call__(self, batch: Sequence[Envelope[Pinged]]) -> None:
        self.seen.extend(batch)


def new_bus(pool: asyncpg.Pool, *handlers: tuple[str, Any], partitions: int = 4) -> InMemoryEventBus:
    bus = InMemoryEventBus(Dispatcher(dead_letters=PgDeadLetters(pool), max_attempts=3), partitions=partitions)
    for consumer, handler in handlers:
        bus.subscribe(Subscription(consumer, Pinged, handler, batch_max=50))
    return bus


async def wait_sent(pool: asyncpg.Pool, count: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while await pool.fetchval("SELECT count(*) FROM outbox WHERE status = 'SENT'") < count:
        if time.monotonic() > deadline:
            rows = await pool.fetch("SELECT status, count(*) FROM outbox GROUP BY status")
            raise AssertionError(f"not all sent: {[tuple(r) for r in rows]}")
        await asyncio.sleep(0.02)


async def test_relay_publishes_committed_rows_in_key_order_and_marks_them_sent(pool: asyncpg.Pool) -> None:
    recorder = Recorder()
    bus = new_bus(pool, ("recorder", recorder))
    relay = OutboxRelay(pool, bus, locks=None, batch_size=7, poll_ms=50)
    await bus.start()
    relay.ensure_running()
    try:
        for n in range(20):
            await commit(pool, [ping(f"k{k}", n) for k in range(5)], on_commit=relay.wake)
        await wait_sent(pool, 100)
    finally:
        await relay.stop()
        await bus.stop()
    by_key: dict[str, list[int]] = defaultdict(list)
    for e in recorder.seen:
        by_key[e.data.key].append(e.data.n)
    assert all(ns == list(range(20)) for ns in by_key.values()), by_key
    assert len(recorder.seen) == 100


async def test_uncommitted_events_are_never_published(pool: asyncpg.Pool) -> None:
    async with PgUnitOfWork(pool) as uow:
        uow.publish(ping("k", 1))
        # leaving without commit: rolled back
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0


async def test_the_relay_is_woken_by_the_commit_not_by_polling(pool: asyncpg.Pool) -> None:
    recorder = Recorder()
    bus = new_bus(pool, ("recorder", recorder))
    relay = OutboxRelay(pool, bus, locks=None, poll_ms=60_000)
    await bus.start()
    relay.ensure_running()
    try:
        await asyncio.sleep(0.2)  # the relay found nothing and sleeps for a minute
        started = time.monotonic()
        await commit(pool, [ping("k", 1)], on_commit=relay.wake)
        await wait_sent(pool, 1, timeout=5)
        assert time.monotonic() - started < 1.0
    finally:
        await relay.stop()
        await bus.stop()


async def test_two_relays_never_publish_a_row_twice(pool: asyncpg.Pool) -> None:
    """Both relays believe they lead (as during a fail-over); SKIP LOCKED claims keep them apart."""
    first, second = Recorder(), Recorder()
    bus_a, bus_b = new_bus(pool, ("a", first)), new_bus(pool, ("b", second))
    relays = [
        OutboxRelay(pool, bus_a, locks=None, batch_size=20, relay_id="relay-a"),
        OutboxRelay(pool, bus_b, locks=None, batch_size=20, relay_id="relay-b"),
    ]
    await commit(pool, [ping(f"k{i % 50}", i) for i in range(2000)])
    await bus_a.start()
    await bus_b.start()
    for relay in relays:
        relay.ensure_running()
    try:
        await wait_sent(pool, 2000, timeout=30)
    finally:
        for relay in relays:
            await relay.stop()
        await bus_a.stop()
        await bus_b.stop()
    ids_a = [e.event_id for e in first.seen]
    ids_b = [e.event_id for e in second.seen]
    assert len(ids_a) + len(ids_b) == 2000
    assert not set(ids_a) & set(ids_b)
    assert ids_a and ids_b  # both relays worked
    assert await pool.fetchval("SELECT max(attempts) FROM outbox") == 1


async def test_one_relay_leads_and_a_standby_takes_over_the_dead_leaders_claims(
    pool: asyncpg.Pool, fresh_database: str
) -> None:
    locks_a = SessionLocks(fresh_database, application_name="relay-a")
    locks_b = SessionLocks(fresh_database, application_name="relay-b")
    await locks_a.start()
    await locks_b.start()
    rec_a, rec_b = Recorder(), Recorder()
    bus_a, bus_b = new_bus(pool, ("x", rec_a)), new_bus(pool, ("x", rec_b))
    a = OutboxRelay(pool, bus_a, locks=locks_a, poll_ms=50, relay_id="relay-a")
    b = OutboxRelay(pool, bus_b, locks=locks_b, poll_ms=50, relay_id="relay-b")
    await bus_a.start()
    await bus_b.start()
    a.ensure_running()
    await asyncio.sleep(0.3)
    b.ensure_running()
    try:
        await commit(pool, [ping("k", 1)], on_commit=a.wake)
        await wait_sent(pool, 1)
        assert a.leading and not b.leading
        assert [e.event_id for e in rec_a.seen] == ["k:1"] and rec_b.seen == []

        # The leader dies holding a claim: its session (and lock) vanish with it.
        await commit(pool, [ping("k", 2)])
        await pool.execute("UPDATE outbox SET status = 'CLAIMED', claimed_by = 'relay-a' WHERE event_id = 'k:2'")
        await a.stop()
        await pool.execute("UPDATE outbox SET status = 'CLAIMED', claimed_by = 'relay-a' WHERE event_id = 'k:2'")
        await pool.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'relay-a:locks'"
        )
        await wait_sent(pool, 2, timeout=10)
        assert b.leading
        assert [e.event_id for e in rec_b.seen] == ["k:2"]
    finally:
        await a.stop()
        await b.stop()
        await bus_a.stop()
        await bus_b.stop()
        await locks_a.stop()
        await locks_b.stop()


class FlakyBus(InMemoryEventBus):
    """Fails the first publish (as a broker that is briefly down would)."""

    failures = 1

    async def publish(self, messages: Sequence[Message]) -> asyncio.Future[None]:
        if self.failures:
            self.failures -= 1
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            future.set_exception(ConnectionError("broker down"))
            return future
        return await super().publish(messages)


async def test_a_failed_publish_goes_back_to_new_and_is_retried(pool: asyncpg.Pool) -> None:
    recorder = Recorder()
    bus = FlakyBus(Dispatcher(dead_letters=PgDeadLetters(pool), max_attempts=3))
    bus.subscribe(Subscription("r", Pinged, recorder))
    relay = OutboxRelay(pool, bus, locks=None, poll_ms=50)
    await commit(pool, [ping("k", 1), ping("k", 2)])
    await bus.start()
    relay.ensure_running()
    try:
        await wait_sent(pool, 2)
    finally:
        await relay.stop()
        await bus.stop()
    assert [e.data.n for e in recorder.seen] == [1, 2]
    rows = await pool.fetch("SELECT attempts, last_error FROM outbox ORDER BY id")
    assert [r["attempts"] for r in rows] == [2, 2]
    assert all(r["last_error"] is None for r in rows)


async def test_sent_rows_are_pruned_after_the_retention(pool: asyncpg.Pool) -> None:
    await commit(pool, [ping("k", n) for n in range(3)])
    await pool.execute("UPDATE outbox SET status = 'SENT', sent_at = now() - interval '2 hours' WHERE event_id = 'k:0'")
    await pool.execute("UPDATE outbox SET status = 'SENT', sent_at = now() WHERE event_id = 'k:1'")
    relay = OutboxRelay(pool, new_bus(pool), locks=None)
    assert await relay.prune(retention_s=3600) == 1
    assert [r["event_id"] for r in await pool.fetch("SELECT event_id FROM outbox ORDER BY id")] == ["k:1", "k:2"]
    assert await relay.backlog() == 1


async def test_an_event_id_is_written_once_even_when_emitted_twice(pool: asyncpg.Pool) -> None:
    await commit(pool, [ping("k", 1)])
    await commit(pool, [ping("k", 1), ping("k", 2)])
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 2


# -- inbox: idempotent handlers -------------------------------------------------------------


def effect_handler(pool: asyncpg.Pool, consumer: str) -> Any:
    async def handle(batch: Sequence[Envelope[Pinged]]) -> None:
        async with PgUnitOfWork(pool) as uow:
            fresh = await uow.claim_inbox(consumer, [e.event_id for e in batch])
            for e in batch:
                if e.event_id in fresh:
                    await uow.connection.execute("INSERT INTO effects VALUES ($1, $2)", e.event_id, consumer)
            await uow.commit()

    return handle


async def test_a_redelivered_event_has_no_second_effect(pool: asyncpg.Pool) -> None:
    handle = effect_handler(pool, "effects")
    event = ping("k", 1)
    await handle([event])
    await handle([event])
    await handle([event, ping("k", 2), event])
    rows = await pool.fetch("SELECT event_id FROM effects ORDER BY event_id")
    assert [r["event_id"] for r in rows] == ["k:1", "k:2"]


async def test_concurrent_duplicates_apply_once(pool: asyncpg.Pool) -> None:
    handle = effect_handler(pool, "effects")
    events = [ping("k", n) for n in range(20)]
    await asyncio.gather(*(handle(events) for _ in range(8)))
    counts = Counter(r["event_id"] for r in await pool.fetch("SELECT event_id FROM effects"))
    assert set(counts.values()) == {1} and len(counts) == 20


async def test_a_rolled_back_handler_leaves_no_inbox_row(pool: asyncpg.Pool) -> None:
    async with PgUnitOfWork(pool) as uow:
        assert await uow.claim_inbox("effects", ["k:9"]) == {"k:9"}
        # crash before commit
    async with PgUnitOfWork(pool) as uow:
        assert await uow.claim_inbox("effects", ["k:9"]) == {"k:9"}
        await uow.commit()


async def test_poison_events_are_isolated_and_dead_lettered(pool: asyncpg.Pool) -> None:
    good: list[str] = []

    async def picky(batch: Sequence[Envelope[Pinged]]) -> None:
        if any(e.data.n == 13 for e in batch):
            raise ValueError("cannot handle 13")
        good.extend(e.event_id for e in batch)

    bus = new_bus(pool, ("picky", picky), partitions=1)
    relay = OutboxRelay(pool, bus, locks=None, poll_ms=50)
    await commit(pool, [ping("k", n) for n in range(20)])
    await bus.start()
    relay.ensure_running()
    try:
        await wait_sent(pool, 20)
    finally:
        await relay.stop()
        await bus.stop()
    assert sorted(good, key=lambda s: int(s.split(":")[1])) == [f"k:{n}" for n in range(20) if n != 13]
    dead = await pool.fetch("SELECT consumer, event_id, attempts, error FROM dead_letters")
    assert [(d["consumer"], d["event_id"], d["attempts"]) for d in dead] == [("picky", "k:13", 3)]
    assert "cannot handle 13" in dead[0]["error"]


async def test_transient_failures_are_retried_without_dead_lettering(pool: asyncpg.Pool) -> None:
    attempts = Counter[str]()

    async def flaky(batch: Sequence[Envelope[Pinged]]) -> None:
        for e in batch:
            attempts[e.event_id] += 1
            if attempts[e.event_id] <= 4:  # more failures than max_attempts
                raise ConnectionError("database restarting")

    bus = new_bus(pool, ("flaky", flaky), partitions=1)
    relay = OutboxRelay(pool, bus, locks=None, poll_ms=50)
    await commit(pool, [ping("k", 1)])
    await bus.start()
    relay.ensure_running()
    try:
        await wait_sent(pool, 1)
    finally:
        await relay.stop()
        await bus.stop()
    assert attempts["k:1"] == 5
    assert await pool.fetchval("SELECT count(*) FROM dead_letters") == 0


async def test_queue_tables_are_vacuumed_when_the_server_does_not(pool: asyncpg.Pool) -> None:
    await commit(pool, [ping("k", i) for i in range(50)])
    await pool.execute("UPDATE outbox SET status = 'SENT', sent_at = now()")  # dead tuples, as the relay leaves them
    autovacuum = await pool.fetchval("SELECT current_setting('autovacuum')::boolean")

    vacuumed = await run_exclusive(pool, "db-vacuum", vacuum_if_autovacuum_off)

    if autovacuum:
        assert vacuumed == []
        return
    assert vacuumed == list(CHURNING_TABLES)
    rows = await pool.fetch(
        "SELECT relname FROM pg_stat_user_tables WHERE relname = ANY($1::text[]) AND last_vacuum IS NOT NULL",
        list(CHURNING_TABLES),
    )
    assert sorted(r["relname"] for r in rows) == sorted(CHURNING_TABLES)


async def test_a_job_lock_never_stays_on_a_pooled_connection(pool: asyncpg.Pool) -> None:
    """Pools skip asyncpg's reset on release, so the job lock must be gone after the job —
    also when the job is cancelled half-way."""

    async def held() -> int:
        return await pool.fetchval("SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
            "WHERE l.locktype = 'advisory' AND d.datname = current_database()"
        )

    assert await run_exclusive(pool, "job", lambda conn: conn.fetchval("SELECT 1")) == 1
    assert await held() == 0

    started = asyncio.Event()

    async def slow(conn: asyncpg.Connection) -> None:
        started.set()
        await conn.execute("SELECT pg_sleep(30)")

    task = asyncio.create_task(run_exclusive(pool, "job", slow))
    await started.wait()
    assert await held() == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(50):  # a terminated backend goes away asynchronously
        if await held() == 0:
            break
        await asyncio.sleep(0.05)
    assert await held() == 0
    assert await run_exclusive(pool, "job", lambda conn: conn.fetchval("SELECT 2")) == 2
