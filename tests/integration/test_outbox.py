"""The transactional outbox, the relay and the delivery machinery against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import random
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, ClassVar

import asyncpg
import pytest

from marketplace_pay.infra import partitions
from marketplace_pay.infra.db import CHURNING_TABLES, create_pool, vacuum_if_autovacuum_off
from marketplace_pay.infra.dead_letters import PgDeadLetters
from marketplace_pay.infra.dispatch import Dispatcher
from marketplace_pay.infra.locks import LeasedIdGenerator, SessionLocks, run_exclusive
from marketplace_pay.infra.memory_bus import InMemoryEventBus
from marketplace_pay.infra.outbox import SHARDS, append_to_outbox, shard_of
from marketplace_pay.infra.relay import OutboxRelay
from marketplace_pay.infra.relay_support import live_instances
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
    async with pool.acquire() as conn:
        await partitions.ensure_partitions(conn, partitions.OUTBOX, now=datetime.now(UTC))
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

    def ids(self) -> list[str]:
        return [e.event_id for e in self.seen]


def new_bus(pool: asyncpg.Pool, *handlers: tuple[str, Any], partitions: int = 4) -> InMemoryEventBus:
    bus = InMemoryEventBus(Dispatcher(dead_letters=PgDeadLetters(pool), max_attempts=3), partitions=partitions)
    for consumer, handler in handlers:
        bus.subscribe(Subscription(consumer, Pinged, handler, batch_max=50))
    return bus


async def backlog(pool: asyncpg.Pool) -> int:
    return int(
        await pool.fetchval(
            """SELECT count(*) FROM outbox o JOIN outbox_cursors c USING (shard)
               WHERE (o.tx, o.id) > (c.tx, c.id)"""
        )
    )


async def wait_handled(pool: asyncpg.Pool, timeout: float = 15) -> None:
    """Until every shard's cursor is past every row (everything handled and recorded)."""
    deadline = time.monotonic() + timeout
    while await backlog(pool):
        if time.monotonic() > deadline:
            raise AssertionError(f"{await backlog(pool)} rows not handled")
        await asyncio.sleep(0.02)


async def running(relay: OutboxRelay, *buses: InMemoryEventBus) -> None:
    for bus in buses:
        await bus.start()
    await relay.start()


async def stopped(relay: OutboxRelay, *buses: InMemoryEventBus) -> None:
    await relay.stop()
    for bus in buses:
        await bus.stop()


async def test_relay_publishes_committed_rows_in_key_order_and_moves_the_cursors(pool: asyncpg.Pool) -> None:
    recorder = Recorder()
    bus = new_bus(pool, ("recorder", recorder))
    relay = OutboxRelay(pool, bus, locks=None, batch_size=7, poll_ms=50)
    await running(relay, bus)
    try:
        for n in range(20):
            await commit(pool, [ping(f"k{k}", n) for k in range(5)], on_commit=relay.committed)
        await wait_handled(pool)
    finally:
        await stopped(relay, bus)
    by_key: dict[str, list[int]] = defaultdict(list)
    for e in recorder.seen:
        by_key[e.data.key].append(e.data.n)
    assert all(ns == list(range(20)) for ns in by_key.values()), by_key
    assert len(recorder.seen) == 100
    moved = await pool.fetchval("SELECT count(*) FROM outbox_cursors WHERE id > 0")
    assert moved == len({shard_of(f"k{k}") for k in range(5)})
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 100  # rows are never updated nor deleted


async def test_uncommitted_events_are_never_published(pool: asyncpg.Pool) -> None:
    async with PgUnitOfWork(pool) as uow:
        uow.publish(ping("k", 1))
        # leaving without commit: rolled back
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0


async def test_the_relay_is_woken_by_the_commit_not_by_polling(pool: asyncpg.Pool) -> None:
    recorder = Recorder()
    bus = new_bus(pool, ("recorder", recorder))
    relay = OutboxRelay(pool, bus, locks=None, poll_ms=60_000)
    await running(relay, bus)
    try:
        await asyncio.sleep(0.3)  # the relay found nothing and sleeps for a minute
        started = time.monotonic()
        await commit(pool, [ping("k", 1)], on_commit=relay.committed)
        await wait_handled(pool, timeout=5)
        assert time.monotonic() - started < 1.0
    finally:
        await stopped(relay, bus)


