"""The seller directory: the fake (unit tests) and Postgres behave alike, and so does the
in-memory cache in front of either."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from marketplace_pay.infra.db import create_pool
from marketplace_pay.ledger.adapters.postgres import PgSellerStore
from marketplace_pay.ledger.application.directory import CachedSellers, OnboardSeller, Seller
from marketplace_pay.ledger.domain.accounts import AccountStatus
from marketplace_pay.shared.clock import FixedClock
from marketplace_pay.shared.money import Currency
from tests.fakes import FakeSellerStore

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ACTIVE, SUSPENDED, CLOSED = AccountStatus.ACTIVE, AccountStatus.SUSPENDED, AccountStatus.CLOSED


@pytest.fixture(params=["fake", "postgres"])
async def store(request: pytest.FixtureRequest, fresh_database: str) -> AsyncIterator[Any]:
    if request.param == "fake":
        yield FakeSellerStore(FixedClock(T0))
        return
    pool = await create_pool(fresh_database, min_size=1, max_size=4, application_name="contract")
    yield PgSellerStore(pool)
    await pool.close()


def fields(seller: Seller) -> tuple[str, str, Currency, AccountStatus, int]:
    return (seller.seller_id, seller.account_code, seller.currency, seller.status, seller.commission_bps)


SEEDED = [
    ("SELLER-111", "MERCHANT_PAYABLE.SELLER-111.EUR", Currency.EUR, ACTIVE, 500),
    ("SELLER-222", "MERCHANT_PAYABLE.SELLER-222.EUR", Currency.EUR, ACTIVE, 500),
    ("SELLER-333", "MERCHANT_PAYABLE.SELLER-333.EUR", Currency.EUR, ACTIVE, 500),
]


async def test_the_seeded_sellers_are_there(store: Any) -> None:
    assert [fields(s) for s in await store.list()] == SEEDED
    for expected in SEEDED:
        seller = await store.get(expected[0])
        assert seller is not None and fields(seller) == expected
        assert seller.created_at == seller.updated_at


async def test_a_seller_is_added_once(store: Any) -> None:
    added = await store.add(OnboardSeller("SELLER-444", Currency.GBP, 250))
    assert added is not None
    assert fields(added) == ("SELLER-444", "MERCHANT_PAYABLE.SELLER-444.GBP", Currency.GBP, ACTIVE, 250)
    assert added.created_at == added.updated_at
    assert await store.get("SELLER-444") == added
    # an existing seller is not added again, whatever the command says
    assert await store.add(OnboardSeller("SELLER-444", Currency.GBP, 250)) is None
    assert await store.add(OnboardSeller("SELLER-444", Currency.USD, 900)) is None  # one settlement currency per seller
    assert await store.add(OnboardSeller("SELLER-111", Currency.EUR, 0)) is None
    assert await store.get("SELLER-444") == added
    assert fields(await store.get("SELLER-111")) == SEEDED[0]


async def test_an_unknown_seller_is_none(store: Any) -> None:
    assert await store.get("SELLER-999") is None
    assert await store.get("GLOBAL") is None  # the platform's accounts are no seller
    assert await store.set_status("SELLER-999", SUSPENDED) is None
    assert await store.get("SELLER-999") is None


async def test_many_returns_the_known_sellers_once_each(store: Any) -> None:
    found = await store.many(["SELLER-333", "SELLER-NOPE", "SELLER-111"])
    assert sorted(fields(s) for s in found) == [SEEDED[0], SEEDED[2]]
    assert await store.many([]) == []
    assert await store.many(["SELLER-NOPE"]) == []
    twice = await store.many(["SELLER-222", "SELLER-222"])
    assert [fields(s) for s in twice] == [SEEDED[1]]


async def test_the_list_is_ordered_by_seller_id(store: Any) -> None:
    for seller_id in ("SELLER-999", "SELLER-000", "SELLER-5"):
        assert await store.add(OnboardSeller(seller_id, Currency.USD, 100)) is not None
    assert [s.seller_id for s in await store.list()] == [
        "SELLER-000",
        "SELLER-111",
        "SELLER-222",
        "SELLER-333",
        "SELLER-5",
        "SELLER-999",
    ]


async def test_set_status_changes_the_status_only(store: Any) -> None:
    before = await store.get("SELLER-222")
    suspended = await store.set_status("SELLER-222", SUSPENDED)
    assert suspended is not None
    assert fields(suspended) == ("SELLER-222", "MERCHANT_PAYABLE.SELLER-222.EUR", Currency.EUR, SUSPENDED, 500)
    assert suspended.created_at == before.created_at and suspended.updated_at >= before.updated_at
    assert await store.get("SELLER-222") == suspended
    assert [s.status for s in await store.list()] == [ACTIVE, SUSPENDED, ACTIVE]
    assert (await store.set_status("SELLER-222", CLOSED)).status is CLOSED
    assert (await store.set_status("SELLER-222", ACTIVE)).status is ACTIVE
    assert fields(await store.get("SELLER-222")) == SEEDED[1]


# -- the cache in front of either store ------------------------------------------------------


class Counted:
    """The store, with every read the cache makes written down."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.reads: list[list[str]] = []

    async def many(self, seller_ids: Sequence[str]) -> list[Seller]:
        self.reads.append(list(seller_ids))
        return await self.store.many(seller_ids)


