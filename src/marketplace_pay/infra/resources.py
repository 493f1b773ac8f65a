"""Starting and stopping the backing services: PostgreSQL (a URL, or the embedded server), Redis
(likewise), migrations, the session-lock connection and the snowflake instance lease.

`open_resources` is what `serve` needs; `open_stores` is the databases only (CLI commands: no id
lease, no relay). Both are closed by their owner. Nothing here wires application code.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import redis.asyncio as aioredis

from marketplace_pay.infra import partitions
from marketplace_pay.infra.db import create_pool, migrate
from marketplace_pay.infra.embedded import EmbeddedRedis, embedded_postgres
from marketplace_pay.infra.locks import LeasedIdGenerator, SessionLocks
from marketplace_pay.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Stores:
    """The databases (for CLI commands)."""

    dsn: str
    redis_url: str
    pool: asyncpg.Pool
    redis: aioredis.Redis
    embedded_redis: EmbeddedRedis | None

    async def close(self) -> None:
        await self.redis.aclose()
        await self.pool.close()
        if self.embedded_redis is not None:
            await asyncio.to_thread(self.embedded_redis.stop)


@dataclass
class Resources(Stores):
    """Everything a serving process holds: the databases, its lock connection and its id lease."""

    locks: SessionLocks | None = None
    ids: LeasedIdGenerator | None = None

    async def close(self) -> None:
        if self.ids is not None:
            await self.ids.release()
        if self.locks is not None:
            await self.locks.stop()
        await super().close()


async def resolve_dsn(settings: Settings) -> str:
    if settings.services.database_url:
        return settings.services.database_url
    return await asyncio.to_thread(embedded_postgres, settings.process.data_dir)


async def resolve_services(settings: Settings) -> tuple[str, str, EmbeddedRedis | None]:
    """DSN and Redis URL (starting the embedded ones when unset), with migrations applied."""
    dsn = await resolve_dsn(settings)
    embedded_redis = None
    redis_url = settings.services.redis_url
    if not redis_url:
        embedded_redis = EmbeddedRedis(settings.process.data_dir)
        redis_url = await asyncio.to_thread(embedded_redis.start)
    conn = await asyncpg.connect(dsn)
    try:
        applied = await migrate(conn)
        if applied:
            log.info("migrations applied", extra={"migrations": applied})
        for table in partitions.TABLES:  # before the first insert: rows belong in time partitions
            await partitions.ensure_partitions(conn, table, now=datetime.now(UTC))
    finally:
        await conn.close()
    return dsn, redis_url, embedded_redis


def redis_client(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5, health_check_interval=30)


async def open_stores(settings: Settings) -> Stores:
    dsn, redis_url, embedded_redis = await resolve_services(settings)
    pool = await create_pool(
        dsn, min_size=1, max_size=4, application_name=f"marketplace-pay:{settings.process.instance_name}:cli"
    )
    return Stores(dsn, redis_url, pool, redis_client(redis_url), embedded_redis)


async def claim_redis(pool: asyncpg.Pool, client: aioredis.Redis, prefix: str) -> None:
    """Redis keys under `prefix` belong to one database. Keys left by another (the database was
    recreated or restored, or a migration changed what they mean) would mislead the retry timers
    and the balance overlay: drop them — Postgres holds everything they derive from (pending
    retries are requeued from it, the overlay refills and the fold catches up)."""
    identity = await pool.fetchval("SELECT identity FROM database_identity")
    key = f"{prefix}database"
    previous = await client.get(key)  # (SET NX GET needs Redis 7; the embedded one is 6.2)
    if previous is None:
        await client.set(key, identity, nx=True)
    elif (previous.decode() if isinstance(previous, bytes) else str(previous)) != identity:
        stale = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000) if k.decode() != key]
        for i in range(0, len(stale), 1000):
            await client.delete(*stale[i : i + 1000])
        await client.set(key, identity)
        log.warning("Redis held state of another database; cleared it", extra={"keys": len(stale), "prefix": prefix})


async def open_resources(settings: Settings) -> Resources:
    dsn, redis_url, embedded_redis = await resolve_services(settings)
    name = f"marketplace-pay:{settings.process.instance_name}"
    pool = await create_pool(dsn, min_size=settings.db.pool_min, max_size=settings.db.pool_max, application_name=name)
    locks = SessionLocks(dsn, application_name=name)
    await locks.start()
    ids = LeasedIdGenerator(locks, holder=settings.process.instance_name, relays=settings.process.runs_pipeline)
    await ids.acquire()
    ids.start()
    client = redis_client(redis_url)
    await claim_redis(pool, client, settings.redis.prefix)
    return Resources(dsn, redis_url, pool, client, embedded_redis, locks=locks, ids=ids)