async def test_a_transaction_that_commits_late_is_neither_skipped_nor_waited_for(pool: asyncpg.Pool) -> None:
    """A transaction that got its id first but commits last puts its row *behind* rows already
    read. It is delivered when it commits (not skipped), delivery of the others does not wait for
    it, and the saved cursor stays behind it meanwhile (a restart would read it again)."""
    recorder = Recorder()
    bus = new_bus(pool, ("recorder", recorder))
    relay = OutboxRelay(pool, bus, locks=None, poll_ms=20)
    await running(relay, bus)
    slow = await pool.acquire()
    try:
        tx = slow.transaction()
        await tx.start()
        slow_xid = await slow.fetchval("SELECT pg_current_xact_id()")  # the older transaction id
        await commit(pool, [ping("k", 2)], on_commit=relay.committed)  # later in time, same shard
        deadline = time.monotonic() + 5
        while recorder.ids() != ["k:2"]:  # delivered, not held back by the open transaction
            assert time.monotonic() < deadline, recorder.ids()
            await asyncio.sleep(0.02)
        await append_to_outbox(slow, [ping("k", 1)])
        await asyncio.sleep(0.3)
        cursor = await pool.fetchval("SELECT tx FROM outbox_cursors WHERE shard = $1", shard_of("k"))
        assert cursor < slow_xid  # a restart now would read what the open transaction may add
        await tx.commit()
        await wait_handled(pool)
    finally:
        await pool.release(slow)
        await stopped(relay, bus)
    assert recorder.ids() == ["k:2", "k:1"]  # in commit order; the late row was not skipped


async def test_a_late_committer_ahead_in_one_shard_does_not_make_the_relay_skip_there(pool: asyncpg.Pool) -> None:
    """A transaction still running behind the read position of one shard may commit rows *ahead*
    of another shard's position, where older rows are still unread: those rows are read in
    order, not used to jump the position past the unread ones."""
    a, b = "a", next(k for k in (f"b{i}" for i in range(100)) if shard_of(k) != shard_of("a"))
    gate = asyncio.Event()
    recorder = Recorder()

    async def slow(batch: Sequence[Envelope[Pinged]]) -> None:
        await gate.wait()
        await recorder(batch)

    bus = new_bus(pool, ("x", slow))
    relay = OutboxRelay(pool, bus, locks=None, poll_ms=20, batch_size=16, inflight_max=16)
    await commit(pool, [ping(b, n) for n in range(40)])  # older rows in shard b
    late = await pool.acquire()
    try:
        tx = late.transaction()
        await tx.start()
        await late.execute("SELECT pg_current_xact_id()")  # running, with an id below what follows
        await commit(pool, [ping(a, 0)])  # read first: the open transaction is behind shard a's position
        await running(relay, bus)
        await asyncio.sleep(0.3)  # the relay has read one batch and waits for the handler
        await append_to_outbox(late, [ping(b, 40)])
        await tx.commit()  # its row is ahead of shard b's position, where rows are still unread
        gate.set()
        await wait_handled(pool)
    finally:
        await pool.release(late)
        await stopped(relay, bus)
    assert sorted(e.data.n for e in recorder.seen if e.data.key == b) == list(range(41))


async def test_nothing_is_skipped_under_concurrent_slow_and_fast_committers(pool: asyncpg.Pool) -> None:
    """Writers that hold their transactions open for random times, in random shards, while a
    relay with small batches reads: every committed row is delivered, none is lost."""
    rng = random.Random(5)
    recorder = Recorder()
    bus = new_bus(pool, ("x", recorder))
    relay = OutboxRelay(pool, bus, locks=None, poll_ms=5, batch_size=16, inflight_max=32)
    await running(relay, bus)

    async def writer(w: int) -> None:
        for n in range(15):
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_current_xact_id()")
                await asyncio.sleep(rng.random() * 0.05)
                key = f"k{rng.randrange(3)}"  # few shards, deep backlogs: reads stop mid-shard
                await append_to_outbox(conn, [ping(key, (w * 100 + n) * 100 + i) for i in range(rng.randint(1, 30))])

    try:
        await asyncio.gather(*(writer(w) for w in range(8)))
        await wait_handled(pool, timeout=30)
    finally:
        await stopped(relay, bus)
    written = {r["event_id"] for r in await pool.fetch("SELECT event_id FROM outbox")}
    assert written and written == set(recorder.ids())


