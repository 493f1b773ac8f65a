"""Payouts and PSP settlement: scenario tables (TigerBeetle-style) of event → journals → postings
→ balances, driven through the whole service wired with fakes; then the rules around them."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from marketplace_pay.ledger.adapters.bank import SimulatedBank
from marketplace_pay.ledger.adapters.http_treasury import render
from marketplace_pay.ledger.application.payouts import Created, CreatePayout, Replayed
from marketplace_pay.ledger.application.ports import BankOutcome, Keyed
from marketplace_pay.ledger.domain.accounts import AccountStatus
from marketplace_pay.settings import Settings
from marketplace_pay.shared.errors import ConflictError, NotFoundError, UnprocessableError
from marketplace_pay.shared.money import Currency, Money
from tests.fakes import LostAnswer, ScriptedBank
from tests.world import World

EUR = Currency.EUR
M1 = "MERCHANT_PAYABLE.SELLER-111.EUR"
PSP = "PSP_RECEIVABLES.GLOBAL.EUR"
PIT = "PAYOUTS_IN_TRANSIT.GLOBAL.EUR"
CASH = "PLATFORM_CASH.GLOBAL.EUR"
FEE = "PSP_FEE_EXPENSE.GLOBAL.EUR"
PAID, FAILED, RETRY = BankOutcome.PAID, BankOutcome.FAILED, BankOutcome.RETRYABLE


def payout_cmd(amount: int | None, *, seller: str = "SELLER-111", key: str | None = None, body: bytes = b"") -> Any:
    money = Money(amount, EUR) if amount is not None else None
    return CreatePayout(seller, money, Keyed("client", key, body if key else None), trace_id="a" * 32)


async def pay_out(w: World, amount: int | None, **kw: Any) -> Any:
    return await w.container.treasury.create_payout(payout_cmd(amount, **kw), render=render)


async def finish_payouts(w: World, rounds: int = 20) -> None:
    """Deliver everything; move the clock past every back-off and dispatch the due bank calls."""
    for _ in range(rounds):
        await w.drain()
        w.clock.advance(ms=120_000)
        if not await w.container.treasury.dispatch_due_payouts():
            await w.drain()
            return
    raise AssertionError("payouts did not finish")


def journal_types(w: World) -> list[str]:
    return sorted(stored.journal.type.value for stored, _ in w.db.tables.journals.values())


def statuses(w: World) -> list[str]:
    return [s.payout.status.value for _, s in sorted(w.db.tables.payouts.items())]


# (name, captured order amounts for SELLER-111, payouts asked (None: everything), bank answers
#  per amount, journals after everything, payout statuses, balances after everything)
SCENARIOS = [
    (
        "payout of the whole balance",
        [1000],
        [None],
        {},
        ["AUTH_HOLD", "CAPTURE", "COMMISSION_FEE", "PAYOUT", "PAYOUT_PAID"],
        ["PAID"],
        {M1: 0, PIT: 0, CASH: -950, PSP: 1000},
    ),
    (
        "part, then the rest",
        [1000],
        [300, None],
        {},
        ["AUTH_HOLD", "CAPTURE", "COMMISSION_FEE", "PAYOUT", "PAYOUT", "PAYOUT_PAID", "PAYOUT_PAID"],
        ["PAID", "PAID"],
        {M1: 0, PIT: 0, CASH: -950},
    ),
    (
        "bank refuses: the money goes back to the seller",
        [1000],
        [899],
        {899: [FAILED]},
        ["AUTH_HOLD", "CAPTURE", "COMMISSION_FEE", "PAYOUT", "PAYOUT_RETURNED"],
        ["FAILED"],
        {M1: 950, PIT: 0, CASH: 0},
    ),
    (
        "not paid, then paid under a new key",
        [1000],
        [500],
        {500: [RETRY, RETRY, PAID]},
        ["AUTH_HOLD", "CAPTURE", "COMMISSION_FEE", "PAYOUT", "PAYOUT_PAID"],
        ["PAID"],
        {M1: 450, PIT: 0, CASH: -500},
    ),
    (
        "never paid: failed once the retries are used up",
        [1000],
        [500],
        {500: [RETRY]},
        ["AUTH_HOLD", "CAPTURE", "COMMISSION_FEE", "PAYOUT", "PAYOUT_RETURNED"],
        ["FAILED"],
        {M1: 950, PIT: 0, CASH: 0},
    ),
    (
        "answers lost: asked again under the same key, paid once",
        [1000],
        [500],
        {500: [LostAnswer(PAID), LostAnswer(PAID), PAID]},
        ["AUTH_HOLD", "CAPTURE", "COMMISSION_FEE", "PAYOUT", "PAYOUT_PAID"],
        ["PAID"],
        {M1: 450, PIT: 0, CASH: -500},
    ),
    (
        "unanswered past the retries: a status query finds it paid",
        [1000],
        [500],
        {500: [LostAnswer(PAID)]},
        ["AUTH_HOLD", "CAPTURE", "COMMISSION_FEE", "PAYOUT", "PAYOUT_PAID"],
        ["PAID"],
        {M1: 450, PIT: 0, CASH: -500},
    ),
]


@pytest.mark.parametrize(
    ("name", "captures", "asked", "answers", "journals", "payouts", "expected"),
    SCENARIOS,
    ids=[s[0] for s in SCENARIOS],
)
async def test_payout_scenarios(
    name: str,
    captures: list[int],
    asked: list[int | None],
    answers: dict[int, list[Any]],
    journals: list[str],
    payouts: list[str],
    expected: dict[str, int],
) -> None:
    w = World({}, bank=ScriptedBank(answers))
    for amount in captures:
        await w.pay(amount, sellers=["SELLER-111"])
    await w.settle()
    for amount in asked:
        result = await pay_out(w, amount)
        assert isinstance(result, Created) and result.payout.status.value == "PENDING"
        await finish_payouts(w)
    assert journal_types(w) == sorted(journals)
    assert statuses(w) == payouts
    for code, balance in expected.items():
        assert await w.balance(code) == balance, code
    await w.container.balances.fold()
    for code, balance in expected.items():  # the same once folded into the snapshots
        assert await w.balance(code) == balance, code
    sent = w.bank.paid()
    assert all(len(keys) == 1 for keys in sent.values())  # money sent at most once per payout
    assert len(sent) == payouts.count("PAID")
    report = await w.container.balances.reconcile()
    assert report.ok, report.drift


async def test_the_money_is_unavailable_from_the_moment_the_payout_is_created() -> None:
    w = World({})
    await w.pay(1000, sellers=["SELLER-111"])
    await w.settle()
    await pay_out(w, 600)  # not delivered to the bank yet, nor to the balances' overlay

    async def exact(code: str) -> int:
        snap = await w.balance_store.snapshot(code, with_unfolded=True)
        assert snap is not None
        return snap.balance_minor + snap.unfolded_minor

    assert await exact(M1) == 350 and await exact(PIT) == 600
    assert [e.event_type for e in w.db.tables.outbox[-2:]] == ["payout_requested", "ledger_entries_recorded"]
    with pytest.raises(UnprocessableError, match="exceeds the available balance 350"):
        await pay_out(w, 351)


@pytest.mark.parametrize(
    ("setup", "cmd", "error", "message"),
    [
        ("", payout_cmd(951), UnprocessableError, "exceeds the available balance 950"),
        ("", payout_cmd(1000, seller="SELLER-999"), NotFoundError, "SELLER-999 not found"),
        ("nothing", payout_cmd(None, seller="SELLER-222"), UnprocessableError, "Nothing available"),
        ("suspend", payout_cmd(100), UnprocessableError, "SUSPENDED"),
        ("close", payout_cmd(None), UnprocessableError, "CLOSED"),
        ("", CreatePayout("SELLER-111", Money(100, Currency.USD), Keyed("c"), "a" * 32), UnprocessableError, "in EUR"),
    ],
    ids=["above available", "unknown seller", "nothing available", "suspended", "closed", "other currency"],
)
async def test_refused_payouts_write_nothing(setup: str, cmd: CreatePayout, error: type, message: str) -> None:
    w = World({})
    await w.pay(1000, sellers=["SELLER-111"])
    await w.settle()
    if setup in ("suspend", "close"):
        status = AccountStatus.SUSPENDED if setup == "suspend" else AccountStatus.CLOSED
        await w.sellers.set_status("SELLER-111", status)
    journals, outbox = len(w.db.tables.journals), len(w.db.tables.outbox)
    with pytest.raises(error, match=message):
        await w.container.treasury.create_payout(cmd, render=render)
    assert w.db.tables.payouts == {} and len(w.db.tables.journals) == journals and len(w.db.tables.outbox) == outbox
    assert await w.balance(M1) == 950


async def test_an_idempotency_key_replays_the_first_response_and_refuses_another_body() -> None:
    w = World({})
    await w.pay(1000, sellers=["SELLER-111"])
    await w.settle()
    first = await pay_out(w, 400, key="k-1", body=b"one")
    assert isinstance(first, Created) and not first.replayed
    await finish_payouts(w)  # paid meanwhile, and the balance changed: the replay is still the first answer
    again = await pay_out(w, 400, key="k-1", body=b"one")
    assert isinstance(again, Replayed) and (again.status, again.body) == render(first.payout)
    with pytest.raises(UnprocessableError, match="different request body"):
        await pay_out(w, 500, key="k-1", body=b"two")
    assert len(w.db.tables.payouts) == 1 and await w.balance(M1) == 550


async def test_a_payout_event_delivered_twice_has_one_effect() -> None:
    w = World({}, duplicate=True)  # every event handled twice, in one batch and again
    await w.pay(1000, 2000, sellers=["SELLER-111", "SELLER-222"])
    await w.settle()
    await pay_out(w, None)
    await pay_out(w, 1000, seller="SELLER-222")
    await finish_payouts(w)
    assert statuses(w) == ["PAID", "PAID"]
    assert journal_types(w).count("PAYOUT_PAID") == 2
    # the repeats found the payouts answered already: not one more bank call
    assert [c.op for c in w.bank.calls] == ["payout", "payout"] and len(w.bank.done) == 2
    finals = [e.event_id for e in w.events("payout_paid")]
    assert sorted(set(finals)) == sorted(finals)  # one PayoutPaid each
    assert await w.balance(M1) == 0 and await w.balance("MERCHANT_PAYABLE.SELLER-222.EUR") == 900


async def test_the_bank_simulator_refuses_amounts_ending_in_99_and_the_money_returns() -> None:
    w = World({}, bank=SimulatedBank("BEST_PSP_EVER"))  # type: ignore[arg-type]
    await w.pay(2000, sellers=["SELLER-111"])
    await w.settle()
    await pay_out(w, 1899)
    await pay_out(w, 1)
    await finish_payouts(w)
    assert statuses(w) == ["FAILED", "PAID"]
    assert await w.balance(M1) == 1899 and await w.balance(PIT) == 0 and await w.balance(CASH) == -1


async def test_scheduled_payouts_pay_active_sellers_above_the_minimum_and_a_second_run_only_what_is_left() -> None:
    settings = Settings().with_(jwt_secret="x" * 40, payout_minimum_minor=400)
    w = World({}, settings=settings)
    await w.pay(1000, 300, 3000, sellers=["SELLER-111", "SELLER-222", "SELLER-333"])
    await w.settle()  # 950, 285, 2850 available
    await w.sellers.set_status("SELLER-333", AccountStatus.SUSPENDED)
    paid = await w.container.treasury.run_scheduled_payouts()
    assert [(p.seller_id, p.amount.amount_minor) for p in paid] == [("SELLER-111", 950)]
    assert await w.container.treasury.run_scheduled_payouts() == []  # a re-run finds nothing left
    await w.pay(500, sellers=["SELLER-111"])
    await w.settle()
    again = await w.container.treasury.run_scheduled_payouts()  # only what came in since
    assert [(p.seller_id, p.amount.amount_minor) for p in again] == [("SELLER-111", 475)]
    await finish_payouts(w)
    assert statuses(w) == ["PAID", "PAID"]
    assert await w.balance(M1) == 0 and await w.balance("MERCHANT_PAYABLE.SELLER-222.EUR") == 285


# -- settlement ----------------------------------------------------------------------------------

# (name, capture amounts (EUR), expected settlements (currency, gross, fee, net), balances after)
SETTLEMENTS = [
    ("nothing captured: nothing to settle", [], [], {PSP: 0, CASH: 0, FEE: 0}),
    ("captures settled minus the PSP fee", [1000, 2000], [("EUR", 3000, 9, 2991)], {PSP: 0, CASH: 2991, FEE: 9}),
    ("fee rounds half up", [1650], [("EUR", 1650, 5, 1645)], {PSP: 0, CASH: 1645, FEE: 5}),  # 4.95 → 5
]


@pytest.mark.parametrize(("name", "captures", "settled", "expected"), SETTLEMENTS, ids=[s[0] for s in SETTLEMENTS])
async def test_settlement_scenarios(
    name: str, captures: list[int], settled: list[tuple[str, int, int, int]], expected: dict[str, int]
) -> None:
    w = World({})
    for amount in captures:
        await w.pay(amount, sellers=["SELLER-111"])
    await w.settle()
    done = await w.container.treasury.settle()
    await w.drain()
    assert [(s.currency.value, s.gross_minor, s.fee_minor, s.net_minor) for s in done] == settled
    assert journal_types(w).count("SETTLEMENT") == len(settled)
    for code, balance in expected.items():
        assert await w.balance(code) == balance, code
    again = await w.container.treasury.settle()  # a second run finds nothing
    await w.drain()
    assert again == [] and journal_types(w).count("SETTLEMENT") == len(settled)
    report = await w.container.balances.reconcile()
    assert report.ok, report.drift


async def test_settlement_covers_each_journal_once_and_per_currency() -> None:
    from marketplace_pay.ledger.application.directory import OnboardSeller

    w = World({})
    await w.sellers.add(OnboardSeller("SELLER-USD", Currency.USD, 0))
    await w.pay(1000, sellers=["SELLER-111"])
    await w.pay(700, sellers=["SELLER-USD"], currency=Currency.USD)
    await w.settle()
    first = await w.container.treasury.settle()
    assert sorted((s.currency.value, s.gross_minor, len(s.journal_ids)) for s in first) == [
        ("EUR", 1000, 1),
        ("USD", 700, 1),
    ]
    await w.pay(500, sellers=["SELLER-111"])
    await w.settle()
    second = await w.container.treasury.settle()
    assert [(s.currency.value, s.gross_minor) for s in second] == [("EUR", 500)]
    covered = [j for s in first + second for j in s.journal_ids]
    assert len(covered) == len(set(covered)) == 3
    await w.drain()
    assert await w.balance(PSP) == 0 and await w.balance("PSP_RECEIVABLES.GLOBAL.USD") == 0
    views, more = await w.container.treasury.settlements(limit=10, after=None)
    assert [v.gross.quantity for v in views] == [500, 700, 1000] and not more  # newest first


async def test_reconcile_finds_psp_receivables_that_disagree_with_captured_minus_settled() -> None:
    w = World({})
    await w.pay(1000, sellers=["SELLER-111"])
    await w.settle()
    await w.container.treasury.settle()
    await w.drain()
    assert (await w.container.balances.reconcile()).ok
    [(settlement_id, (settlement, at))] = w.db.tables.settlements.items()
    w.db.tables.settlements[settlement_id] = (msgspec.structs.replace(settlement, gross_minor=900), at)
    report = await w.container.balances.reconcile()
    assert [(d.check, d.subject, d.expected_minor, d.actual_minor) for d in report.drift] == [
        ("psp-receivables", "EUR", 100, 0)
    ]


async def test_a_key_held_by_a_running_request_is_a_conflict() -> None:
    w = World({})
    await w.pay(1000, sellers=["SELLER-111"])
    await w.settle()
    w.db.held_locks.add(("client", "k"))  # another transaction is creating a payout under this key
    with pytest.raises(ConflictError, match="still being processed"):
        await pay_out(w, 100, key="k", body=b"x")
    assert w.db.tables.payouts == {}
    w.db.held_locks.clear()
    assert isinstance(await pay_out(w, 100, key="k", body=b"x"), Created)
