"""The outbox relay: publishes committed outbox rows to the bus, in id order.

One relay leads per cluster (session advisory lock; it dies with its process, so a standby
takes over at once). The leader:

1. claims the oldest NEW rows with `FOR UPDATE SKIP LOCKED` (status CLAIMED, claimed_by=me),
2. hands them to the bus in id order, which keeps per-key order,
3. marks them SENT once the bus says they are durable (Kafka acks=all, or in memory: handled
   by every subscriber); on failure puts them back to NEW with a back-off.

It is woken at once by the unit of work after a commit (in-process) or by NOTIFY (other
processes), and polls as a fallback. A crash after claiming leaves rows CLAIMED: the next leader
puts every claim of a previous leader back to NEW before it starts, so rows are published at
least once and consumers' inboxes make that exactly-once in effect. SKIP LOCKED and the
claimed_by guard also keep two relays that both believe they lead from publishing a row twice.
Sent rows are deleted after `retention` by `prune`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence

import asyncpg

from marketplace_pay.infra import metrics
from marketplace_pay.infra.dispatch import is_transient
from marketplace_pay.infra.locks import NS_RELAY, SessionLocks
from marketplace_pay.shared.bus import EventBus, Message
from marketplace_pay.shared.faults import faults

log = logging.getLogger(__name__)

_CLAIM = """
WITH next AS (
    SELECT id FROM outbox
    WHERE status = 'NEW' AND available_at <= now()
    ORDER BY id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE outbox o
SET status = 'CLAIMED', claimed_by = $2, claimed_at = now(), attempts = o.attempts + 1
FROM next
WHERE o.id = next.id
RETURNING o.id, o.event_id, o.event_type, o.topic, o.msg_key, o.payload, o.traceparent
"""

_MARK_SENT = """
UPDATE outbox SET status = 'SENT', sent_at = now(), claimed_by = NULL, last_error = NULL
WHERE id = ANY($1::bigint[]) AND status = 'CLAIMED' AND claimed_by = $2
"""

_RETURN = """
UPDATE outbox
SET status = 'NEW', claimed_by = NULL, claimed_at = NULL,
    available_at = now() + make_interval(secs => $3), last_error = $4
WHERE id = ANY($1::bigint[]) AND status = 'CLAIMED' AND claimed_by = $2
"""


class OutboxRelay:
    def __init__(
        self,
        pool: asyncpg.Pool,
        bus: EventBus,
        *,
        locks: SessionLocks | None,
        batch_size: int = 500,
        poll_ms: int = 1000,
        inflight_max: int = 5000,
        relay_id: str | None = None,
    ) -> None:
        self._pool = pool
        self._bus = bus
        self._locks = locks
        self._batch_size = batch_size
        self._poll_s = poll_ms / 1000
        self._inflight_max = max(inflight_max, batch_size) if bus.pipelined else batch_size
        self.relay_id = relay_id or f"relay-{os.getpid()}-{os.urandom(4).hex()}"
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._done = asyncio.Event()
        self._sent: list[int] = []
        self._failed: list[tuple[list[int], str]] = []
        self._inflight = 0
        self._leading = False
        self._lock_generation = -1
        self._paused_until = 0.0
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self.published = 0

    # -- lifecycle ---------------------------------------------------------------------------

    def wake(self) -> None:
        self._wake.set()

    @property
    def leading(self) -> bool:
        return self._leading

    def ensure_running(self) -> None:
        """Start the relay loop, or restart it if it died (called by the scheduler)."""
        if self._stopping:
            return
        if self._task is None or self._task.done():
            if self._task is not None and not self._task.cancelled() and self._task.exception() is not None:
                log.error("outbox relay died; restarting", exc_info=self._task.exception())
            self._task = asyncio.create_task(self._run(), name="outbox-relay")
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_loop(), name="outbox-relay-flush")

    async def stop(self, *, grace_s: float = 10.0) -> None:
        """Stop claiming, wait up to `grace_s` for in-flight rows, mark what finished."""
        self._stopping = True
        self._wake.set()
        self._room.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        deadline = time.monotonic() + grace_s
        while self._inflight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        if self._flusher is not None:
            self._done.set()
            await asyncio.sleep(0)
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
        await self._flush_once()
        await self._resign()

    # -- leadership --------------------------------------------------------------------------

    async def _lead(self) -> bool:
        if self._locks is None:  # a test relay that skips the election
            self._leading = True
            return True
        if self._leading and self._lock_generation == self._locks.generation:
            return True
        self._leading = False
        try:
            if not await self._locks.reconnect_if_needed() or not await self._locks.try_lock(NS_RELAY, 0):
                return False
            self._lock_generation = self._locks.generation
            reclaimed = await self._pool.execute(
                "UPDATE outbox SET status = 'NEW', claimed_by = NULL, claimed_at = NULL "
                "WHERE status = 'CLAIMED' AND claimed_by IS DISTINCT FROM $1",
                self.relay_id,
            )
        except (ConnectionError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("relay election failed", extra={"error": repr(exc)})
            return False
        self._leading = True
        log.info("outbox relay leads", extra={"relay": self.relay_id, "reclaimed": int(reclaimed.split()[-1])})
        return True

    async def _resign(self) -> None:
        if self._locks is not None and self._leading:
            self._leading = False
            try:
                await self._locks.unlock(NS_RELAY, 0)
            except (ConnectionError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                pass

    # -- the loop ----------------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            if not await self._lead():
                await self._sleep(self._poll_s * 2)
                continue
            if time.monotonic() < self._paused_until:
                await self._sleep(self._paused_until - time.monotonic())
                continue
            room = self._inflight_max - self._inflight
            if room <= 0:
                self._room.clear()
                await self._room.wait()
                continue
            self._wake.clear()
            try:
                rows = await self._claim(min(self._batch_size, room))
                failures = 0
            except Exception as exc:  # noqa: BLE001 - the relay must outlive database trouble
                failures += 1
                level = logging.WARNING if is_transient(exc) else logging.ERROR
                log.log(level, "outbox claim failed", extra={"error": repr(exc)})
                await self._sleep(min(5.0, 0.1 * 2**failures))
                continue
            if not rows:
                await self._sleep(self._poll_s)
                continue
            await self._publish(rows)

    async def _sleep(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=max(seconds, 0))
        except TimeoutError:
            pass

    async def _claim(self, limit: int) -> list[asyncpg.Record]:
        rows = await self._pool.fetch(_CLAIM, limit, self.relay_id)
        return sorted(rows, key=lambda r: r["id"])

    async def _publish(self, rows: Sequence[asyncpg.Record]) -> None:
        ids = [r["id"] for r in rows]
        self._inflight += len(ids)
        faults.hit("relay.after_claim")
        messages = [
            Message(
                topic=r["topic"],
                key=r["msg_key"],
                event_id=r["event_id"],
                event_type=r["event_type"],
                value=r["payload"],
                traceparent=r["traceparent"],
            )
            for r in rows
        ]
        try:
            future = await self._bus.publish(messages)
        except Exception as exc:  # noqa: BLE001
            self._finished(ids, exc)
            return
        future.add_done_callback(lambda f: self._finished(ids, None if f.cancelled() else f.exception()))
        if not self._bus.pipelined:  # a broker ack per batch: wait, so batches never overtake
            await asyncio.wait([future])

    def _finished(self, ids: list[int], error: BaseException | None) -> None:
        if error is None:
            self._sent.extend(ids)
        else:
            self._failed.append((ids, repr(error)))
        self._done.set()

    # -- marking ------------------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        while True:
            await self._done.wait()
            self._done.clear()
            try:
                await self._flush_once()
            except Exception as exc:  # noqa: BLE001 - keep the ids and try again
                log.warning("outbox mark failed; retrying", extra={"error": repr(exc)})
                await asyncio.sleep(0.2)
                self._done.set()

    async def _flush_once(self) -> None:
        sent, failed = self._sent, self._failed
        if not sent and not failed:
            return
        self._sent, self._failed = [], []
        try:
            if sent:
                faults.hit("relay.after_publish")
                await self._pool.execute(_MARK_SENT, sent, self.relay_id)
                metrics.OUTBOX_PUBLISHED.inc(len(sent))
                self.published += len(sent)
            for ids, error in failed:
                metrics.OUTBOX_PUBLISH_FAILURES.inc()
                log.warning("outbox publish failed; rows go back to NEW", extra={"rows": len(ids), "error": error})
                await self._pool.execute(_RETURN, ids, self.relay_id, 1.0, error[:2000])
                # keep per-key order: nothing newer goes out before these rows are retried
                self._paused_until = time.monotonic() + 1.0
        except BaseException:
            self._sent = sent + self._sent
            self._failed = failed + self._failed
            raise
        self._inflight -= len(sent) + sum(len(ids) for ids, _ in failed)
        self._room.set()
        self._wake.set()

    # -- maintenance (scheduled jobs) ---------------------------------------------------------

    async def reclaim_stuck(self, *, older_than_s: int = 60) -> int:
        """Put back claims that no live relay will finish (a previous leader's, after a split)."""
        if not self._leading:
            return 0
        status = await self._pool.execute(
            "UPDATE outbox SET status = 'NEW', claimed_by = NULL, claimed_at = NULL "
            "WHERE status = 'CLAIMED' AND claimed_by <> $1 AND claimed_at < now() - make_interval(secs => $2)",
            self.relay_id,
            older_than_s,
        )
        return int(status.split()[-1])

    async def prune(self, *, retention_s: int, batch: int = 10000) -> int:
        """Delete sent rows older than `retention_s`, in batches."""
        total = 0
        while True:
            status = await self._pool.execute(
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE status = 'SENT' "
                "AND sent_at < now() - make_interval(secs => $1) LIMIT $2)",
                retention_s,
                batch,
            )
            deleted = int(status.split()[-1])
            total += deleted
            if deleted < batch:
                return total

    async def backlog(self) -> int:
        count = await self._pool.fetchval("SELECT count(*) FROM outbox WHERE status <> 'SENT'")
        metrics.OUTBOX_BACKLOG.set(count)
        return int(count)