async def test_two_relays_share_the_shards_and_one_takes_over_when_the_other_dies(
    pool: asyncpg.Pool, fresh_database: str
) -> None:
    locks = [SessionLocks(fresh_database, application_name=f"relay-{x}") for x in "ab"]
    for lock in locks:
        await lock.start()
    recorders = [Recorder(), Recorder()]
    buses = [new_bus(pool, ("x", r)) for r in recorders]
    relays = [
        OutboxRelay(pool, bus, locks=lock, poll_ms=20, live_instances=lambda: asyncio.sleep(0, 2))
        for bus, lock in zip(buses, locks, strict=True)
    ]
    for relay, bus in zip(relays, buses, strict=True):
        await running(relay, bus)
    try:
        deadline = time.monotonic() + 10
        while (
            len(relays[0].leading) + len(relays[1].leading) < SHARDS or not relays[0].leading or not relays[1].leading
        ):
            assert time.monotonic() < deadline, "the shards were not shared"
            await asyncio.sleep(0.05)
        assert not relays[0].leading & relays[1].leading
        await commit(pool, [ping(f"k{i % 40}", i) for i in range(400)])
        await wait_handled(pool)
        assert len(recorders[0].seen) + len(recorders[1].seen) == 400
        assert recorders[0].seen and recorders[1].seen  # both relays worked

        # relay a dies: its lock session goes with it; b takes every shard and what a left
        await relays[0].stop()
        await buses[0].stop()
        await commit(pool, [ping(f"k{i % 40}", i) for i in range(400, 600)])
        await pool.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'relay-a:locks'"
        )
        relays[1]._live_instances = lambda: asyncio.sleep(0, 1)  # type: ignore[method-assign]
        await wait_handled(pool, timeout=20)
        assert len(relays[1].leading) == SHARDS
    finally:
        for relay, bus in zip(relays, buses, strict=True):
            await stopped(relay, bus)
        for lock in locks:
            await lock.stop()
    seen = Counter(recorders[0].ids() + recorders[1].ids())
    assert set(seen) == {f"k{i % 40}:{i}" for i in range(600)}


async def test_an_api_only_process_leads_no_shard_and_wakes_the_pipeline_by_notify(
    pool: asyncpg.Pool, fresh_database: str
) -> None:
    """An API process (`leads_shards=False`, its lease `relays = false`) is not counted among the
    members sharing the shards, so the pipeline process leads all 32; rows the API process commits
    reach the pipeline's handlers by its NOTIFY, long before the pipeline would poll."""
    locks = [SessionLocks(fresh_database, application_name=f"relay-{x}") for x in ("api", "pipeline")]
    for lock in locks:
        await lock.start()
    leases = [LeasedIdGenerator(lock, holder=f"h-{i}", relays=i == 1) for i, lock in enumerate(locks)]
    for lease in leases:
        await lease.acquire()
    members = partial(live_instances, pool)
    assert await members() == 1
    recorder = Recorder()
    api_bus, pipeline_bus = new_bus(pool), new_bus(pool, ("x", recorder))
    api = OutboxRelay(pool, api_bus, locks=locks[0], poll_ms=60_000, live_instances=members, leads_shards=False)
    pipeline = OutboxRelay(pool, pipeline_bus, locks=locks[1], poll_ms=60_000, live_instances=members)
    await running(api, api_bus)
    await running(pipeline, pipeline_bus)
    try:
        deadline = time.monotonic() + 10
        while len(pipeline.leading) < SHARDS:
            assert time.monotonic() < deadline, "the pipeline relay did not take every shard"
            await asyncio.sleep(0.05)
        assert not api.leading
        await commit(pool, [ping(f"k{i % 40}", i) for i in range(100)], on_commit=api.committed)
        await wait_handled(pool, timeout=5)  # far less than the 60-s poll: the NOTIFY woke it
        assert len(recorder.seen) == 100
        assert not api.leading
    finally:
        await stopped(api, api_bus)
        await stopped(pipeline, pipeline_bus)
        for lease in leases:
            await lease.release()
        for lock in locks:
            await lock.stop()


