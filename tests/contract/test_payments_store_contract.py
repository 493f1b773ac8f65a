"""One suite, two implementations of the pay-in store: the fake (unit tests) and Postgres."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from marketplace_pay.infra.db import create_pool
from marketplace_pay.payments.adapters.pg_payments import PgPaymentStore
from marketplace_pay.payments.application.ports import Keyed
from marketplace_pay.payments.domain.payment import Payment, PaymentLine, PaymentStatus
from marketplace_pay.shared.clock import FixedClock
from marketplace_pay.shared.envelope import envelope
from marketplace_pay.shared.money import Currency, Money
from tests.fakes import FakeDatabase, FakeIds, FakePaymentStore

IDS = FakeIds()
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
EUR3000 = Money(3000, Currency.EUR)


def a_payment(buyer: str = "B", order: str = "O", amount: int = 3000, at: datetime = T0) -> Payment:
    return Payment.create(
        payment_id=IDS.next_id(0),
        buyer_id=buyer,
        order_id=order,
        total=Money(amount, Currency.EUR),
        lines=[PaymentLine(IDS.next_id(3), "SELLER-111", Money(amount, Currency.EUR))],
        now=at,
    )


def fp(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


@dataclass
class Subject:
    store: Any
    outbox: Any  # () -> list of event ids written


@pytest.fixture(params=["fake", "postgres"])
async def subject(request: pytest.FixtureRequest, fresh_database: str) -> AsyncIterator[Subject]:
    if request.param == "fake":
        db = FakeDatabase(FixedClock(datetime.now(UTC)))

        async def fake_outbox() -> list[str]:
            return [e.event_id for e in db.tables.outbox]

        yield Subject(FakePaymentStore(db), fake_outbox)
        return
    pool = await create_pool(fresh_database, min_size=1, max_size=4, application_name="contract")

    async def pg_outbox() -> list[str]:
        return [r["event_id"] for r in await pool.fetch("SELECT event_id FROM outbox ORDER BY tx, id")]

    yield Subject(PgPaymentStore(pool), pg_outbox)
    await pool.close()


async def add(s: Subject, payment: Payment, keyed: Keyed | None = None) -> bool:
    return await s.store.add(payment, keyed=keyed or Keyed("c"), trace_id="t" * 32, traceparent=None)


async def test_add_then_get_round_trips(subject: Subject) -> None:
    p = a_payment()
    assert await add(subject, p) is True
    got = await subject.store.get(p.payment_id)
    assert got is not None
    assert (got.payment_id, got.buyer_id, got.order_id, got.total, got.status) == (
        p.payment_id,
        "B",
        "O",
        EUR3000,
        PaymentStatus.PENDING_AUTH,
    )
    assert got.lines == p.lines and got.created_at == T0


async def test_the_business_key_belongs_to_the_client(subject: Subject) -> None:
    first = a_payment(buyer="B1")
    assert await add(subject, first, Keyed("shop-a"))
    assert not await add(subject, a_payment(buyer="B1"), Keyed("shop-a"))
    found = await subject.store.find(Keyed("shop-a"), buyer_id="B1", order_id="O", total=EUR3000)
    assert found is not None and found.payment.payment_id == first.payment_id and found.response is None
    assert await add(subject, a_payment(buyer="B1"), Keyed("shop-b"))  # another client: another payment
    assert await add(subject, a_payment(buyer="B1", amount=3001), Keyed("shop-a"))  # another total too


async def test_the_idempotency_key_belongs_to_the_client_and_bypasses_the_business_key(subject: Subject) -> None:
    first = a_payment(buyer="B2")
    assert await add(subject, first, Keyed("c", "k1", fp("a")))
    assert not await add(subject, a_payment(buyer="B9"), Keyed("c", "k1", fp("b")))
    found = await subject.store.find(Keyed("c", "k1", fp("b")), buyer_id="B9", order_id="O", total=EUR3000)
    assert found is not None and found.payment.payment_id == first.payment_id
    assert found.fingerprint == fp("a")  # what the key was first used with, for as long as the payment exists
    assert await add(subject, a_payment(buyer="B2"), Keyed("c", "k2", fp("a")))
    assert await add(subject, a_payment(buyer="B2"), Keyed("other", "k1", fp("a")))
    assert await add(subject, a_payment(buyer="B2"), Keyed("c"))  # the header-less one is separate


async def test_concurrent_adds_under_one_key_insert_once(subject: Subject) -> None:
    payments = [a_payment(buyer="B7") for _ in range(10)]
    results = await asyncio.gather(*(add(subject, p, Keyed("c", "same", fp("x"))) for p in payments))
    assert sorted(results) == [False] * 9 + [True]


async def test_authorization_is_recorded_with_its_events_only_from_pending_auth(subject: Subject) -> None:
    p = a_payment(buyer="B3")
    await add(subject, p, Keyed("c", "k3", fp("a")))
    p.authorize(T0 + timedelta(seconds=1))
    events = [envelope(e, aggregate_id=e.payment_id, timestamp=T0, trace_id="t" * 32) for e in p.pull_events()]
    assert await subject.store.record_authorization(p, events, (202, b'{"first":true}')) is True
    late = await subject.store.get(p.payment_id)
    assert late is not None and late.status is PaymentStatus.AUTHORIZED
    late.status = PaymentStatus.PENDING_AUTH
    late.decline(T0 + timedelta(seconds=2))
    assert await subject.store.record_authorization(late, [], (402, b"late")) is False
    assert (await subject.store.get(p.payment_id)).status is PaymentStatus.AUTHORIZED
    assert await subject.outbox() == [f"{p.public_id}:authorized"]
    found = await subject.store.find(Keyed("c", "k3"), buyer_id="B3", order_id="O", total=EUR3000)
    assert found is not None and found.response == (202, b'{"first":true}')


async def test_a_kept_response_is_the_first_one(subject: Subject) -> None:
    p = a_payment(buyer="B8")
    await add(subject, p, Keyed("c", "k8", fp("a")))
    await subject.store.keep_response(p.payment_id, (202, b"first"))
    await subject.store.keep_response(p.payment_id, (202, b"second"))
    found = await subject.store.find(Keyed("c", "k8"), buyer_id="B8", order_id="O", total=EUR3000)
    assert found is not None and found.response == (202, b"first")


async def test_pending_authorizations_are_claimed_once_per_lease(subject: Subject) -> None:
    old = a_payment(buyer="B5", at=datetime.now(UTC) - timedelta(minutes=5))
    fresh = a_payment(buyer="B6", at=datetime.now(UTC) + timedelta(minutes=5))
    await add(subject, old)
    await add(subject, fresh)
    claimed = await subject.store.claim_pending_authorizations(
        created_before=datetime.now(UTC), lease_ms=60_000, limit=10
    )
    assert [c.payment.payment_id for c in claimed] == [old.payment_id]
    assert claimed[0].trace_id == "t" * 32
    again = await subject.store.claim_pending_authorizations(
        created_before=datetime.now(UTC), lease_ms=60_000, limit=10
    )
    assert again == []
