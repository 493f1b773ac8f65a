"""The real-time overlay in Redis: per account a ZSET of "<seq>:<signed amount>" scored by the id of
the transaction that wrote the posting, plus the folded horizon. An entry is a fact, so adding it
twice changes nothing."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from marketplace_pay.balances.application.ports import OverlayUnavailable
from marketplace_pay.balances.domain.balance import Entry

# KEYS = [horizon, account key, ...]; ARGV = per account key, its "<tx> <member>" pairs joined by
# spaces (one string per account rather than two arguments per entry: the client's cost of
# encoding a command grows with its argument count, and a batch has a dozen entries per payment
# on a handful of accounts).
_APPLY = """
local horizon = tonumber(redis.call('GET', KEYS[1]) or '0')
local added = 0
for i = 2, #KEYS do
  local zargs = {}
  for tx, member in string.gmatch(ARGV[i - 1], '(%S+) (%S+)') do
    if tonumber(tx) >= horizon then
      zargs[#zargs + 1] = tx
      zargs[#zargs + 1] = member
    end
  end
  if #zargs > 0 then
    added = added + redis.call('ZADD', KEYS[i], unpack(zargs))
  end
end
return added
"""

# KEYS = [horizon, account key, ...]; ARGV = [horizon]
_PRUNE = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local horizon = tonumber(ARGV[1])
if horizon > current then redis.call('SET', KEYS[1], ARGV[1]) end
for i = 2, #KEYS do
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', '(' .. ARGV[1])
end
return 1
"""


_UNAVAILABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


class RedisBalanceOverlay:
    # Redis's Lua unpacks at most 7,999 values at once: one account's entries of a chunk (two
    # values each) must stay below that.
    CHUNK_MAX = 3000

    def __init__(self, client: aioredis.Redis, *, prefix: str, chunk: int = 2000) -> None:
        if not 0 < chunk <= self.CHUNK_MAX:
            raise ValueError(f"chunk must be 1..{self.CHUNK_MAX} entries, got {chunk}")
        self._redis = client
        self._account_prefix = f"{prefix}bal:o:"
        self.horizon_key = f"{prefix}bal:horizon"
        self._apply = client.register_script(_APPLY)
        self._prune = client.register_script(_PRUNE)
        self._chunk = chunk

    def _key(self, account_code: str) -> str:
        return self._account_prefix + account_code

    async def apply(self, entries: Sequence[Entry]) -> int:
        added = 0
        try:
            for i in range(0, len(entries), self._chunk):  # each chunk is one atomic script
                by_account: dict[str, list[str]] = {}
                for e in entries[i : i + self._chunk]:
                    by_account.setdefault(e.account_code, []).append(f"{e.tx} {e.seq}:{e.signed_amount_minor}")
                keys = [self.horizon_key, *(self._key(code) for code in by_account)]
                args = [" ".join(pairs) for pairs in by_account.values()]
                added += int(await self._apply(keys=keys, args=args))
        except _UNAVAILABLE as exc:
            raise OverlayUnavailable(repr(exc)) from exc
        return added

    async def entries(self, account_code: str) -> list[Entry]:
        try:
            members: list[Any] = await self._redis.zrange(self._key(account_code), 0, -1, withscores=True)
        except _UNAVAILABLE as exc:
            raise OverlayUnavailable(repr(exc)) from exc
        out = []
        for member, score in members:
            text = member.decode() if isinstance(member, bytes) else str(member)
            seq, _, amount = text.partition(":")
            out.append(Entry(account_code, int(score), int(seq), int(amount)))
        return out

    async def accounts(self) -> list[str]:
        return [
            (k.decode() if isinstance(k, bytes) else k)[len(self._account_prefix) :]
            async for k in self._redis.scan_iter(match=f"{self._account_prefix}*", count=1000)
        ]

    async def prune(self, horizon: int, account_codes: Sequence[str]) -> None:
        codes = list(account_codes) or await self.accounts()
        for i in range(0, max(len(codes), 1), self._chunk):
            part = codes[i : i + self._chunk]
            await self._prune(keys=[self.horizon_key, *(self._key(c) for c in part)], args=[horizon])

    async def remove(self, entries: Sequence[Entry]) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for e in entries:
                pipe.zrem(self._key(e.account_code), f"{e.seq}:{e.signed_amount_minor}")
            await pipe.execute()
