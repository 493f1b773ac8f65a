"""The ledger: journal invariants, and scenario tables (TigerBeetle-style) of
event → journals → postings → balances, driven through the whole service wired with fakes."""

from __future__ import annotations

import pytest

from marketplace_pay.balances.application.reconcile import real_time_drift
from marketplace_pay.balances.domain.balance import Entry
from marketplace_pay.ledger.application.directory import OnboardSeller
from marketplace_pay.ledger.domain.accounts import Account, AccountType
from marketplace_pay.ledger.domain.journal import (
    Direction,
    JournalEntry,
    JournalType,
    Posting,
    auth_hold,
    capture,
    commission,
    commission_fee,
)
from marketplace_pay.payments.application.ports import CaptureOutcome
from marketplace_pay.shared.errors import InvariantViolation
from marketplace_pay.shared.money import Currency, Money
from tests.fakes import FakeLedgerUnitOfWork
from tests.world import World

C, D, R = CaptureOutcome.CAPTURED, CaptureOutcome.DECLINED, CaptureOutcome.RETRYABLE
EUR = Currency.EUR


def acc(t: AccountType, entity: str = "GLOBAL", c: Currency = EUR) -> Account:
    return Account(t, entity, c)


@pytest.mark.parametrize(
    ("postings", "message"),
    [
        ((Posting(acc(AccountType.AUTH_RECEIVABLE), Direction.DEBIT, 10),), "at least 2"),
        (
            (
                Posting(acc(AccountType.AUTH_RECEIVABLE), Direction.DEBIT, 10),
                Posting(acc(AccountType.AUTH_LIABILITY), Direction.CREDIT, 9),
            ),
            "Unbalanced",
        ),
        (
            (
                Posting(acc(AccountType.AUTH_RECEIVABLE), Direction.DEBIT, 10),
                Posting(acc(AccountType.AUTH_RECEIVABLE), Direction.CREDIT, 10),
            ),
            "duplicate accounts",
        ),
        (
            (
                Posting(acc(AccountType.AUTH_RECEIVABLE), Direction.DEBIT, 10),
                Posting(acc(AccountType.AUTH_LIABILITY, c=Currency.USD), Direction.CREDIT, 10),
            ),
            "in EUR",
        ),
        (
            (
                Posting(acc(AccountType.AUTH_RECEIVABLE), Direction.DEBIT, 0),
                Posting(acc(AccountType.AUTH_LIABILITY), Direction.CREDIT, 0),
            ),
            "positive",
        ),
    ],
)
def test_journal_invariants(postings: tuple[Posting, ...], message: str) -> None:
    with pytest.raises(InvariantViolation, match=message):
        JournalEntry("X:1", JournalType.AUTH_HOLD, "x", EUR, postings)


@pytest.mark.parametrize(
    ("type_", "direction", "signed"),
    [
        (AccountType.AUTH_RECEIVABLE, Direction.DEBIT, 100),
        (AccountType.AUTH_RECEIVABLE, Direction.CREDIT, -100),
        (AccountType.MERCHANT_PAYABLE, Direction.CREDIT, 100),
        (AccountType.MERCHANT_PAYABLE, Direction.DEBIT, -100),
        (AccountType.PLATFORM_COMMISSION_REVENUE, Direction.CREDIT, 100),
        (AccountType.PSP_FEE_EXPENSE, Direction.DEBIT, 100),
    ],
)
def test_signed_amounts_follow_the_normal_balance(type_: AccountType, direction: Direction, signed: int) -> None:
    assert Posting(acc(type_, "S"), direction, 100).signed_amount_minor == signed


def test_journal_ids_and_postings_of_the_factories() -> None:
    a = Money(1000, EUR)
    assert auth_hold(7, a).journal_id == "AUTH:7"
    cap = capture(8, "SELLER-111", a)
    assert cap.journal_id == "CAPTURE:8"
    assert {(p.account.code, p.direction) for p in cap.postings} == {
        ("AUTH_RECEIVABLE.GLOBAL.EUR", Direction.CREDIT),
        ("AUTH_LIABILITY.GLOBAL.EUR", Direction.DEBIT),
        ("PSP_RECEIVABLES.GLOBAL.EUR", Direction.DEBIT),
        ("MERCHANT_PAYABLE.SELLER-111.EUR", Direction.CREDIT),
    }
    assert sum(p.signed_amount_minor for p in cap.postings) == 0  # a capture's signed amounts net to zero
    assert commission(8, "S", Money(9, EUR), 500) is None  # fee rounds to 0: no journal


