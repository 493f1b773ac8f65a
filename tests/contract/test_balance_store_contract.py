"""The balance store: the fake (unit tests) and Postgres fold, read and check alike.

Journals are recorded through each side's own unit of work first. The fake folds up to every
commit so far; Postgres up to the oldest transaction still running. With nothing else running
the two are the same horizon, which is what these cases rely on (see `fold_past`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from marketplace_pay.balances.adapters.postgres import PgBalanceStore
from marketplace_pay.balances.application.ports import Folded, TrialBalance
from marketplace_pay.balances.domain.balance import Check, Drift, Entry
from marketplace_pay.infra.db import create_pool
from marketplace_pay.ledger.adapters.postgres import PgLedgerUnitOfWork, PgSellerStore
from marketplace_pay.ledger.application.directory import OnboardSeller
from marketplace_pay.ledger.application.recording import JournalRef, StoredJournal
from marketplace_pay.ledger.domain import journal as journals
from marketplace_pay.ledger.domain.journal import JournalEntry
from marketplace_pay.shared.clock import FixedClock
from marketplace_pay.shared.money import Currency, Money
from tests.fakes import FakeBalanceStore, FakeDatabase, FakeLedgerUnitOfWork, FakeSellerStore

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

AR = "AUTH_RECEIVABLE.GLOBAL.EUR"
AL = "AUTH_LIABILITY.GLOBAL.EUR"
PSP = "PSP_RECEIVABLES.GLOBAL.EUR"
M1 = "MERCHANT_PAYABLE.SELLER-111.EUR"
REV = "PLATFORM_COMMISSION_REVENUE.GLOBAL.EUR"
CASH = "PLATFORM_CASH.GLOBAL.EUR"  # seeded, never posted to here
M2 = "MERCHANT_PAYABLE.SELLER-222.EUR"  # a seeded seller without postings
FIRST_HORIZON = 2  # the horizon of an empty ledger, before any fold


def eur(minor: int) -> Money:
    return Money(minor, Currency.EUR)


@dataclass
class Books:
    uow: Callable[[], Any]
    store: Any
    set_snapshot: Callable[[str, int], Awaitable[None]]  # break a snapshot behind the store's back
    sellers: Any  # the account directory the store's accounts come from


@pytest.fixture(params=["fake", "postgres"])
async def books(request: pytest.FixtureRequest, fresh_database: str) -> AsyncIterator[Books]:
    if request.param == "fake":
        db = FakeDatabase(FixedClock(T0))
        sellers = FakeSellerStore(db.clock)
        store = FakeBalanceStore(db, sellers=sellers)

        async def fake_set(code: str, balance: int) -> None:
            store.balances[code] = balance

        yield Books(lambda: FakeLedgerUnitOfWork(db), store, fake_set, sellers)
        return
    pool = await create_pool(fresh_database, min_size=1, max_size=4, application_name="contract")

    async def pg_set(code: str, balance: int) -> None:
        await pool.execute(
            """INSERT INTO account_balances (account_code, balance_minor) VALUES ($1, $2)
               ON CONFLICT (account_code) DO UPDATE SET balance_minor = EXCLUDED.balance_minor""",
            code,
            balance,
        )

    yield Books(lambda: PgLedgerUnitOfWork(pool), PgBalanceStore(pool), pg_set, PgSellerStore(pool))
    await pool.close()


async def record(books: Books, *entries: JournalEntry | None) -> dict[str, StoredJournal]:
    async with books.uow() as tx:
        stored = await tx.journals.add_all([(j, JournalRef(1, None, None, "evt")) for j in entries if j is not None])
        await tx.commit()
    return stored


async def a_sale(books: Books) -> dict[str, StoredJournal]:
    """Two transactions: a payment of 1000 held, captured for SELLER-111 with a 5 % fee (seqs
    1-3); another of 700 held (seq 4)."""
    first = await record(
        books,
        journals.auth_hold(1, eur(1000)),
        journals.capture(11, "SELLER-111", eur(1000)),
        journals.commission(11, "SELLER-111", eur(1000), 500),
    )
    return first | await record(books, journals.auth_hold(2, eur(700)))


# Σ signed postings of `a_sale`, per account, worked out by hand
SALE = {AR: 1000 - 1000 + 700, AL: 1000 - 1000 + 700, PSP: 1000, M1: 1000 - 50, REV: 50}


async def fold_past(books: Books, tx: int) -> Folded:
    """fold() until the horizon is past `tx`; the accounts of every call. Nothing else runs here,
    so one call does it; but the Postgres horizon is server-wide, and a transaction running in
    another database of the same server (a parallel test run) holds it back until it ends."""
    accounts: set[str] = set()
    deadline = time.monotonic() + 15
    while True:
        folded = await books.store.fold()
        assert folded is not None  # nobody else folds this database
        accounts |= set(folded.accounts)
        if folded.horizon > tx:
            return Folded(folded.horizon, sorted(accounts))
        assert time.monotonic() < deadline, f"the horizon stays at {folded.horizon}, not past {tx}"
        await asyncio.sleep(0.05)


async def balances(books: Books, *codes: str) -> dict[str, int]:
    return {code: (await books.store.snapshot(code)).balance_minor for code in codes}


async def test_the_first_horizon_is_below_every_journal(books: Books) -> None:
    assert await books.store.horizon() == FIRST_HORIZON
    stored = await a_sale(books)
    assert all(s.tx >= FIRST_HORIZON for s in stored.values())
    assert await books.store.horizon() == FIRST_HORIZON  # recording does not fold


async def test_a_fold_moves_the_horizon_past_committed_journals_and_sums_postings_per_account(books: Books) -> None:
    stored = await a_sale(books)
    last_tx = stored["AUTH:2"].tx
    folded = await fold_past(books, last_tx)
    assert folded.accounts == sorted([AR, AL, PSP, M1, REV])
    assert await books.store.horizon() == folded.horizon
    assert await balances(books, AR, AL, PSP, M1, REV, CASH) == {AR: 700, AL: 700, PSP: 1000, M1: 950, REV: 50, CASH: 0}

    nothing = await books.store.fold()  # nothing new: no account changes
    assert nothing is not None and nothing.accounts == [] and nothing.horizon >= folded.horizon
    assert await balances(books, AR, AL, PSP, M1, REV) == SALE

    release = (await record(books, journals.auth_release(12, eur(300))))["AUTH_RELEASE:12"]
    assert release.tx >= folded.horizon  # committed after the fold: above its horizon
    again = await fold_past(books, release.tx)
    assert again.accounts == sorted([AR, AL])  # only what the new journal touched
    assert await balances(books, AR, AL, PSP, M1, REV) == {AR: 400, AL: 400, PSP: 1000, M1: 950, REV: 50}


async def test_snapshots_of_known_and_unknown_accounts(books: Books) -> None:
    await a_sale(books)
    before = await books.store.snapshot(PSP)
    assert (before.account_code, before.currency, before.balance_minor, before.horizon) == (
        PSP,
        "EUR",
        0,
        FIRST_HORIZON,
    )
    assert (before.unfolded_minor, before.updated_at) == (0, None)  # never folded
    unfolded = await books.store.snapshot(PSP, with_unfolded=True)
    assert (unfolded.balance_minor, unfolded.unfolded_minor) == (0, 1000)
    for code in (CASH, M2):  # accounts that exist without postings
        empty = await books.store.snapshot(code, with_unfolded=True)
        assert (empty.account_code, empty.balance_minor, empty.unfolded_minor, empty.updated_at) == (code, 0, 0, None)
    unknown = [
        "MERCHANT_PAYABLE.SELLER-999.EUR",  # no such seller
        "MERCHANT_PAYABLE.SELLER-111.USD",  # the seller settles in EUR
        "MERCHANT_PAYABLE.GLOBAL.EUR",  # the platform has no payable account
        "PLATFORM_CASH.SELLER-111.EUR",  # a seller has no platform accounts
        "PSP_RECEIVABLES.GLOBAL.JPY",
        "NOPE.GLOBAL.EUR",
    ]
    for code in unknown:
        assert await books.store.snapshot(code) is None, code
        assert await books.store.snapshot(code, with_unfolded=True) is None, code
    # a seller onboarded now has an account at once, with nothing in it
    await books.sellers.add(OnboardSeller("SELLER-444", Currency.GBP, 100))
    new = await books.store.snapshot("MERCHANT_PAYABLE.SELLER-444.GBP", with_unfolded=True)
    assert (new.currency, new.balance_minor, new.unfolded_minor, new.updated_at) == ("GBP", 0, 0, None)

    folded = await fold_past(books, (await record(books, journals.auth_release(12, eur(300))))["AUTH_RELEASE:12"].tx)
    late = (await record(books, journals.auth_release(13, eur(200))))["AUTH_RELEASE:13"]
    assert late.tx >= folded.horizon
    snap = await books.store.snapshot(AR)
    assert (snap.balance_minor, snap.horizon, snap.unfolded_minor) == (400, folded.horizon, 0)
    assert snap.updated_at is not None  # folded
    snap = await books.store.snapshot(AR, with_unfolded=True)
    assert (snap.balance_minor, snap.horizon, snap.unfolded_minor) == (400, folded.horizon, -200)
    assert (await books.store.snapshot(M2, with_unfolded=True)).updated_at is None  # still never folded


async def test_snapshot_drift_is_empty_after_a_fold_and_reports_broken_snapshots(books: Books) -> None:
    assert await books.store.snapshot_drift() == (0, [])
    stored = await a_sale(books)
    assert await books.store.snapshot_drift() == (0, [])  # nothing below the horizon yet
    await fold_past(books, stored["AUTH:2"].tx)
    assert await books.store.snapshot_drift() == (5, [])
    await books.set_snapshot(M1, 957)
    await books.set_snapshot(CASH, 5)  # a snapshot of an account without postings
    checked, drift = await books.store.snapshot_drift()
    assert checked == 6
    assert sorted(drift, key=lambda d: d.subject) == [
        Drift(Check.SNAPSHOT, M1, 950, 957),
        Drift(Check.SNAPSHOT, CASH, 0, 5),
    ]


async def test_rebuild_snapshots_repairs_them_from_the_postings_below_the_horizon(books: Books) -> None:
    stored = await a_sale(books)
    await fold_past(books, stored["AUTH:2"].tx)
    assert await books.store.rebuild_snapshots() == 0  # nothing to repair
    await books.set_snapshot(M1, 957)
    await books.set_snapshot(CASH, 5)
    await record(books, journals.auth_release(12, eur(300)))  # above the horizon: not in the snapshots
    assert await books.store.rebuild_snapshots() == 2
    assert await books.store.snapshot_drift() == (6, [])  # CASH keeps its (now zero) snapshot
    assert await balances(books, AR, AL, PSP, M1, REV, CASH) == {**SALE, CASH: 0}
    assert await books.store.rebuild_snapshots() == 0


async def test_postings_above_the_horizon_are_exactly_the_unfolded_ones(books: Books) -> None:
    stored = await a_sale(books)
    sale, second = stored["CAPTURE:11"], stored["AUTH:2"]
    assert (sale.seq, second.seq) == (2, 4)
    unfolded = await books.store.postings_above_horizon()
    assert unfolded.horizon == FIRST_HORIZON
    tx1, tx2, at1, at2 = sale.tx, second.tx, sale.created_at, second.created_at
    assert sorted(unfolded.postings) == sorted(
        [
            (Entry(AR, tx1, 1, 1000), at1),
            (Entry(AL, tx1, 1, 1000), at1),
            (Entry(AR, tx1, 2, -1000), at1),
            (Entry(AL, tx1, 2, -1000), at1),
            (Entry(PSP, tx1, 2, 1000), at1),
            (Entry(M1, tx1, 2, 1000), at1),
            (Entry(M1, tx1, 3, -50), at1),
            (Entry(REV, tx1, 3, 50), at1),
            (Entry(AR, tx2, 4, 700), at2),
            (Entry(AL, tx2, 4, 700), at2),
        ]
    )
    folded = await fold_past(books, second.tx)
    empty = await books.store.postings_above_horizon()
    assert (empty.horizon, empty.postings) == (folded.horizon, [])
    release = (await record(books, journals.auth_release(12, eur(300))))["AUTH_RELEASE:12"]
    assert release.seq == 5
    late = await books.store.postings_above_horizon()
    assert late.horizon == folded.horizon
    assert sorted(late.postings) == [
        (Entry(AL, release.tx, 5, -300), release.created_at),
        (Entry(AR, release.tx, 5, -300), release.created_at),
    ]


async def test_the_trial_balance_sums_debits_and_credits_per_currency(books: Books) -> None:
    assert await books.store.trial_balance() == []
    stored = await a_sale(books)
    # the sale: hold 1000, capture 1000 (two debits, two credits), commission 50, hold 700
    eur = TrialBalance("EUR", 1000 + 2 * 1000 + 50 + 700, 1000 + 2 * 1000 + 50 + 700)
    assert await books.store.trial_balance() == [eur]
    await record(books, journals.auth_hold(3, Money(999, Currency.USD)))  # another currency
    assert await books.store.trial_balance() == [eur, TrialBalance("USD", 999, 999)]
    await fold_past(books, stored["AUTH:2"].tx)
    assert await books.store.trial_balance() == [eur, TrialBalance("USD", 999, 999)]
