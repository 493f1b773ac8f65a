"""The journal repository and its unit of work: the fake (unit tests) and Postgres behave alike.

A journal is written once, by id; its postings come back as recorded; the journals of one
transaction share its id; nothing of a unit of work that did not commit is kept, and its events
reach the outbox only with its commit."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

import pytest

from marketplace_pay.infra.db import create_pool
from marketplace_pay.ledger.adapters.postgres import PgLedgerUnitOfWork
from marketplace_pay.ledger.application.recording import JournalRef, StoredJournal
from marketplace_pay.ledger.domain import journal as journals
from marketplace_pay.ledger.domain.journal import Direction, JournalEntry
from marketplace_pay.shared.clock import FixedClock
from marketplace_pay.shared.envelope import Envelope, Event, envelope
from marketplace_pay.shared.money import Currency, Money
from tests.fakes import FakeDatabase, FakeLedgerUnitOfWork

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
D, C = Direction.DEBIT, Direction.CREDIT


def eur(minor: int) -> Money:
    return Money(minor, Currency.EUR)


class Noted(Event, frozen=True):
    event_type: ClassVar[str] = "contract_noted"
    topic: ClassVar[str] = "contract_noted_topic"

    n: int

    def event_id(self) -> str:
        return f"noted:{self.n}"

    def partition_key(self) -> str:
        return "noted"


def noted(n: int) -> Envelope[Noted]:
    return envelope(Noted(n=n), aggregate_id="noted", timestamp=T0, trace_id="0" * 32)


@dataclass
class Ledger:
    kind: str
    uow: Callable[[], Any]
    counts: Callable[[], Awaitable[tuple[int, int]]]  # (journals, postings) committed
    outbox: Callable[[], Awaitable[list[str]]]  # event ids committed, in write order


@pytest.fixture(params=["fake", "postgres"])
async def ledger(request: pytest.FixtureRequest, fresh_database: str) -> AsyncIterator[Ledger]:
    if request.param == "fake":
        db = FakeDatabase(FixedClock(T0))

        async def fake_counts() -> tuple[int, int]:
            stored = [s for s, _ in db.tables.journals.values()]
            return len(stored), sum(len(s.journal.postings) for s in stored)

        async def fake_outbox() -> list[str]:
            return [e.event_id for e in db.tables.outbox]

        yield Ledger("fake", lambda: FakeLedgerUnitOfWork(db), fake_counts, fake_outbox)
        return
    pool = await create_pool(fresh_database, min_size=1, max_size=4, application_name="contract")

    async def pg_counts() -> tuple[int, int]:
        row = await pool.fetchrow(
            "SELECT (SELECT count(*) FROM journal_entries) AS j, (SELECT count(*) FROM postings) AS p"
        )
        return row["j"], row["p"]

    async def pg_outbox() -> list[str]:
        return [r["event_id"] for r in await pool.fetch("SELECT event_id FROM outbox ORDER BY tx, id")]

    yield Ledger("postgres", lambda: PgLedgerUnitOfWork(pool), pg_counts, pg_outbox)
    await pool.close()


def ref(payment_id: int, order_id: int | None = None) -> JournalRef:
    return JournalRef(payment_id, order_id, "SELLER-111" if order_id else None, f"evt:{payment_id}:{order_id}")


async def record(ledger: Ledger, *items: tuple[JournalEntry, JournalRef]) -> dict[str, StoredJournal]:
    async with ledger.uow() as tx:
        stored = await tx.journals.add_all(list(items))
        await tx.commit()
    return stored


def lines(stored: StoredJournal) -> list[tuple[str, Direction, int, int]]:
    return [(p.account.code, p.direction, p.amount_minor, p.signed_amount_minor) for p in stored.journal.postings]


async def test_a_journal_is_written_once_by_id(ledger: Ledger) -> None:
    hold = journals.auth_hold(1, eur(1000))
    first = (await record(ledger, (hold, ref(1))))["AUTH:1"]
    assert first.journal == hold
    assert await ledger.counts() == (1, 2)
    # the same fact again — even with other content under its id — finds the journal as recorded
    again = await record(ledger, (journals.auth_hold(1, eur(2500)), ref(1)))
    assert list(again) == ["AUTH:1"]
    assert again["AUTH:1"] == first  # same journal, seq, tx and created_at
    assert again["AUTH:1"].journal.postings[0].amount_minor == 1000
    assert await ledger.counts() == (1, 2)  # nothing written


async def test_within_one_unit_of_work_a_repeat_finds_the_journal_written_earlier_in_it(ledger: Ledger) -> None:
    hold = journals.auth_hold(2, eur(300))
    async with ledger.uow() as tx:
        first = (await tx.journals.add_all([(hold, ref(2))]))["AUTH:2"]
        second = (await tx.journals.add_all([(hold, ref(2)), (hold, ref(2))]))["AUTH:2"]
        assert second == first
        await tx.commit()
    assert await ledger.counts() == (1, 2)


async def test_the_first_of_two_journals_with_one_id_in_one_call_is_the_one_written(ledger: Ledger) -> None:
    stored = await record(
        ledger, (journals.auth_hold(11, eur(100)), ref(11)), (journals.auth_hold(11, eur(200)), ref(11))
    )
    assert [p.amount_minor for p in stored["AUTH:11"].journal.postings] == [100, 100]
    again = await record(ledger, (journals.auth_hold(11, eur(300)), ref(11)))
    assert [p.amount_minor for p in again["AUTH:11"].journal.postings] == [100, 100]
    assert await ledger.counts() == (1, 2)


async def test_postings_come_back_in_recording_order_with_their_signed_amounts(ledger: Ledger) -> None:
    fee = journals.commission(71, "SELLER-111", eur(1000), 500)  # 5 % of 1000
    assert fee is not None
    items = [
        (journals.auth_hold(7, eur(1000)), ref(7)),
        (journals.capture(71, "SELLER-111", eur(1000)), ref(7, 71)),
        (fee, ref(7, 71)),
    ]
    await record(ledger, *items)
    # a repeat returns every journal as stored, read back from the store
    stored = await record(ledger, *items)
    assert lines(stored["AUTH:7"]) == [
        ("AUTH_RECEIVABLE.GLOBAL.EUR", D, 1000, 1000),
        ("AUTH_LIABILITY.GLOBAL.EUR", C, 1000, 1000),
    ]
    assert lines(stored["CAPTURE:71"]) == [
        ("AUTH_RECEIVABLE.GLOBAL.EUR", C, 1000, -1000),
        ("AUTH_LIABILITY.GLOBAL.EUR", D, 1000, -1000),
        ("PSP_RECEIVABLES.GLOBAL.EUR", D, 1000, 1000),
        ("MERCHANT_PAYABLE.SELLER-111.EUR", C, 1000, 1000),
    ]
    assert lines(stored["COMMISSION:71"]) == [
        ("MERCHANT_PAYABLE.SELLER-111.EUR", D, 50, -50),
        ("PLATFORM_COMMISSION_REVENUE.GLOBAL.EUR", C, 50, 50),
    ]
    assert (stored["CAPTURE:71"].journal.type, stored["CAPTURE:71"].journal.name) == (
        journals.JournalType.CAPTURE,
        "Payment Capture",
    )
    assert stored["COMMISSION:71"].journal.currency is Currency.EUR
    assert await ledger.counts() == (3, 8)


async def test_journals_of_one_call_get_increasing_seqs_and_one_transaction_id(ledger: Ledger) -> None:
    stored = await record(
        ledger,
        (journals.auth_hold(3, eur(500)), ref(3)),
        (journals.capture(31, "SELLER-111", eur(200)), ref(3, 31)),
        (journals.auth_release(32, eur(300)), ref(3, 32)),
    )
    ids = ["AUTH:3", "CAPTURE:31", "AUTH_RELEASE:32"]
    assert sorted(stored) == sorted(ids)
    assert [stored[i].seq for i in ids] == [1, 2, 3]  # a fresh ledger: in the order given
    assert len({stored[i].tx for i in ids}) == 1
    assert len({stored[i].created_at for i in ids}) == 1
    later = (await record(ledger, (journals.auth_hold(4, eur(100)), ref(4))))["AUTH:4"]
    assert later.seq == 4
    assert later.tx > stored["AUTH:3"].tx  # a later transaction, a larger id
    assert later.created_at >= stored["AUTH:3"].created_at


async def test_two_calls_in_one_unit_of_work_share_its_transaction_id(ledger: Ledger) -> None:
    async with ledger.uow() as tx:
        a = (await tx.journals.add_all([(journals.auth_hold(5, eur(10)), ref(5))]))["AUTH:5"]
        b = (await tx.journals.add_all([(journals.auth_hold(6, eur(20)), ref(6))]))["AUTH:6"]
        await tx.commit()
    assert (a.seq, b.seq) == (1, 2)
    assert a.tx == b.tx


async def test_a_unit_of_work_left_without_commit_leaves_nothing(ledger: Ledger) -> None:
    async with ledger.uow() as tx:
        await tx.journals.add_all([(journals.auth_hold(8, eur(800)), ref(8))])
        tx.publish(noted(1))
    with pytest.raises(RuntimeError, match="boom"):
        async with ledger.uow() as tx:
            await tx.journals.add_all([(journals.auth_hold(9, eur(900)), ref(9))])
            tx.publish(noted(2))
            raise RuntimeError("boom")
    assert await ledger.counts() == (0, 0)
    assert await ledger.outbox() == []
    # the id is free again: the journal is written now, with its own content
    stored = (await record(ledger, (journals.auth_hold(8, eur(801)), ref(8))))["AUTH:8"]
    assert stored.journal.postings[0].amount_minor == 801
    assert stored.seq >= 1  # rolled-back journals may have used seqs (Postgres): increasing, not gapless
    assert await ledger.counts() == (1, 2)


async def test_events_published_in_a_unit_of_work_are_written_only_on_commit(ledger: Ledger) -> None:
    async with ledger.uow() as tx:
        await tx.journals.add_all([(journals.auth_hold(10, eur(100)), ref(10))])
        tx.publish(noted(1))
        tx.publish(noted(2), noted(3))
        assert await ledger.outbox() == []  # not before the commit
        assert await ledger.counts() == (0, 0)
        await tx.commit()
    assert await ledger.outbox() == ["noted:1", "noted:2", "noted:3"]  # in publish order
    assert await ledger.counts() == (1, 2)
    async with ledger.uow() as tx:  # a unit of work that only publishes
        tx.publish(noted(4))
        await tx.commit()
    assert await ledger.outbox() == ["noted:1", "noted:2", "noted:3", "noted:4"]