@pytest.mark.parametrize(
    ("amount", "bps", "fee"),
    [
        (1000, 500, 50),
        (1009, 500, 50),
        (1010, 500, 51),
        (1030, 500, 52),
        (10, 500, 1),
        (9, 500, 0),
        (12345, 250, 309),
        (1, 10000, 1),
        (999, 0, 0),
    ],
)
def test_commission_rounds_half_up_in_minor_units(amount: int, bps: int, fee: int) -> None:
    assert commission_fee(amount, bps) == fee


GLOBAL = "{}.GLOBAL.EUR"
AR, AL, PSP, REV = (
    GLOBAL.format(t) for t in ("AUTH_RECEIVABLE", "AUTH_LIABILITY", "PSP_RECEIVABLES", "PLATFORM_COMMISSION_REVENUE")
)
M1, M2 = "MERCHANT_PAYABLE.SELLER-111.EUR", "MERCHANT_PAYABLE.SELLER-222.EUR"

# (name, capture answers per amount, order amounts, journals, balances after everything folded)
SCENARIOS = [
    (
        "approved payment, capture still retrying",
        {1000: [R]},
        [1000],
        ["AUTH_HOLD"],
        {AR: 1000, AL: 1000, PSP: 0, M1: 0},
    ),
    (
        "full capture",
        {},
        [1000, 2000],
        ["AUTH_HOLD", "CAPTURE", "COMMISSION_FEE", "CAPTURE", "COMMISSION_FEE"],
        {AR: 0, AL: 0, PSP: 3000, M1: 950, M2: 1900, REV: 150},
    ),
    (
        "capture after retries",
        {1000: [R, R, C]},
        [1000],
        ["AUTH_HOLD", "CAPTURE", "COMMISSION_FEE"],
        {AR: 0, AL: 0, PSP: 1000, M1: 950, REV: 50},
    ),
    (
        "capture failure",
        {1000: [D]},
        [1000],
        ["AUTH_HOLD", "AUTH_RELEASE"],
        {AR: 0, AL: 0, PSP: 0, M1: 0, REV: 0},
    ),
    (
        "retries exhausted",
        {1000: [R]},
        [1000],
        ["AUTH_HOLD", "AUTH_RELEASE"],
        {AR: 0, AL: 0, M1: 0},
    ),
    (
        "mixed outcome across sellers",
        {2000: [D]},
        [1000, 2000],
        ["AUTH_HOLD", "CAPTURE", "COMMISSION_FEE", "AUTH_RELEASE"],
        {AR: 0, AL: 0, PSP: 1000, M1: 950, M2: 0, REV: 50},
    ),
    (
        "commission rounding (half up)",
        {},
        [1030, 9],
        ["AUTH_HOLD", "CAPTURE", "COMMISSION_FEE", "CAPTURE"],  # 0.45 rounds to 0: no fee journal
        {PSP: 1039, M1: 1030 - 52, M2: 9, REV: 52, AR: 0, AL: 0},
    ),
]


@pytest.mark.parametrize(
    ("name", "answers", "amounts", "journal_types", "expected"), SCENARIOS, ids=[s[0] for s in SCENARIOS]
)
async def test_scenarios(
    name: str,
    answers: dict[int, list[CaptureOutcome]],
    amounts: list[int],
    journal_types: list[str],
    expected: dict[str, int],
) -> None:
    w = World(answers)
    pid = await w.pay(*amounts)
    if name.startswith("approved payment"):
        await w.drain()  # the first attempt was retryable; the retry is not due yet
    else:
        await w.settle()
    types = sorted(stored.journal.type.value for stored, _ in w.db.tables.journals.values())
    assert types == sorted(journal_types)
    assert all(ref.payment_id == pid for _, ref in w.db.tables.journals.values())
    for code, balance in expected.items():
        assert await w.balance(code) == balance, code
    await w.container.balances.fold()
    for code, balance in expected.items():  # the same after folding into the snapshot
        assert await w.balance(code) == balance, code
    assert w.overlay.zsets == {} or all(not z for z in w.overlay.zsets.values())


