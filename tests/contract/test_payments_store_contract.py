"""One suite, two implementations: the fake unit of work (unit tests) and Postgres."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from marketplace_pay.infra.db import create_pool
from marketplace_pay.payments.adapters.postgres import PgPaymentsUnitOfWork
from marketplace_pay.payments.application.ports import Acquired, KeyInProgress, KeyMismatch, Replay
from marketplace_pay.payments.domain.payment import Payment, PaymentLine, PaymentStatus
from marketplace_pay.shared.clock import FixedClock
from marketplace_pay.shared.money import Currency, Money
from tests.fakes import FakeDatabase, FakeIds, FakePaymentsUnitOfWork

IDS = FakeIds()
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def a_payment(buyer: str = "B", order: str = "O", amount: int = 3000, at: datetime = T0) -> Payment:
    return Payment.create(
        payment_id=IDS.next_id(0),
        buyer_id=buyer,
        order_id=order,
        total=Money(amount, Currency.EUR),
        lines=[PaymentLine(IDS.next_id(3), "SELLER-111", Money(amount, Currency.EUR))],
        now=at,
    )


@pytest.fixture(params=["fake", "postgres"])
async def uow(request: pytest.FixtureRequest, fresh_database: str) -> AsyncIterator[Callable[[], Any]]:
    if request.param == "fake":
        db = FakeDatabase(FixedClock(datetime.now(UTC)))
        yield lambda: FakePaymentsUnitOfWork(db)
        return
    pool = await create_pool(fresh_database, min_size=1, max_size=4, application_name="contract")
    yield lambda: PgPaymentsUnitOfWork(pool)
    await pool.close()


async def add(uow: Callable[[], Any], payment: Payment, key: str | None = None) -> Payment | None:
    async with uow() as tx:
        existing = await tx.payments.add(payment, idempotency_key=key, trace_id="t" * 32, traceparent=None)
        await tx.commit()
    return existing


async def test_add_then_get_round_trips(uow: Callable[[], Any]) -> None:
    p = a_payment()
    assert await add(uow, p) is None
    async with uow() as tx:
        got = await tx.payments.get(p.payment_id)
    assert got is not None
    assert (got.payment_id, got.buyer_id, got.order_id, got.total, got.status) == (
        p.payment_id, "B", "O", Money(3000, Currency.EUR), PaymentStatus.PENDING_AUTH,
    )
    assert got.lines == p.lines and got.created_at == T0


async def test_business_key_finds_the_existing_payment(uow: Callable[[], Any]) -> None:
    first = a_payment(buyer="B1")
    await add(uow, first)
    existing = await add(uow, a_payment(buyer="B1"))
    assert existing is not None and existing.payment_id == first.payment_id
    assert await add(uow, a_payment(buyer="B1", amount=3001)) is None  # another total: another payment


async def test_idempotency_key_finds_its_payment_and_bypasses_the_business_key(uow: Callable[[], Any]) -> None:
    first = a_payment(buyer="B2")
    await add(uow, first, key="c\x1fk1")
    existing = await add(uow, a_payment(buyer="B2"), key="c\x1fk1")
    assert existing is not None and existing.payment_id == first.payment_id
    assert await add(uow, a_payment(buyer="B2"), key="c\x1fk2") is None
    assert await add(uow, a_payment(buyer="B2")) is None  # the header-less one is separate


async def test_authorization_is_saved_only_from_pending_auth(uow: Callable[[], Any]) -> None:
    p = a_payment(buyer="B3")
    await add(uow, p)
    p.authorize(T0 + timedelta(seconds=1))
    async with uow() as tx:
        assert await tx.payments.save_authorization(p) is True
        await tx.commit()
    late = a_payment(buyer="B3")
    late.payment_id = p.payment_id
    late.decline(T0)
    async with uow() as tx:
        assert await tx.payments.save_authorization(late) is False
        assert (await tx.payments.get(p.payment_id)).status is PaymentStatus.AUTHORIZED
        await tx.commit()


async def test_uncommitted_work_is_not_kept(uow: Callable[[], Any]) -> None:
    p = a_payment(buyer="B4")
    async with uow() as tx:
        await tx.payments.add(p, idempotency_key=None, trace_id="t", traceparent=None)
    async with uow() as tx:
        assert await tx.payments.get(p.payment_id) is None


async def test_pending_authorizations_are_claimed_once_per_lease(uow: Callable[[], Any]) -> None:
    old = a_payment(buyer="B5", at=datetime.now(UTC) - timedelta(minutes=5))
    fresh = a_payment(buyer="B6", at=datetime.now(UTC) + timedelta(minutes=5))
    await add(uow, old)
    await add(uow, fresh)
    async with uow() as tx:
        claimed = await tx.payments.claim_pending_authorizations(created_before=datetime.now(UTC), lease_ms=60_000, limit=10)
        await tx.commit()
    assert [c.payment.payment_id for c in claimed] == [old.payment_id]
    assert claimed[0].trace_id == "t" * 32
    async with uow() as tx:
        again = await tx.payments.claim_pending_authorizations(created_before=datetime.now(UTC), lease_ms=60_000, limit=10)
        await tx.commit()
    assert again == []


def fp(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


async def test_idempotency_store_lifecycle(uow: Callable[[], Any]) -> None:
    async with uow() as tx:
        first = await tx.idempotency.begin(scope="s", key="k", fingerprint=fp("a"), lease_ms=60_000)
        await tx.commit()
    assert isinstance(first, Acquired)
    async with uow() as tx:
        assert isinstance(await tx.idempotency.begin(scope="s", key="k", fingerprint=fp("a"), lease_ms=60_000), KeyInProgress)
        assert isinstance(await tx.idempotency.begin(scope="s", key="k", fingerprint=fp("b"), lease_ms=60_000), KeyMismatch)
        assert isinstance(await tx.idempotency.begin(scope="other", key="k", fingerprint=fp("b"), lease_ms=60_000), Acquired)
        await tx.idempotency.complete(scope="s", key="k", token="not-the-token", status=500, body=b"x")
        await tx.idempotency.complete(scope="s", key="k", token=first.token, status=202, body=b'{"a":1}')
        await tx.commit()
    async with uow() as tx:
        assert await tx.idempotency.begin(scope="s", key="k", fingerprint=fp("a"), lease_ms=60_000) == Replay(202, b'{"a":1}')


async def test_an_expired_lease_can_be_taken_over_and_a_released_key_reused(uow: Callable[[], Any]) -> None:
    async with uow() as tx:
        first = await tx.idempotency.begin(scope="s", key="k2", fingerprint=fp("a"), lease_ms=0)
        await tx.commit()
    async with uow() as tx:
        second = await tx.idempotency.begin(scope="s", key="k2", fingerprint=fp("a"), lease_ms=60_000)
        await tx.commit()
    assert isinstance(first, Acquired) and isinstance(second, Acquired) and second.token != first.token
    async with uow() as tx:
        await tx.idempotency.complete(scope="s", key="k2", token=first.token, status=202, body=b"stale")
        await tx.idempotency.release(scope="s", key="k2", token=second.token)
        await tx.commit()
    async with uow() as tx:
        assert isinstance(await tx.idempotency.begin(scope="s", key="k2", fingerprint=fp("b"), lease_ms=1000), Acquired)