async def ids(cache: CachedSellers, *seller_ids: str) -> list[tuple[str, AccountStatus]]:
    return [(s.seller_id, s.status) for s in await cache.many(seller_ids)]


async def test_the_cache_answers_from_memory_within_its_ttl(store: Any) -> None:
    clock = FixedClock(T0)
    counted = Counted(store)
    cache = CachedSellers(counted, clock=clock, ttl_ms=1000)  # type: ignore[arg-type]
    assert await ids(cache, "SELLER-111", "SELLER-NOPE") == [("SELLER-111", ACTIVE)]
    assert counted.reads == [["SELLER-111", "SELLER-NOPE"]]
    clock.advance(ms=1000)  # still within the TTL
    assert await ids(cache, "SELLER-NOPE", "SELLER-111", "SELLER-111") == [
        ("SELLER-111", ACTIVE),
        ("SELLER-111", ACTIVE),
    ]
    assert await cache.commission_bps(["SELLER-111", "SELLER-NOPE"]) == {"SELLER-111": 500}
    assert counted.reads == [["SELLER-111", "SELLER-NOPE"]]  # unknown sellers are remembered too
    assert await ids(cache, "SELLER-111", "SELLER-222", "SELLER-222") == [
        ("SELLER-111", ACTIVE),
        ("SELLER-222", ACTIVE),
        ("SELLER-222", ACTIVE),
    ]
    assert counted.reads == [["SELLER-111", "SELLER-NOPE"], ["SELLER-222"]]  # only what it did not hold, once


async def test_a_change_behind_the_cache_shows_after_forget_or_the_ttl(store: Any) -> None:
    clock = FixedClock(T0)
    counted = Counted(store)
    cache = CachedSellers(counted, clock=clock, ttl_ms=1000)  # type: ignore[arg-type]
    assert await ids(cache, "SELLER-111", "SELLER-222", "SELLER-444") == [
        ("SELLER-111", ACTIVE),
        ("SELLER-222", ACTIVE),
    ]
    # changed elsewhere (another process, the CLI): not seen within the TTL
    await store.set_status("SELLER-111", SUSPENDED)
    await store.set_status("SELLER-222", SUSPENDED)
    await store.add(OnboardSeller("SELLER-444", Currency.EUR, 0))
    assert await ids(cache, "SELLER-111", "SELLER-222", "SELLER-444") == [
        ("SELLER-111", ACTIVE),
        ("SELLER-222", ACTIVE),
    ]
    assert len(counted.reads) == 1
    # changed through this process: forgotten, read again at once
    cache.forget("SELLER-111")
    cache.forget("SELLER-444")
    cache.forget("SELLER-NEVER-ASKED")
    assert await ids(cache, "SELLER-111", "SELLER-222", "SELLER-444") == [
        ("SELLER-111", SUSPENDED),
        ("SELLER-222", ACTIVE),
        ("SELLER-444", ACTIVE),
    ]
    assert counted.reads[1:] == [["SELLER-111", "SELLER-444"]]
    # past the TTL: read again
    clock.advance(ms=1001)
    assert await ids(cache, "SELLER-222") == [("SELLER-222", SUSPENDED)]
    assert counted.reads[2:] == [["SELLER-222"]]
    assert await cache.commission_bps(["SELLER-444", "SELLER-222"]) == {"SELLER-444": 0, "SELLER-222": 500}
    assert counted.reads[3:] == [["SELLER-444"]]  # SELLER-444 was read 1001 ms ago too; SELLER-222 just now


async def test_a_cache_that_grew_too_big_still_answers_what_it_was_asked() -> None:
    """Past its bound the cache forgets everything; an answer it held a moment before is still
    given (not looked up in the emptied cache)."""
    from marketplace_pay.ledger.application.directory import CachedSellers
    from marketplace_pay.shared.clock import FixedClock
    from tests.fakes.ledger import FakeSellerStore

    clock = FixedClock()
    cache = CachedSellers(FakeSellerStore(clock), clock=clock, max_entries=10)
    await cache.many(["SELLER-111"])  # cached now
    await cache.many([f"UNKNOWN-{i}" for i in range(11)])  # many lookups of unknown sellers
    found = await cache.many(["SELLER-111", "SELLER-222"])  # one cached, one not: the cache overflows
    assert [s.seller_id for s in found] == ["SELLER-111", "SELLER-222"]