async def test_multi_currency_sellers_use_their_own_accounts() -> None:
    w = World({})
    await w.sellers.add(OnboardSeller("SELLER-USD", Currency.USD, 1000))
    await w.pay(5000, sellers=["SELLER-USD"], currency=Currency.USD)
    await w.pay(1000)
    await w.settle()
    assert await w.balance("MERCHANT_PAYABLE.SELLER-USD.USD") == 4500
    assert await w.balance("PSP_RECEIVABLES.GLOBAL.USD") == 5000
    assert await w.balance("PLATFORM_COMMISSION_REVENUE.GLOBAL.USD") == 500
    assert await w.balance("PSP_RECEIVABLES.GLOBAL.EUR") == 1000
    assert await w.balance("AUTH_RECEIVABLE.GLOBAL.USD") == 0


async def test_recording_twice_writes_one_journal_and_announces_it_again_identically() -> None:
    w = World({}, duplicate=True)
    await w.pay(1000, 2000)
    await w.settle()
    assert len(w.db.tables.journals) == 5
    recorded = w.events("ledger_entries_recorded")
    first = {e.event_id: e.data for e in recorded}
    assert len(first) == 3  # AUTH + one per order
    assert all(e.data == first[e.event_id] for e in recorded)  # announced again, identically
    assert await w.balance(M1) == 950 and await w.balance(PSP) == 3000


async def test_ledger_entries_delivered_twice_and_out_of_order_count_once() -> None:
    w = World({})
    await w.pay(1000, 2000)
    await w.settle()
    [apply] = w.handlers["ledger_entries_recorded"]
    recorded = w.events("ledger_entries_recorded")
    for env in reversed(recorded):  # again, backwards
        await apply([env, env])
    assert await w.balance(M1) == 950 and await w.balance(REV) == 150 and await w.balance(AR) == 0
    await w.container.balances.fold()
    for env in recorded:  # and once more after they were folded
        await apply([env])
    assert await w.balance(M1) == 950 and await w.balance(PSP) == 3000
    report = await w.container.balances.reconcile()
    assert report.ok, report.drift


async def test_reconcile_finds_broken_balances_and_repair_rebuilds_them() -> None:
    w = World({})
    await w.pay(1000)
    await w.settle()
    w.overlay.zsets.clear()  # Redis lost its data before a fold
    assert await w.balance(M1) == 0
    report = await w.container.balances.reconcile()
    # reconcile folds first: the snapshot now holds everything, so real time is right again
    assert report.ok and await w.balance(M1) == 950
    w.balance_store.balances[M1] += 7  # a snapshot someone broke
    await w.overlay.apply([Entry(PSP, w.db.xid + 5, 10_000, 5)])  # and an overlay entry matching no posting
    broken = await w.container.balances.reconcile()
    assert sorted((d.check, d.subject, d.difference_minor) for d in broken.drift) == [
        ("real-time", PSP, 5),
        ("snapshot", M1, 7),
    ]
    repaired = await w.container.balances.reconcile(repair=True)
    assert repaired.ok and await w.balance(M1) == 950 and await w.balance(PSP) == 1000


async def test_the_overlay_check_waits_for_young_postings_but_not_for_old_ones() -> None:
    w = World({})
    await w.pay(1000)
    await w.drain()  # recorded and applied, not folded yet
    w.overlay.zsets.clear()  # as if their events had not reached Redis yet
    assert await real_time_drift(w.balance_store, w.overlay, w.clock, grace_s=30) == []
    w.clock.advance(ms=60_000)  # a minute later they should long have arrived: lost
    missing = await real_time_drift(w.balance_store, w.overlay, w.clock, grace_s=30)
    assert {(d.subject, d.expected_minor, d.actual_minor) for d in missing} >= {(M1, 950, 0), (PSP, 1000, 0)}


async def test_with_redis_down_the_pipeline_goes_on_and_balances_come_from_postgres() -> None:
    w = World({})
    w.overlay.down = True  # Redis unreachable for the whole run
    await w.pay(1000, 2000)
    await w.settle()  # capture and recording went on: nothing waited for Redis
    assert len(w.db.tables.journals) == 5
    assert await w.balance(M1) == 950 and await w.balance(PSP) == 3000  # snapshot + unfolded postings
    await w.container.balances.fold()
    assert await w.balance(M1) == 950 and await w.balance(PSP) == 3000
    w.overlay.down = False
    assert await w.balance(M1) == 950  # and once Redis is back, the folded snapshot holds it


