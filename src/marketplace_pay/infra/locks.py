"""Session-scoped coordination on one dedicated Postgres connection: advisory locks that die with
the process (instance-id lease, relay leadership), LISTEN, and the instance-id heartbeat.

Job locks (`run_exclusive`, `pooled_session_lock`) use pooled connections instead.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import asyncpg

from marketplace_pay.shared.ids import MAX_INSTANCE, SnowflakeGenerator

log = logging.getLogger(__name__)

NS_INSTANCE = 0x4D500001
NS_RELAY = 0x4D500002
NS_JOB = 0x4D500003

T = TypeVar("T")


class SessionLocks:
    """One connection, serialized. If it breaks, every lock it held is gone: users learn it from
    `generation` changing and must re-acquire."""

    def __init__(self, dsn: str, *, application_name: str) -> None:
        self._dsn = dsn
        self._application_name = application_name
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()
        self._held: set[tuple[int, int]] = set()
        self._listeners: dict[str, Callable[[], None]] = {}
        self.generation = 0

    async def start(self) -> None:
        self._conn = await asyncpg.connect(
            self._dsn, server_settings={"application_name": f"{self._application_name}:locks"}
        )
        for channel, callback in self._listeners.items():
            await self._conn.add_listener(channel, _listener(callback))

    async def stop(self) -> None:
        conn, self._conn = self._conn, None
        self._held.clear()
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), timeout=5)
            except (TimeoutError, OSError, asyncpg.InterfaceError):
                conn.terminate()

    async def _run(self, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        async with self._lock:
            if self._conn is None or self._conn.is_closed():
                if self._conn is not None:
                    self._lose()
                raise ConnectionError("lock connection is down")
            try:
                return await asyncio.wait_for(fn(self._conn), timeout=5)
            except (asyncpg.PostgresConnectionError, asyncpg.OperatorInterventionError):
                self._lose()  # the server ended the session: its locks are gone
                raise
            except asyncpg.PostgresError:
                if self._conn is None or self._conn.is_closed():
                    self._lose()
                raise  # an ordinary SQL error: the session and its locks are intact
            except asyncio.CancelledError:
                raise  # asyncpg cancels the query on the server; the session and its locks stay
            except BaseException:
                self._lose()  # timeout, network, protocol state unknown: assume the worst
                raise

    def _lose(self) -> None:
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None
        if self._held:
            log.error("lost the lock connection; every session lock is gone", extra={"locks": len(self._held)})
        self._held.clear()
        self.generation += 1

    async def reconnect_if_needed(self) -> bool:
        """Reconnect after a loss. True if connected afterwards."""
        if self._conn is not None and not self._conn.is_closed():
            return True
        try:
            await self.start()
            return True
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("lock connection still down", extra={"error": str(exc)})
            return False

    def holds(self, namespace: int, key: int) -> bool:
        return (namespace, key) in self._held

    async def try_lock(self, namespace: int, key: int) -> bool:
        if self.holds(namespace, key):
            return True
        got = await self._run(lambda c: c.fetchval("SELECT pg_try_advisory_lock($1, $2)", namespace, key))
        if got:
            self._held.add((namespace, key))
        return bool(got)

    async def unlock(self, namespace: int, key: int) -> None:
        if (namespace, key) in self._held:
            self._held.discard((namespace, key))
            await self._run(lambda c: c.fetchval("SELECT pg_advisory_unlock($1, $2)", namespace, key))

    async def listen(self, channel: str, callback: Callable[[], None]) -> None:
        self._listeners[channel] = callback
        await self._run(lambda c: c.add_listener(channel, _listener(callback)))

    async def execute(self, query: str, *args: object) -> str:
        return await self._run(lambda c: c.execute(query, *args))

    async def fetchval(self, query: str, *args: object) -> object:
        return await self._run(lambda c: c.fetchval(query, *args))


def _listener(callback: Callable[[], None]) -> Callable[..., None]:
    def on_notify(*_: object) -> None:
        callback()

    return on_notify


def job_lock_key(name: str) -> int:
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


async def run_exclusive(pool: asyncpg.Pool, name: str, fn: Callable[[asyncpg.Connection], Awaitable[T]]) -> T | None:
    """Run `fn` if no other process runs the job `name` right now (a session advisory lock on a
    pooled connection, released after the run, or with the connection if the process dies).
    Returns None if skipped."""
    async with pool.acquire() as conn, pooled_session_lock(conn, NS_JOB, job_lock_key(name)) as got:
        return await fn(conn) if got else None


@asynccontextmanager
async def pooled_session_lock(conn: asyncpg.Connection, namespace: int, key: int) -> AsyncIterator[bool]:
    """Try a session advisory lock on a pooled connection; yields whether it was taken, and
    unlocks on exit. Pools skip the reset query on release (see `infra.db.create_pool`), so if
    the unlock cannot be confirmed (cancelled, connection trouble) the connection is terminated:
    the lock never outlives this block on a connection someone else gets next."""
    try:
        got = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", namespace, key))
    except BaseException:
        conn.terminate()
        raise
    try:
        yield got
    finally:
        if got:
            try:
                await conn.execute("SELECT pg_advisory_unlock($1, $2)", namespace, key)
            except BaseException:
                conn.terminate()
                raise


class IdsUnavailable(RuntimeError):
    """The instance-id lease is not confirmed; minting ids could collide with another process."""


class LeasedIdGenerator:
    """Snowflake ids with an instance id leased from Postgres.

    Holding: a session advisory lock on the id plus a heartbeat row refreshed every
    `heartbeat_s`. Taking: only ids whose heartbeat is older than `stale_after_s`. Minting: only
    while the last confirmed heartbeat was *sent* less than `stale_after_s / 2` ago (the lease
    is only known to hold from the moment the request left, not from when the answer came back).
    So a process that loses its session stops minting before anyone may take its id. The holder
    name carries a random suffix per process, so a restarted process with the same instance name
    (a container's fixed hostname) is a different holder and waits for the stale heartbeat too."""

    def __init__(
        self,
        locks: SessionLocks,
        *,
        holder: str,
        heartbeat_s: float = 1.0,
        stale_after_s: float = 5.0,
        preferred: int | None = None,
        relays: bool = True,
    ) -> None:
        """`relays`: whether this process leads outbox shards (an API-only process does not)."""
        self._locks = locks
        self._relays = relays
        self._holder = f"{holder}#{os.urandom(3).hex()}"
        self.heartbeat_s = heartbeat_s
        self._stale_after_s = stale_after_s
        self._preferred = zlib.crc32(holder.encode()) % (MAX_INSTANCE + 1) if preferred is None else preferred
        self._generator: SnowflakeGenerator | None = None
        self._confirmed_at = 0.0
        self._generation = -1
        self._task: asyncio.Task[None] | None = None

    @property
    def instance_id(self) -> int | None:
        return None if self._generator is None else self._generator.instance_id

    async def acquire(self) -> int:
        ids = list(range(MAX_INSTANCE + 1))
        start = self._preferred
        for candidate in ids[start:] + ids[:start]:
            if not await self._locks.try_lock(NS_INSTANCE, candidate):
                continue
            sent_at = time.monotonic()
            taken = await self._locks.fetchval(
                """INSERT INTO instance_leases (instance_id, holder, heartbeat_at, relays) VALUES ($1, $2, now(), $4)
                   ON CONFLICT (instance_id) DO UPDATE
                   SET holder = EXCLUDED.holder, heartbeat_at = now(), relays = EXCLUDED.relays
                   WHERE instance_leases.heartbeat_at < now() - make_interval(secs => $3)
                      OR instance_leases.holder = EXCLUDED.holder
                   RETURNING instance_id""",
                candidate,
                self._holder,
                self._stale_after_s,
                self._relays,
            )
            if taken is None:  # its previous holder may still be minting: leave it alone
                await self._locks.unlock(NS_INSTANCE, candidate)
                continue
            self._generator = SnowflakeGenerator(candidate)
            self._confirmed_at = sent_at
            self._generation = self._locks.generation
            log.info("leased snowflake instance id", extra={"instanceId": candidate})
            return candidate
        raise IdsUnavailable("all 32 snowflake instance ids are in use")

    def start(self) -> None:
        """Heartbeat in the background for as long as the lease is held (not a scheduled job:
        minting stops if the heartbeat stops, so it must not wait for anything else)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._beat(), name="snowflake-lease")

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await self.heartbeat()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - minting pauses until the lease is confirmed again
                log.warning("snowflake lease heartbeat failed", extra={"error": repr(exc)})

    async def heartbeat(self) -> None:
        """Refresh the lease; re-acquire after a lost session."""
        if self._generator is None or self._generation != self._locks.generation:
            self._generator = None
            if await self._locks.reconnect_if_needed():
                await self.acquire()
            return
        sent_at = time.monotonic()
        updated = await self._locks.fetchval(
            "UPDATE instance_leases SET heartbeat_at = now() WHERE instance_id = $1 AND holder = $2 RETURNING 1",
            self._generator.instance_id,
            self._holder,
        )
        if updated:
            self._confirmed_at = sent_at
        else:
            log.error("snowflake lease row taken over; re-leasing")
            await self._locks.unlock(NS_INSTANCE, self._generator.instance_id)
            self._generator = None
            await self.acquire()

    async def release(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._generator is not None:
            instance = self._generator.instance_id
            self._generator = None
            try:
                await self._locks.execute(
                    "DELETE FROM instance_leases WHERE instance_id = $1 AND holder = $2", instance, self._holder
                )
                await self._locks.unlock(NS_INSTANCE, instance)
            except (ConnectionError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                pass  # the session ends with the process; the row goes stale

    def next_id(self, shard: int) -> int:
        generator = self._generator
        if generator is None or time.monotonic() - self._confirmed_at > self._stale_after_s / 2:
            raise IdsUnavailable("snowflake instance lease not confirmed")
        return generator.next_id(shard)
