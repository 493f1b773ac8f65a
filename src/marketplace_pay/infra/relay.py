"""The outbox relay: publishes committed outbox rows to the bus, shard by shard, in order.

The 32 shards are shared like a consumer group: each relay leads about `32 / live processes`
(API-only processes lead none) under session advisory locks that die with their process (a dead
leader's shards are taken over within a second). It reads a shard's rows after its position in
(transaction id, id) order, hands them to the bus (which keeps each key's order) and saves the
cursor once the bus says they are durable. A transaction that commits late, behind the read
position, is remembered while it runs and its rows read once it finishes: nothing is skipped,
nobody waits for it. A crash before a cursor is saved publishes rows again; handlers idempotent
by state guards absorb the repeat. Woken by a commit here, a NOTIFY, or polling (docs/delivery.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence

import asyncpg

from marketplace_pay.infra import metrics
from marketplace_pay.infra.failures import is_transient
from marketplace_pay.infra.locks import NS_RELAY, SessionLocks
from marketplace_pay.infra.outbox import SHARDS
from marketplace_pay.infra.relay_support import (
    MAX_ROW_ID,
    READ,
    READ_LATE,
    SAVE_CURSORS,
    Batch,
    Notifier,
    Position,
    before,
    running,
    running_below,
)
from marketplace_pay.infra.telemetry import publish_spans
from marketplace_pay.shared.bus import EventBus, Message
from marketplace_pay.shared.faults import faults

log = logging.getLogger(__name__)

NOTIFY_CHANNEL = "mp_outbox"  # relays of other processes are woken on it
_PAUSE_AFTER_FAILURE_S = 1.0
_REBALANCE_EVERY_S = 1.0


class OutboxRelay:
    def __init__(
        self,
        pool: asyncpg.Pool,
        bus: EventBus,
        *,
        locks: SessionLocks | None,
        live_instances: Callable[[], Awaitable[int]] | None = None,
        batch_size: int = 500,
        poll_ms: int = 50,
        inflight_max: int = 5000,
        leads_shards: bool = True,
    ) -> None:
        """`locks=None`: lead every shard, no election (a test relay). `leads_shards=False` (an
        API-only process): lead none, only wake the others by NOTIFY."""
        self._pool = pool
        self._bus = bus
        self._locks = locks
        self._live_instances = live_instances
        self._leads_shards = leads_shards
        self._batch_size = batch_size
        self._poll_s = poll_ms / 1000
        self._inflight_max = max(inflight_max, batch_size) if bus.pipelined else batch_size
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._progress = asyncio.Event()
        self._leading: set[int] = set()
        self._releasing: set[int] = set()
        self._generation = -1
        self._read: dict[int, Position] = {}
        self._inflight_first: dict[int, Counter[Position]] = {}
        self._waiting: set[int] = set()  # running transactions that may add rows behind a read position
        # per shard: transactions that finished while waiting, their rows behind the position unread
        self._late: dict[int, set[int]] = {}
        self._saved: dict[int, Position] = {}
        self._paused_until: dict[int, float] = {}
        self._inflight = 0
        self._next_rebalance = 0.0
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._saver: asyncio.Task[None] | None = None
        self._notifier = Notifier(pool, NOTIFY_CHANNEL)
        self.published = 0

    # -- wake-ups ----------------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    def committed(self, shards: Iterable[int]) -> None:
        """Rows were committed in these shards: wake this relay, and by NOTIFY the others."""
        shards = set(shards)
        if shards & self._leading:
            self._wake.set()
        if self._locks is not None and not shards <= self._leading:
            self._notifier.notify()

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def leading(self) -> frozenset[int]:
        return frozenset(self._leading)

    async def start(self) -> None:
        if self._locks is not None and self._leads_shards:
            await self._locks.listen(NOTIFY_CHANNEL, self.wake)
        self.ensure_running()

    def ensure_running(self) -> None:
        """Start the relay loop, or restart it if it died (called by the scheduler too)."""
        if self._stopping:
            return
        if self._task is None or self._task.done():
            if self._task is not None and not self._task.cancelled() and self._task.exception() is not None:
                log.error("outbox relay died; restarting", exc_info=self._task.exception())
            self._task = asyncio.create_task(self._run(), name="outbox-relay")
        if self._saver is None or self._saver.done():
            self._saver = asyncio.create_task(self._save_loop(), name="outbox-cursors")

    async def stop(self, *, grace_s: float = 10.0) -> None:
        """Stop reading, wait up to `grace_s` for published rows to be handled, save, let go."""
        self._stopping = True
        self._wake.set()
        self._room.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        deadline = time.monotonic() + grace_s
        while self._inflight > 0 and time.monotonic() < deadline:  # noqa: ASYNC110 - a bounded drain at stop
            await asyncio.sleep(0.01)
        if self._saver is not None:
            self._saver.cancel()
            await asyncio.gather(self._saver, return_exceptions=True)
        await self._notifier.drain()
        try:
            await self._save()
        except Exception as exc:  # noqa: BLE001 - the next leader re-reads from the saved cursor
            log.warning("could not save outbox cursors at stop", extra={"error": repr(exc)})
        await self._unlock(set(self._leading))

    # -- leadership --------------------------------------------------------------------------

    async def _rebalance(self) -> None:
        """Lead a fair share of the shards: give extras up, take free ones."""
        if self._locks is None:
            if not self._leading:
                await self._take(set(range(SHARDS)))
            return
        if self._generation != self._locks.generation:  # the lock connection broke: locks gone
            if self._leading:
                log.error("lost the outbox shard locks; stepping down", extra={"shards": len(self._leading)})
            self._forget(set(self._leading))
            if not await self._locks.reconnect_if_needed():
                return
            self._generation = self._locks.generation
        live = max(1, await self._live_instances()) if self._live_instances else 1
        fair = math.ceil(SHARDS / live) if self._leads_shards else 0
        keeping = self._leading - self._releasing
        if len(keeping) > fair:
            extra = sorted(keeping)[fair:]
            self._releasing.update(extra)
            log.info("handing outbox shards over", extra={"shards": extra, "fair": fair})
        elif len(keeping) < fair:
            free = [s for s in range(SHARDS) if s not in self._leading]
            random.shuffle(free)
            taken: set[int] = set()
            for shard in free:
                if len(keeping) + len(taken) >= fair:
                    break
                if await self._locks.try_lock(NS_RELAY, shard):
                    taken.add(shard)
            if taken:
                await self._take(taken)

    async def _take(self, shards: set[int]) -> None:
        rows = await self._pool.fetch(
            "SELECT shard, tx, id FROM outbox_cursors WHERE shard = ANY($1::smallint[])", list(shards)
        )
        for r in rows:
            self._read[r["shard"]] = self._saved[r["shard"]] = (r["tx"], r["id"])
            self._inflight_first[r["shard"]] = Counter()
        self._leading |= shards
        self._wake.set()
        log.info("outbox relay leads shards", extra={"shards": sorted(shards), "leading": len(self._leading)})

    def _forget(self, shards: set[int]) -> None:
        for shard in shards:
            self._leading.discard(shard)
            self._releasing.discard(shard)
            self._inflight_first.pop(shard, None)
            self._read.pop(shard, None)
            self._late.pop(shard, None)

    async def _unlock(self, shards: set[int]) -> None:
        self._forget(shards)
        if self._locks is None:
            return
        for shard in shards:
            # if the session is gone, so is the lock
            with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                await self._locks.unlock(NS_RELAY, shard)

    async def _finish_handovers(self) -> None:
        """Give up shards being handed over once nothing of theirs is in flight any more."""
        idle = {s for s in self._releasing if not self._inflight_first.get(s)}
        if idle:
            await self._save()
            await self._unlock(idle)

    # -- the loop ----------------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            now = time.monotonic()
            try:
                if now >= self._next_rebalance:
                    self._next_rebalance = now + _REBALANCE_EVERY_S
                    await self._rebalance()
                    await self._finish_handovers()
                shards = [s for s in self._leading if s not in self._releasing and self._paused_until.get(s, 0) <= now]
                if not shards:
                    await self._sleep(self._poll_s)
                    continue
                room = self._inflight_max - self._inflight
                if room <= 0:
                    self._room.clear()
                    await self._room.wait()
                    continue
                self._wake.clear()
                rows = await self._read_next(shards, min(self._batch_size, room))
                failures = 0
            except Exception as exc:  # noqa: BLE001 - the relay must outlive database trouble
                failures += 1
                level = logging.WARNING if is_transient(exc) else logging.ERROR
                log.log(level, "outbox relay read failed", extra={"error": repr(exc)})
                await self._sleep(min(5.0, 0.1 * 2**failures))
                continue
            if not rows:
                await self._sleep(self._poll_s)
                continue
            await self._publish(rows)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=max(seconds, 0))

    async def _read_next(self, shards: Sequence[int], limit: int) -> list[asyncpg.Record]:
        positions = [self._read[s] for s in shards]
        rows = list(
            await self._pool.fetch(
                READ,
                list(shards),
                [tx for tx, _ in positions],
                [i for _, i in positions],
                max(16, limit // len(shards) + 1),
            )
        )
        snapshot = rows[0]["snapshot"] if rows else None
        if self._waiting:
            # The transactions behind our positions that the last read still saw running: those
            # that have finished since may have committed rows there — in any shard we lead,
            # including those left out of this read (paused, being handed over).
            current = snapshot or await self._pool.fetchval("SELECT pg_current_snapshot()::text")
            finished = self._waiting - running(current)
            if finished:
                self._waiting -= finished
                for shard in self._leading:
                    self._late.setdefault(shard, set()).update(finished)
        # A finished transaction stays in `_late` (holding the shard's saved cursor back) until its
        # rows were read: from here to `_publish` registering them in flight there is no await.
        due = {s: set(self._late[s]) for s in shards if self._late.get(s)}
        if due:
            late_positions = [self._read[s] for s in due]
            rows += await self._pool.fetch(
                READ_LATE,
                list(due),
                [tx for tx, _ in late_positions],
                [i for _, i in late_positions],
                sorted(set().union(*due.values())),
            )
            for shard, read in due.items():
                if (late := self._late.get(shard)) is not None:
                    late -= read
                    if not late:
                        del self._late[shard]
            self._progress.set()  # the cursors may move up to what was held back
        if snapshot is not None:
            ahead = {r["shard"]: (r["tx"], r["id"]) for r in rows if (r["tx"], r["id"]) > self._read[r["shard"]]}
            self._waiting |= running_below(snapshot, ahead.values())
        return rows

    async def _publish(self, rows: Sequence[asyncpg.Record]) -> None:
        first: dict[int, Position] = {}
        messages = []
        for r in rows:
            shard, position = r["shard"], (r["tx"], r["id"])
            if shard not in first or position < first[shard]:
                first[shard] = position
            if position > self._read[shard]:
                self._read[shard] = position
            messages.append(
                Message(
                    topic=r["topic"],
                    key=r["msg_key"],
                    event_id=r["event_id"],
                    event_type=r["event_type"],
                    value=r["payload"],
                    traceparent=r["traceparent"],
                )
            )
        messages, traced = publish_spans(messages)  # sampled events: a span until durable
        batch = Batch(first, len(rows))
        for shard, position in first.items():
            self._inflight_first[shard][position] += 1
        self._inflight += batch.size
        faults.hit("relay.after_read")
        try:
            future = await self._bus.publish(messages)
        except Exception as exc:  # noqa: BLE001
            self._finished(batch, exc, traced)
            return
        future.add_done_callback(lambda f: self._finished(batch, None if f.cancelled() else f.exception(), traced))
        if not self._bus.pipelined:  # a broker acknowledgement per batch: wait, so batches never overtake
            await asyncio.wait([future])

    def _finished(
        self, batch: Batch, error: BaseException | None, traced: Callable[[BaseException | None], None] | None = None
    ) -> None:
        if traced is not None:
            traced(error)
        self._inflight -= batch.size
        if error is None:
            self.published += batch.size
            metrics.OUTBOX_PUBLISHED.inc(batch.size)
        else:
            metrics.OUTBOX_PUBLISH_FAILURES.inc()
            log.warning("outbox publish failed; rows go out again", extra={"rows": batch.size, "error": repr(error)})
        for shard, position in batch.first.items():
            inflight = self._inflight_first.get(shard)
            if inflight is None or not inflight[position]:
                continue  # no longer ours
            if error is not None:
                # Read again, after a pause, from before the oldest row in flight: nothing newer
                # overtakes what failed for long (rows in flight may be delivered twice).
                self._read[shard] = min(self._read[shard], before(min(p for p, n in inflight.items() if n)))
                self._paused_until[shard] = time.monotonic() + _PAUSE_AFTER_FAILURE_S
            inflight[position] -= 1
            if not inflight[position]:
                del inflight[position]
        self._room.set()
        self._progress.set()

    # -- cursors -------------------------------------------------------------------------------

    def _safe(self, shard: int) -> Position:
        """Where a restart may resume: before the oldest row in flight, and before anything a
        still-running transaction may yet add."""
        candidates = [self._read[shard]]
        inflight = self._inflight_first.get(shard)
        if inflight:
            candidates.append(before(min(inflight)))
        if self._waiting:
            candidates.append((min(self._waiting) - 1, MAX_ROW_ID))
        if late := self._late.get(shard):
            candidates.append((min(late) - 1, MAX_ROW_ID))
        return min(candidates)

    async def _save_loop(self) -> None:
        while True:
            await self._progress.wait()
            self._progress.clear()
            try:
                await self._save()
            except Exception as exc:  # noqa: BLE001 - keep the positions and try again
                log.warning("saving outbox cursors failed; retrying", extra={"error": repr(exc)})
                await asyncio.sleep(0.2)
                self._progress.set()
            await asyncio.sleep(0.005)  # let completions gather: one UPDATE for many batches

    async def _save(self) -> None:
        changed = {s: p for s in list(self._read) if (p := self._safe(s)) > self._saved.get(s, (0, 0))}
        if not changed:
            return
        faults.hit("relay.before_save")
        await self._pool.execute(
            SAVE_CURSORS, list(changed), [tx for tx, _ in changed.values()], [i for _, i in changed.values()]
        )
        self._saved.update(changed)