async def test_a_crash_before_the_cursor_moved_delivers_again(pool: asyncpg.Pool) -> None:
    first = Recorder()
    bus = new_bus(pool, ("x", first))
    relay = OutboxRelay(pool, bus, locks=None, poll_ms=20)
    await commit(pool, [ping("k", n) for n in range(5)])
    await running(relay, bus)
    await wait_handled(pool)
    await stopped(relay, bus)
    # as if the process died after the handlers ran but before the cursor was saved
    await pool.execute("UPDATE outbox_cursors SET tx = '0', id = 0")
    second = Recorder()
    bus = new_bus(pool, ("x", second))
    relay = OutboxRelay(pool, bus, locks=None, poll_ms=20)
    await running(relay, bus)
    try:
        await wait_handled(pool)
    finally:
        await stopped(relay, bus)
    assert first.ids() == second.ids() == [f"k:{n}" for n in range(5)]


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


async def test_a_failed_publish_is_read_again_in_order(pool: asyncpg.Pool) -> None:
    recorder = Recorder()
    bus = FlakyBus(Dispatcher(dead_letters=PgDeadLetters(pool), max_attempts=3))
    bus.subscribe(Subscription("r", Pinged, recorder))
    relay = OutboxRelay(pool, bus, locks=None, poll_ms=50)
    await commit(pool, [ping("k", 1), ping("k", 2)])
    await running(relay, bus)
    try:
        await wait_handled(pool)
    finally:
        await stopped(relay, bus)
    assert [e.data.n for e in recorder.seen] == [1, 2]


