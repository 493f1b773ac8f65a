"""The balance overlay: the fake (unit tests) and Redis behave alike."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from marketplace_pay.balances import Entry, OverlayUnavailable
from marketplace_pay.balances.adapters.redis import RedisBalanceOverlay
from tests.fakes import FakeOverlay
from tests.services import free_port


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


def e(account: str, tx: int, seq: int, amount: int) -> Entry:
    return Entry(account, tx, seq, amount)


async def test_entries_are_idempotent_and_order_free(overlay: Any) -> None:
    entries = [e("A", 10, 1, 100), e("B", 10, 1, -100), e("A", 12, 3, 5), e("A", 11, 2, -7)]
    assert await overlay.apply(entries) == 4
    assert await overlay.apply(list(reversed(entries)) + entries) == 0
    assert sorted(await overlay.entries("A")) == [e("A", 10, 1, 100), e("A", 11, 2, -7), e("A", 12, 3, 5)]
    assert sorted(await overlay.accounts()) == ["A", "B"]


async def test_many_entries_of_one_account_in_one_batch(overlay: Any) -> None:
    entries = [e("A", 10 + i, i, (-1) ** i * i) for i in range(1, 40)] + [e("B", 5, 1, 1)]
    assert await overlay.apply(entries) == 40
    assert sorted(await overlay.entries("A")) == sorted(entries[:-1])
    assert await overlay.apply(entries[::-1]) == 0


async def test_prune_drops_entries_below_the_horizon_and_refuses_later_ones(overlay: Any) -> None:
    await overlay.apply([e("A", 10, 1, 10), e("A", 50, 5, 20), e("B", 20, 2, 30), e("A", 30, 3, 1)])
    await overlay.prune(30, ["A"])  # transactions below 30 are folded
    assert sorted(await overlay.entries("A")) == [e("A", 30, 3, 1), e("A", 50, 5, 20)]
    assert await overlay.entries("B") == [e("B", 20, 2, 30)]  # not in this fold's accounts
    await overlay.prune(30, [])  # every account
    assert await overlay.entries("B") == []
    assert await overlay.apply([e("A", 29, 2, 99), e("A", 60, 6, 1)]) == 1  # a late entry below the horizon is ignored
    assert sorted(await overlay.entries("A")) == [e("A", 30, 3, 1), e("A", 50, 5, 20), e("A", 60, 6, 1)]
    await overlay.prune(1, [])  # the horizon never goes back
    assert await overlay.apply([e("C", 20, 2, 1)]) == 0


async def test_remove_drops_exactly_the_given_entries(overlay: Any) -> None:
    await overlay.apply([e("A", 10, 1, 10), e("A", 10, 2, 10), e("B", 10, 1, 5)])
    await overlay.remove([e("A", 10, 1, 10), e("B", 10, 1, 6)])  # the second matches nothing
    assert await overlay.entries("A") == [e("A", 10, 2, 10)]
    assert await overlay.entries("B") == [e("B", 10, 1, 5)]


async def test_an_unreachable_store_is_overlay_unavailable(redis_prefix: str) -> None:
    client = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}", socket_connect_timeout=0.5)
    overlay = RedisBalanceOverlay(client, prefix=redis_prefix)
    with pytest.raises(OverlayUnavailable):
        await overlay.apply([e("A", 10, 1, 5)])
    with pytest.raises(OverlayUnavailable):
        await overlay.entries("A")
    await client.aclose()