async def test_a_capture_for_a_seller_the_directory_does_not_know_is_refused_not_recorded_without_fee() -> None:
    from datetime import UTC, datetime

    from marketplace_pay.ledger.application.recording import UnknownSeller, record_finalizations
    from marketplace_pay.payments import PaymentOrderFinalized, PaymentOrderStatus
    from marketplace_pay.shared.envelope import envelope

    class NoRates:
        forgotten: list[str] = []  # noqa: RUF012

        def forget(self, seller_id: str) -> None:
            self.forgotten.append(seller_id)

        async def commission_bps(self, seller_ids: object) -> dict[str, int]:
            return {}

    w = World({})
    event = PaymentOrderFinalized(
        payment_order_id="11",
        public_payment_order_id="po_AAAAAAAAAAs",
        payment_id="10",
        public_payment_id="pay_AAAAAAAAAAo",
        seller_id="SELLER-999",
        amount_minor=1000,
        currency="EUR",
        timestamp=datetime.now(UTC),
        status=PaymentOrderStatus.CAPTURED,
    )
    env = envelope(event, aggregate_id="11", timestamp=event.timestamp, trace_id="a" * 32)
    rates = NoRates()
    with pytest.raises(UnknownSeller, match="SELLER-999"):
        await record_finalizations([env], uow=lambda: FakeLedgerUnitOfWork(w.db), rates=rates, clock=w.clock)
    assert rates.forgotten == ["SELLER-999"]  # the retry asks the directory, not a cached "unknown"
    assert w.db.tables.journals == {}  # nothing recorded: retried, then dead-lettered


def test_money_out_journals_have_the_documented_postings() -> None:
    from marketplace_pay.ledger.domain import journal as j

    eur = lambda n: Money(n, EUR)  # noqa: E731
    m = "MERCHANT_PAYABLE.S-1.EUR"

    def lines(entry: JournalEntry) -> list[tuple[str, str, int]]:
        return [(p.account.code, p.direction.value, p.amount_minor) for p in entry.postings]

    assert lines(j.refund(7, "S-1", eur(300))) == [(m, "DEBIT", 300), ("PSP_RECEIVABLES.GLOBAL.EUR", "CREDIT", 300)]
    fee_back = j.commission_refund(7, "S-1", eur(15))
    assert fee_back is not None and lines(fee_back) == [
        ("PLATFORM_COMMISSION_REVENUE.GLOBAL.EUR", "DEBIT", 15),
        (m, "CREDIT", 15),
    ]
    assert j.commission_refund(7, "S-1", eur(0)) is None
    assert lines(j.payout(8, "S-1", eur(900))) == [(m, "DEBIT", 900), ("PAYOUTS_IN_TRANSIT.GLOBAL.EUR", "CREDIT", 900)]
    assert lines(j.payout_paid(8, eur(900))) == [
        ("PAYOUTS_IN_TRANSIT.GLOBAL.EUR", "DEBIT", 900),
        ("PLATFORM_CASH.GLOBAL.EUR", "CREDIT", 900),
    ]
    assert lines(j.payout_returned(8, "S-1", eur(900))) == [
        ("PAYOUTS_IN_TRANSIT.GLOBAL.EUR", "DEBIT", 900),
        (m, "CREDIT", 900),
    ]
    assert lines(j.settlement(9, eur(10_000), 30)) == [
        ("PLATFORM_CASH.GLOBAL.EUR", "DEBIT", 9_970),
        ("PSP_FEE_EXPENSE.GLOBAL.EUR", "DEBIT", 30),
        ("PSP_RECEIVABLES.GLOBAL.EUR", "CREDIT", 10_000),
    ]
    assert lines(j.settlement(9, eur(10), 30)) == [
        ("PLATFORM_CASH.GLOBAL.EUR", "DEBIT", 10),
        ("PSP_RECEIVABLES.GLOBAL.EUR", "CREDIT", 10),
    ]


@pytest.mark.parametrize(
    ("refund", "rest", "refunded_before", "expected"),
    [
        (300, 700, 0, 15),  # 5 % of 300
        (333, 667, 0, 17),  # half up
        (700, 0, 15, 35),  # the rest of the order: the rest of the fee (50 − 15), not 5 % of 700
        (100, 0, 50, 0),  # nothing left of the fee
        (999, 1, 0, 50),  # never more than the fee
    ],
)
def test_a_refund_gives_the_commission_back_pro_rata_and_the_last_one_all_that_is_left(
    refund: int, rest: int, refunded_before: int, expected: int
) -> None:
    from marketplace_pay.ledger.domain.journal import refunded_fee

    got = refunded_fee(refund, commission_bps=500, fee_minor=50, fee_refunded_minor=refunded_before, rest_minor=rest)
    assert got == expected