class FailsOnceFor(InMemoryEventBus):
    """Fails the first publish that carries a message with `key` (its shard is paused)."""

    def __init__(self, *args: Any, key: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.key = key
        self.failed = False

    async def publish(self, messages: Sequence[Message]) -> asyncio.Future[None]:
        if not self.failed and any(m.key == self.key for m in messages):
            self.failed = True
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            future.set_exception(ConnectionError("broker down"))
            return future
        return await super().publish(messages)


async def test_a_late_commit_into_a_paused_shard_is_read_once_the_shard_resumes(pool: asyncpg.Pool) -> None:
    """A shard paused after a failed publish is left out of reads for a while. A transaction that
    was running behind its position and commits a row there meanwhile must still be read when the
    shard resumes — not forgotten because the late read of the other shards went by without it."""
    a, b = "a", next(k for k in (f"b{i}" for i in range(100)) if shard_of(k) != shard_of("a"))
    recorder = Recorder()
    bus = FailsOnceFor(Dispatcher(dead_letters=PgDeadLetters(pool), max_attempts=3), key=b)
    bus.subscribe(Subscription("r", Pinged, recorder))
    relay = OutboxRelay(pool, bus, locks=None, poll_ms=20)
    await running(relay, bus)
    slow = await pool.acquire()
    try:
        tx = slow.transaction()
        await tx.start()
        await slow.execute("SELECT pg_current_xact_id()")  # running, with an id below what follows
        await commit(pool, [ping(a, 0)], on_commit=relay.committed)
        deadline = time.monotonic() + 5
        while "a:0" not in recorder.ids():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        await commit(pool, [ping(b, 0)], on_commit=relay.committed)  # its publish fails: shard b pauses
        deadline = time.monotonic() + 5
        while not bus.failed:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        await append_to_outbox(slow, [ping(b, 1)])  # behind shard b's position
        await tx.commit()
        await asyncio.sleep(0.2)  # shard a is read meanwhile (shard b is still paused)
        deadline = time.monotonic() + 10
        while not {f"{b}:0", f"{b}:1"} <= set(recorder.ids()):
            assert time.monotonic() < deadline, recorder.ids()
            await asyncio.sleep(0.05)
    finally:
        await pool.release(slow)
        await stopped(relay, bus)


async def test_partitions_are_dropped_only_once_every_cursor_is_past_them(pool: asyncpg.Pool) -> None:
    table = partitions.OUTBOX
    old_start = table.start_of(datetime.now(UTC) - timedelta(hours=2))
    old = table.partition_name(old_start)
    async with pool.acquire() as conn:
        await conn.execute(
            f"CREATE TABLE {old} PARTITION OF outbox FOR VALUES FROM ('{old_start.isoformat()}') "
            f"TO ('{(old_start + timedelta(seconds=table.width_s)).isoformat()}')"
        )
        await conn.execute(
            "INSERT INTO outbox (shard, created_at, event_id, event_type, topic, msg_key, payload) "
            "VALUES ($1, $2, 'old:1', 'pinged', 't', 'old', '{}')",
            shard_of("old"),
            old_start + timedelta(seconds=1),
        )
        await partitions.maintain_queue_tables(conn, outbox_retention_s=600, responses_ttl_hours=48)
        assert old in await partitions.partitions(conn, table)  # not handled yet: kept
        await conn.execute(
            "UPDATE outbox_cursors SET tx = (SELECT max(tx) FROM outbox), id = (SELECT max(id) FROM outbox)"
        )
        await partitions.maintain_queue_tables(conn, outbox_retention_s=600, responses_ttl_hours=48)
        remaining = await partitions.partitions(conn, table)
    assert old not in remaining
    assert table.partition_name(table.start_of(datetime.now(UTC))) in remaining  # the current one, and ahead
    assert len(remaining) >= table.ahead + 1


async def test_a_partition_is_not_created_while_the_table_is_busy_and_writers_never_queue_behind_it(
    pool: asyncpg.Pool,
) -> None:
    """Creating a partition takes the table's strongest lock; writers queue behind it while it
    waits. With the table busy (a long transaction holding a lock on it), the creation gives up
    within its short lock timeout — the writers went on meanwhile — and the next run creates it."""
    table = partitions.OUTBOX
    later = datetime.now(UTC) + timedelta(hours=3)
    name = table.partition_name(table.start_of(later))
    async with pool.acquire() as holder, pool.acquire() as maker, pool.acquire() as writer:
        busy = holder.transaction()
        await busy.start()
        await holder.execute("LOCK TABLE outbox IN ACCESS SHARE MODE")  # e.g. a long read of the outbox
        started = time.monotonic()
        making = asyncio.create_task(partitions.ensure_partitions(maker, table, now=later))
        await asyncio.sleep(0.05)
        await writer.execute(  # a writer while the creation waits: it must not be held back for long
            "INSERT INTO outbox (shard, event_id, event_type, topic, msg_key, payload) "
            "VALUES (0, 'w:1', 'pinged', 't', 'w', '{}')",
            timeout=2,
        )
        assert name not in await making
        assert time.monotonic() - started < 2
        await busy.rollback()
        assert name in await partitions.ensure_partitions(maker, table, now=later)


async def test_the_vacuum_job_leaves_the_partitioned_table_unlocked(pool: asyncpg.Pool) -> None:
    """It vacuums the partitions, never the partitioned table itself (which would hold a lock on
    it, for as long as the vacuum takes, that creating a partition waits for)."""
    if await pool.fetchval("SELECT current_setting('autovacuum')::boolean"):
        pytest.skip("the server vacuums: the job does nothing")
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_stat_reset()")
        await vacuum_if_autovacuum_off(conn, ("outbox",))
        parent = await conn.fetchval(
            "SELECT coalesce(vacuum_count, 0) + coalesce(analyze_count, 0) FROM pg_stat_user_tables "
            "WHERE relname = 'outbox'"
        )
        leaves = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_user_tables WHERE relname LIKE 'outbox\\_p%' AND vacuum_count > 0"
        )
    assert not parent
    assert leaves >= partitions.OUTBOX.ahead + 1


async def test_poison_events_are_isolated_dead_lettered_and_replayable(pool: asyncpg.Pool) -> None:
    good: list[str] = []
    fixed = False

    async def picky(batch: Sequence[Envelope[Pinged]]) -> None:
        if not fixed and any(e.data.n == 13 for e in batch):
            raise ValueError("cannot handle 13")
        good.extend(e.event_id for e in batch)

    bus = new_bus(pool, ("picky", picky), partitions=1)
    relay = OutboxRelay(pool, bus, locks=None, poll_ms=20)
    await commit(pool, [ping("k", n) for n in range(20)])
    await running(relay, bus)
    try:
        await wait_handled(pool)
        assert sorted(good, key=lambda s: int(s.split(":")[1])) == [f"k:{n}" for n in range(20) if n != 13]
        dead_letters = PgDeadLetters(pool)
        [dead] = await dead_letters.find()
        assert (dead.consumer, dead.event_id, dead.attempts) == ("picky", "k:13", 3)
        assert "cannot handle 13" in dead.error
        assert await dead_letters.gauge() == 1
        # an automatic re-drive gives up on what failed too often, and waits for an operator
        assert await dead_letters.replay(consumer="picky", attempts_below=3) == []
        assert await dead_letters.replay(consumer="picky", older_than=dead.created_at) == []  # not old enough
        fixed = True  # the bug is fixed: replay it
        [replayed] = await dead_letters.replay(consumer="picky")
        assert replayed.replayed_at is not None
        await wait_handled(pool)
        assert "k:13" in good
        assert await dead_letters.find() == [] and await dead_letters.gauge() == 0
        assert [d.event_id for d in await dead_letters.find(include_replayed=True)] == ["k:13"]
    finally:
        await stopped(relay, bus)


