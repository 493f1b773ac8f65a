"""The capture retry queue in Redis: a ZSET of waiting items scored by due time, and a ZSET of
items in flight scored by when they were popped. An item is "<paymentOrderId>:<attempt>", so
scheduling it twice keeps one. Moving between the two is one Lua script each way: a crash can
never leave an item in neither (ZPOPMIN then ZADD as two commands would lose the items popped
when the process dies between them)."""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis

from marketplace_pay.infra import metrics

_POP_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  redis.call('ZADD', KEYS[2], ARGV[1], member)
  redis.call('ZREM', KEYS[1], member)
end
return due
"""

_RECLAIM = """
local stale = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
for _, member in ipairs(stale) do
  redis.call('ZADD', KEYS[1], ARGV[1], member)
  redis.call('ZREM', KEYS[2], member)
end
return #stale
"""


def _member(payment_order_id: int, attempt: int) -> str:
    return f"{payment_order_id}:{attempt}"


def _item(member: bytes | str) -> tuple[int, int]:
    text = member.decode() if isinstance(member, bytes) else member
    order, _, attempt = text.partition(":")
    return int(order), int(attempt)


class RedisRetryQueue:
    def __init__(self, client: aioredis.Redis, *, prefix: str) -> None:
        self._redis = client
        self.queue_key = f"{prefix}retry:queue"
        self.inflight_key = f"{prefix}retry:inflight"
        self._pop = client.register_script(_POP_DUE)
        self._reclaim = client.register_script(_RECLAIM)

    async def schedule(self, items: Sequence[tuple[int, int, int]]) -> None:
        if items:
            await self._redis.zadd(self.queue_key, {_member(po, attempt): due_ms for po, attempt, due_ms in items})

    async def pop_due(self, *, now_ms: int, limit: int) -> list[tuple[int, int]]:
        members = await self._pop(keys=[self.queue_key, self.inflight_key], args=[now_ms, limit])
        return [_item(m) for m in members]

    async def ack(self, items: Sequence[tuple[int, int]]) -> None:
        if items:
            await self._redis.zrem(self.inflight_key, *(_member(po, attempt) for po, attempt in items))

    async def reclaim(self, *, now_ms: int, older_than_ms: int, limit: int = 1000) -> int:
        return int(
            await self._reclaim(keys=[self.queue_key, self.inflight_key], args=[now_ms, now_ms - older_than_ms, limit])
        )

    async def sizes(self) -> tuple[int, int]:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zcard(self.queue_key)
            pipe.zcard(self.inflight_key)
            waiting, inflight = await pipe.execute()
        metrics.RETRY_QUEUE_SIZE.labels("waiting").set(waiting)
        metrics.RETRY_QUEUE_SIZE.labels("inflight").set(inflight)
        return int(waiting), int(inflight)
