"""The treasury's stores — payouts, settlements, their reads — behave alike in the fake (unit
tests) and in Postgres: the exact available balance, guarded state changes, claims of due bank
calls, the journals a settlement covers, and nothing kept of a unit of work that did not commit.
Expected values are written out by hand."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from marketplace_pay.infra.db import create_pool
from marketplace_pay.ledger.adapters.pg_treasury import PgTreasuryReads, PgTreasuryUnitOfWork
from marketplace_pay.ledger.application.ports import Keyed, NewSettlement, PayableSeller, Unsettled
from marketplace_pay.ledger.application.recording import JournalRef
from marketplace_pay.ledger.domain import journal as journals
from marketplace_pay.ledger.domain.accounts import AccountStatus
from marketplace_pay.ledger.domain.payout import BankResult, Payout, PayoutStatus
from marketplace_pay.shared.clock import FixedClock
from marketplace_pay.shared.money import Currency, Money
from tests.fakes import FakeDatabase, FakeSellerStore, FakeTreasuryReads, FakeTreasuryUnitOfWork

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
EUR = Currency.EUR
M1 = "MERCHANT_PAYABLE.SELLER-111.EUR"
REF = JournalRef(None, None, "SELLER-111", "contract")


def eur(minor: int) -> Money:
    return Money(minor, EUR)


@dataclass
class Treasury:
    kind: str
    uow: Callable[[], Any]
    reads: Any


@pytest.fixture(params=["fake", "postgres"])
async def treasury(request: pytest.FixtureRequest, fresh_database: str) -> AsyncIterator[Treasury]:
    if request.param == "fake":
        db = FakeDatabase(FixedClock(T0))
        sellers = FakeSellerStore(FixedClock(T0))
        yield Treasury("fake", lambda: FakeTreasuryUnitOfWork(db, sellers), FakeTreasuryReads(db, sellers))
        return
    pool = await create_pool(fresh_database, min_size=1, max_size=4, application_name="contract")
    try:
        yield Treasury("postgres", lambda: PgTreasuryUnitOfWork(pool), PgTreasuryReads(pool))
    finally:
        await pool.close()


async def captured(t: Treasury, order_id: int, amount: int, seller: str = "SELLER-111") -> None:
    async with t.uow() as tx:
        await tx.journals.add_all([(journals.capture(order_id, seller, eur(amount)), REF)])
        await tx.commit()


async def new_payout(t: Treasury, amount: int, *, key: str | None = None, at: datetime = T0) -> Payout:
    async with t.uow() as tx:
        payout = Payout.create(payout_id=await tx.payouts.next_id(), seller_id="SELLER-111", amount=eur(amount), now=at)
        await tx.journals.add_all([(journals.payout(payout.payout_id, "SELLER-111", eur(amount)), REF)])
        await tx.payouts.add(
            payout,
            account_code=M1,
            keyed=Keyed("client", key, b"fp" if key else None),
            response=(202, b"{}") if key else None,
            trace_id="b" * 32,
            traceparent=None,
        )
        await tx.commit()
    return payout


async def test_the_seller_row_and_the_exact_available_balance(treasury: Treasury) -> None:
    async with treasury.uow() as tx:
        assert await tx.payouts.lock_seller("SELLER-111") == PayableSeller("SELLER-111", M1, EUR, AccountStatus.ACTIVE)
        assert await tx.payouts.lock_seller("SELLER-NONE") is None
        assert await tx.payouts.available_minor(M1) == 0
    await captured(treasury, 1, 1000)
    await captured(treasury, 2, 500)
    await new_payout(treasury, 400)
    async with treasury.uow() as tx:
        assert await tx.payouts.available_minor(M1) == 1100  # 1000 + 500 − 400, committed postings
        await tx.journals.add_all([(journals.payout(99, "SELLER-111", eur(100)), REF)])
        assert await tx.payouts.available_minor(M1) == 1000  # and this transaction's own
    async with treasury.uow() as tx:  # the one above did not commit
        assert await tx.payouts.available_minor(M1) == 1100
    assert await treasury.reads.payable_sellers(1100) == ["SELLER-111"]
    assert await treasury.reads.payable_sellers(1101) == []


async def test_payouts_by_key_guarded_saves_and_reads(treasury: Treasury) -> None:
    await captured(treasury, 1, 5000)
    first = await new_payout(treasury, 300, key="k1")
    second = await new_payout(treasury, 200)
    assert second.payout_id > first.payout_id
    async with treasury.uow() as tx:
        found = await tx.payouts.by_key("client", "k1")
        assert found is not None and (found.payout.payout_id, found.fingerprint, found.response) == (
            first.payout_id,
            b"fp",
            (202, b"{}"),
        )
        assert await tx.payouts.by_key("other-client", "k1") is None
        assert await tx.payouts.lock_key("client", "k1")

    before = first.state()
    first.apply(BankResult.RETRYABLE, attempt=0, now=T0 + timedelta(seconds=1), max_retries=5, retry_delay_ms=1000)
    async with treasury.uow() as tx:
        assert await tx.payouts.save(first, before=(PayoutStatus.PENDING, 1)) is False  # not in that state
        assert await tx.payouts.save(first, before=before) is True
        await tx.commit()
    async with treasury.uow() as tx:
        assert await tx.payouts.save(first, before=before) is False  # a repeat: the state moved on
    opened = await treasury.reads.payouts([first.payout_id, second.payout_id, 12345])
    assert sorted(opened) == [first.payout_id, second.payout_id]
    got = opened[first.payout_id]
    assert (got.payout.attempt, got.payout.bank_key_attempt, got.payout.bank_key, got.trace_id) == (
        1,
        1,
        f"{first.public_id}:1",
        "b" * 32,
    )
    view = await treasury.reads.payout(first.payout_id)
    assert view is not None and (view.payout_id, view.amount.quantity, view.status) == (first.public_id, 300, "PENDING")
    assert await treasury.reads.payout(12345) is None
    page, more = await treasury.reads.payouts_of("SELLER-111", limit=1, before_payout_id=None)
    assert [v.payout_id for v in page] == [second.public_id] and more
    page, more = await treasury.reads.payouts_of("SELLER-111", limit=1, before_payout_id=second.payout_id)
    assert [v.payout_id for v in page] == [first.public_id] and not more


async def test_claims_of_due_and_stuck_payouts(treasury: Treasury) -> None:
    await captured(treasury, 1, 5000)
    due = await new_payout(treasury, 100)
    waiting = await new_payout(treasury, 200)
    stuck = await new_payout(treasury, 300, at=T0 - timedelta(minutes=10))
    fresh = await new_payout(treasury, 400)  # just created: its first call is on its way
    for p, delay_ms in ((due, 1000), (waiting, 60_000)):
        before = p.state()
        p.apply(BankResult.UNKNOWN, attempt=0, now=T0, max_retries=5, retry_delay_ms=delay_ms)
        async with treasury.uow() as tx:
            assert await tx.payouts.save(p, before=before)
            await tx.commit()
    now = T0 + timedelta(seconds=5)
    async with treasury.uow() as tx:
        claimed = await tx.payouts.claim_due(now=now, stuck_before=T0 - timedelta(minutes=2), limit=10)
        await tx.commit()
    assert sorted((c.payout.payout_id, c.payout.attempt) for c in claimed) == [(due.payout_id, 1), (stuck.payout_id, 0)]
    async with treasury.uow() as tx:  # dispatched: not claimed again
        assert await tx.payouts.claim_due(now=now, stuck_before=T0 - timedelta(minutes=2), limit=10) == []
    assert fresh.payout_id not in {c.payout.payout_id for c in claimed}


async def test_settlement_covers_captures_and_refunds_once(treasury: Treasury) -> None:
    await captured(treasury, 1, 1000)
    await captured(treasury, 2, 500)
    async with treasury.uow() as tx:
        await tx.journals.add_all(
            [(journals.refund(3, "SELLER-111", eur(200)), REF), (journals.payout(4, "SELLER-111", eur(100)), REF)]
        )
        await tx.commit()
    async with treasury.uow() as tx:
        await tx.settlements.lock()
        unsettled = sorted(await tx.settlements.unsettled())
        assert unsettled == [
            Unsettled("CAPTURE:1", EUR, 1000),
            Unsettled("CAPTURE:2", EUR, 500),
            Unsettled("REFUND:3", EUR, -200),
        ]
        settlement_id = await tx.settlements.next_id()
        await tx.journals.add_all([(journals.settlement(settlement_id, eur(1300), 30), REF)])
        await tx.settlements.add(
            NewSettlement(settlement_id, EUR, 1300, 4, 1296, 30, ["CAPTURE:1", "CAPTURE:2", "REFUND:3"])
        )
        await tx.commit()
    async with treasury.uow() as tx:
        assert await tx.settlements.unsettled() == []  # neither the settled journals nor the SETTLEMENT itself
        with pytest.raises(Exception):  # noqa: B017, PT011 - the fake and PostgreSQL refuse it each their way
            await tx.settlements.add(
                NewSettlement(await tx.settlements.next_id(), EUR, 1000, 3, 997, 30, ["CAPTURE:1"])
            )
    views, more = await treasury.reads.settlements(limit=5, before_settlement_id=None)
    assert not more and [
        (
            v.journal_entry_id,
            v.currency,
            v.gross.quantity,
            v.fee.quantity,
            v.net.quantity,
            v.fee_bps,
            v.journals_covered,
        )
        for v in views
    ] == [(f"SETTLEMENT:{settlement_id}", "EUR", 1300, 4, 1296, 30, 3)]