async def test_transient_failures_are_retried_without_dead_lettering(pool: asyncpg.Pool) -> None:
    attempts = Counter[str]()

    async def flaky(batch: Sequence[Envelope[Pinged]]) -> None:
        for e in batch:
            attempts[e.event_id] += 1
            if attempts[e.event_id] <= 4:  # more failures than max_attempts
                raise ConnectionError("database restarting")

    bus = new_bus(pool, ("flaky", flaky), partitions=1)
    relay = OutboxRelay(pool, bus, locks=None, poll_ms=20)
    await commit(pool, [ping("k", 1)])
    await running(relay, bus)
    try:
        await wait_handled(pool)
    finally:
        await stopped(relay, bus)
    assert attempts["k:1"] == 5
    assert await pool.fetchval("SELECT count(*) FROM dead_letters") == 0


async def test_an_unordered_subscription_runs_batches_at_once(pool: asyncpg.Pool) -> None:
    running_now = peak = 0

    async def slow(batch: Sequence[Envelope[Pinged]]) -> None:
        nonlocal running_now, peak
        running_now += 1
        peak = max(peak, running_now)
        await asyncio.sleep(0.05)
        running_now -= 1

    bus = InMemoryEventBus(Dispatcher(dead_letters=PgDeadLetters(pool), max_attempts=3), partitions=1)
    bus.subscribe(Subscription("slow", Pinged, slow, batch_max=2, ordered=False, concurrency=5))
    relay = OutboxRelay(pool, bus, locks=None, poll_ms=20, batch_size=50)
    await commit(pool, [ping(f"k{n}", n) for n in range(40)])
    await running(relay, bus)
    try:
        await wait_handled(pool)
    finally:
        await stopped(relay, bus)
    assert peak == 5


async def test_queue_tables_are_vacuumed_when_the_server_does_not(pool: asyncpg.Pool) -> None:
    autovacuum = await pool.fetchval("SELECT current_setting('autovacuum')::boolean")
    # enough new rows in the current outbox partition for it to be analyzed (not vacuumed)
    await pool.execute(
        "INSERT INTO outbox (shard, event_id, event_type, topic, msg_key, payload) "
        "SELECT 0, 'analyze-' || i, 'Pinged', 't', 'k', '\\x00' FROM generate_series(1, 3000) i"
    )
    await pool.execute("SELECT pg_stat_force_next_flush()")
    vacuumed = await run_exclusive(pool, "db-vacuum", vacuum_if_autovacuum_off)
    if autovacuum:
        assert vacuumed == []
        return
    assert vacuumed == list(CHURNING_TABLES)
    plain = [t for t in CHURNING_TABLES if t not in {p.name for p in partitions.TABLES}]  # parents keep no statistics
    rows = await pool.fetch(
        "SELECT relname FROM pg_stat_user_tables WHERE relname = ANY($1::text[]) AND last_vacuum IS NOT NULL", plain
    )
    assert sorted(r["relname"] for r in rows) == sorted(plain)
    # the insert-only time partitions (dropped whole, never a dead row) are analyzed, not vacuumed
    current = partitions.OUTBOX.partition_name(partitions.OUTBOX.start_of(datetime.now(UTC)))
    stats = await pool.fetchrow("SELECT last_vacuum, last_analyze FROM pg_stat_user_tables WHERE relname = $1", current)
    assert stats["last_vacuum"] is None and stats["last_analyze"] is not None


