"""Redis state belongs to one database: keys left by another one are cleared at start."""

from __future__ import annotations

import secrets

import asyncpg
import redis.asyncio as aioredis

from marketplace_pay.infra.db import create_pool
from marketplace_pay.infra.resources import claim_redis


async def test_redis_keys_of_another_database_are_cleared(
    fresh_database: str, redis_url: str, redis_prefix: str
) -> None:
    prefix = f"{redis_prefix}{secrets.token_hex(3)}:"
    pool: asyncpg.Pool = await create_pool(fresh_database, min_size=1, max_size=2, application_name="t")
    client = aioredis.Redis.from_url(redis_url)
    try:
        await claim_redis(pool, client, prefix)  # first start: claims the prefix
        await client.set(f"{prefix}bal:horizon", 42)
        await claim_redis(pool, client, prefix)  # same database: nothing happens
        assert await client.get(f"{prefix}bal:horizon") == b"42"

        await client.set(f"{prefix}database", "another-database")  # e.g. the database was recreated
        await client.zadd(f"{prefix}retry:queue", {"1:1": 1})
        await claim_redis(pool, client, prefix)
        assert await client.get(f"{prefix}bal:horizon") is None
        assert await client.zcard(f"{prefix}retry:queue") == 0
        assert (await client.get(f"{prefix}database")).decode() == await pool.fetchval(
            "SELECT identity FROM database_identity"
        )
    finally:
        await client.delete(*[k async for k in client.scan_iter(match=f"{prefix}*")])
        await client.aclose()
        await pool.close()
