"""The balance overlay: the fake (unit tests) and Redis behave alike."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from marketplace_pay.balances.adapters.redis import RedisBalanceOverlay
from tests.fakes import FakeOverlay


@pytest.fixture(params=["fake", "redis"])
async def overlay(request: pytest.FixtureRequest, redis_url: str, redis_prefix: str) -> AsyncIterator[Any]:
    if request.param == "fake":
        yield FakeOverlay()
        return
    client = aioredis.Redis.from_url(redis_url)
    prefix = f"{redis_prefix}{secrets.token_hex(4)}:"
    yield RedisBalanceOverlay(client, prefix=prefix, chunk=3)  # small chunks: exercise the split
    await client.delete(*[k async for k in client.scan_iter(match=f"{prefix}*")] or ["none"])
    await client.aclose()


async def test_entries_are_idempotent_and_order_free(overlay: Any) -> None:
    entries = [("A", 1, 100), ("B", 1, -100), ("A", 3, 5), ("A", 2, -7)]
    assert await overlay.apply(entries) == 4
    assert await overlay.apply(list(reversed(entries)) + entries) == 0
    assert await overlay.entries("A") == [(1, 100), (2, -7), (3, 5)]
    assert sorted(await overlay.accounts()) == ["A", "B"]


async def test_prune_drops_folded_entries_and_later_ones_at_or_below_the_horizon(overlay: Any) -> None:
    await overlay.apply([("A", 1, 10), ("A", 5, 20), ("B", 2, 30)])
    await overlay.prune(3, ["A"])
    assert await overlay.entries("A") == [(5, 20)]
    assert await overlay.entries("B") == [(2, 30)]  # not in this fold's accounts
    await overlay.prune(3, [])  # every account
    assert await overlay.entries("B") == []
    assert await overlay.apply([("A", 2, 99), ("A", 6, 1)]) == 1  # a late entry below the horizon is ignored
    assert await overlay.entries("A") == [(5, 20), (6, 1)]
    await overlay.prune(1, [])  # the horizon never goes back
    assert await overlay.apply([("C", 2, 1)]) == 0


async def test_clear_forgets_entries(overlay: Any) -> None:
    await overlay.apply([("A", 1, 10)])
    await overlay.clear()
    assert await overlay.entries("A") == [] and await overlay.accounts() == []