async def test_a_job_lock_never_stays_on_a_pooled_connection(pool: asyncpg.Pool) -> None:
    """Pools skip asyncpg's reset on release, so the job lock must be gone after the job —
    also when the job is cancelled half-way."""

    async def held() -> int:
        return await pool.fetchval(
            "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database "
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


class SlowLateReads:
    """A pool whose reads of late rows go through `on_late` first (to fail or stall them)."""

    def __init__(self, pool: asyncpg.Pool, on_late: Any) -> None:
        self._pool = pool
        self.on_late = on_late

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)

    async def fetch(self, query: str, *args: Any) -> Any:
        from marketplace_pay.infra.relay_support import READ_LATE

        if query == READ_LATE:
            await self.on_late()
        return await self._pool.fetch(query, *args)


async def _a_late_row_behind(pool: asyncpg.Pool, relay: OutboxRelay, recorder: Recorder, key: str) -> None:
    """A transaction that started first commits `<key>:1` after `<key>:2` was read and handled."""
    slow = await pool.acquire()
    try:
        tx = slow.transaction()
        await tx.start()
        await slow.execute("SELECT pg_current_xact_id()")
        await commit(pool, [ping(key, 2)], on_commit=relay.committed)
        deadline = time.monotonic() + 5
        while f"{key}:2" not in recorder.ids():
            assert time.monotonic() < deadline, recorder.ids()
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        await append_to_outbox(slow, [ping(key, 1)])
        await tx.commit()
    finally:
        await pool.release(slow)


async def test_a_late_read_that_fails_once_is_made_again(pool: asyncpg.Pool) -> None:
    """The relay learns a running transaction finished, and the read of its rows fails (a
    connection reset): the rows are read at the next try, and the cursor never passes them."""
    failures = [ConnectionResetError("connection reset while reading late rows")]

    async def fail_once() -> None:
        if failures:
            raise failures.pop()

    recorder = Recorder()
    bus = new_bus(pool, ("recorder", recorder))
    relay = OutboxRelay(SlowLateReads(pool, fail_once), bus, locks=None, poll_ms=20)  # type: ignore[arg-type]
    await running(relay, bus)
    try:
        await _a_late_row_behind(pool, relay, recorder, "k")
        deadline = time.monotonic() + 10
        while "k:1" not in recorder.ids():
            assert time.monotonic() < deadline, f"the late row was never delivered: {recorder.ids()}"
            await asyncio.sleep(0.05)
        assert not failures  # the failure did happen
    finally:
        await stopped(relay, bus)


async def test_while_late_rows_are_being_read_the_saved_cursor_stays_behind_them(pool: asyncpg.Pool) -> None:
    """A batch of another shard completes (and the cursors are saved) while the late read is
    slow: the late rows' shard is not saved past them — a crash then would lose nothing."""
    other = next(
        k
        for k in (f"o{i}" for i in range(200))
        if shard_of(k) != shard_of("k") and zlib.crc32(k.encode()) % 4 != zlib.crc32(b"k") % 4
    )
    gate, stalled, release = asyncio.Event(), asyncio.Event(), asyncio.Event()
    recorder = Recorder()

    async def handler(batch: Sequence[Envelope[Pinged]]) -> None:
        if any(e.data.key == other for e in batch):
            await gate.wait()  # this batch stays in flight until the late read has started
        await recorder(batch)

    async def stall() -> None:
        stalled.set()
        await release.wait()

    bus = new_bus(pool, ("recorder", handler))
    relay = OutboxRelay(SlowLateReads(pool, stall), bus, locks=None, poll_ms=20)  # type: ignore[arg-type]
    await running(relay, bus)
    try:
        await commit(pool, [ping(other, 0)], on_commit=relay.committed)
        await _a_late_row_behind(pool, relay, recorder, "k")
        await asyncio.wait_for(stalled.wait(), 5)
        late = await pool.fetchrow("SELECT tx, id FROM outbox WHERE event_id = 'k:1'")
        gate.set()  # the other shard's batch completes: the cursors are saved meanwhile
        await asyncio.sleep(0.3)
        cursor = await pool.fetchrow("SELECT tx, id FROM outbox_cursors WHERE shard = $1", shard_of("k"))
        assert (cursor["tx"], cursor["id"]) < (late["tx"], late["id"]), "saved past a row not yet read"
        release.set()
        await wait_handled(pool)
        assert "k:1" in recorder.ids()
    finally:
        gate.set()
        release.set()
        await stopped(relay, bus)
