"""Refunds over HTTP, against real PostgreSQL and Redis: each scenario from the request to the
journals, their postings and the seller's balance; validation; idempotency; concurrency against
one order; a refund event delivered twice; a refund after a payout driving the seller below zero;
reads and roles; settlement and reconciliation afterwards. Each test onboards sellers of its own."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from marketplace_pay.payments.domain.events import RefundSucceeded
from marketplace_pay.shared.envelope import Envelope
from tests.conftest import make_settings
from tests.harness import Service, payment_body, start_service
from tests.integration.test_payouts_api import exact_balance, new_seller, payout, until_final

FEE_BPS = 500  # the sellers' commission in these tests: 5 %


@pytest.fixture(scope="module")
async def svc(
    databases: Any, redis_url: str, redis_prefix: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Service]:
    database = await databases.create()
    settings = make_settings(
        database,
        redis_url,
        f"{redis_prefix}refunds:",
        str(tmp_path_factory.mktemp("refunds")),
        retry_base_ms=20,
        retry_cap_ms=100,
        retry_poll_ms=20,
        balance_fold_ms=200,
    )
    async with start_service(settings) as service:
        yield service


async def captured_payment(svc: Service, *amounts: int) -> tuple[str, list[str], list[str]]:
    """A payment with one order per amount, each for a new seller, captured and recorded:
    (payment id, order ids, sellers)."""
    sellers = [await new_seller(svc, bps=FEE_BPS) for _ in amounts]
    r = await svc.pay(payment_body(f"B-{uuid.uuid4().hex[:8]}", "O", list(zip(sellers, amounts, strict=True))))
    assert r.status_code == 202, r.text
    payment_id = r.json()["paymentId"]

    async def recorded() -> bool:
        got = await svc.get_payment(payment_id)
        return got.json()["status"] in ("CAPTURED", "CAPTURED_PARTIALLY", "CAPTURE_FAILED") and await svc.fetchval(
            "SELECT count(*) FROM journal_entries WHERE journal_type = 'CAPTURE' AND seller_id = ANY($1::text[])",
            sellers,
        ) == sum(1 for a in amounts if a % 100 != 66)

    await svc.until(recorded, timeout=20)
    orders = [o["paymentOrderId"] for o in (await svc.get_payment(payment_id)).json()["paymentOrders"]]
    return payment_id, orders, sellers


async def refund(
    svc: Service, payment_id: str, order_id: str, amount: int, *, key: str | None = None, currency: str = "EUR"
) -> Any:
    headers = svc.auth("payment:write")
    if key is not None:
        headers["Idempotency-Key"] = key
    body = {"paymentOrderId": order_id, "amount": {"quantity": amount, "currency": currency}, "reason": "returned"}
    return await svc.client.post(f"/api/v1/payments/{payment_id}/refunds", json=body, headers=headers)


async def final(svc: Service, refund_id: str) -> dict[str, Any]:
    """The refund once it is final at the PSP and recorded in the ledger (when it succeeded)."""
    got: dict[str, Any] = {}

    async def done() -> bool:
        got.update((await svc.client.get(f"/api/v1/refunds/{refund_id}", headers=svc.auth("payment:read"))).json())
        if got["status"] == "PENDING":
            return False
        internal = await svc.fetchval("SELECT refund_id FROM refunds WHERE refund_id = $1", _internal(refund_id))
        recorded = await svc.fetchval(
            "SELECT count(*) FROM journal_entries WHERE journal_id = $1", f"REFUND:{internal}"
        )
        return got["status"] == "FAILED" or recorded == 1

    await svc.until(done, timeout=20)
    return got


def _internal(refund_id: str) -> int:
    from marketplace_pay.shared.ids import REFUND_PREFIX, decode_public_id

    return decode_public_id(REFUND_PREFIX, refund_id)


async def postings_of(svc: Service, journal_id: str) -> set[tuple[str, int]]:
    rows = await svc.fetch("SELECT account_code, signed_amount_minor FROM postings WHERE journal_id = $1", journal_id)
    return {(r["account_code"].split(".")[0], r["signed_amount_minor"]) for r in rows}


def fee(amount: int) -> int:
    return (amount * FEE_BPS + 5000) // 10000


# (refunds in order: amount, expected status, expected commission refunded), the order captured 1000
SCENARIOS = {
    "partial refund": ([(400, "SUCCEEDED", 20)], "PARTIALLY_REFUNDED"),
    "refund of the rest gives back the whole fee": ([(333, "SUCCEEDED", 17), (667, "SUCCEEDED", 33)], "REFUNDED"),
    "refund declined (amount ending in 77)": ([(177, "FAILED", None)], "CAPTURED"),
    "declined, then refunded": ([(277, "FAILED", None), (1000, "SUCCEEDED", 50)], "REFUNDED"),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_refund_scenarios_event_to_journals_postings_and_balance(svc: Service, name: str) -> None:
    refunds, payment_status = SCENARIOS[name]
    payment_id, [order_id], [seller] = await captured_payment(svc, 1000)
    balance = 1000 - fee(1000)
    refunded = 0
    for amount, status, commission in refunds:
        r = await refund(svc, payment_id, order_id, amount)
        assert r.status_code == 202, r.text
        body = r.json()
        assert body["status"] == "PENDING" and body["refundId"].startswith("rf_")
        assert r.headers["location"] == f"/api/v1/refunds/{body['refundId']}"
        done = await final(svc, body["refundId"])
        assert done["status"] == status
        internal = _internal(body["refundId"])
        if status == "SUCCEEDED":
            assert await postings_of(svc, f"REFUND:{internal}") == {
                ("MERCHANT_PAYABLE", -amount),
                ("PSP_RECEIVABLES", -amount),
            }
            assert await postings_of(svc, f"COMMISSION_REFUND:{internal}") == {
                ("PLATFORM_COMMISSION_REVENUE", -commission),
                ("MERCHANT_PAYABLE", commission),
            }
            balance += -amount + commission
            refunded += amount
        else:
            assert not await svc.fetch("SELECT 1 FROM journal_entries WHERE journal_id LIKE $1", f"%REFUND:{internal}")
        assert await exact_balance(svc, seller) == balance
    payment = (await svc.get_payment(payment_id)).json()
    assert payment["status"] == payment_status
    assert payment["refundedAmount"] == {"quantity": refunded, "currency": "EUR"}
    assert payment["paymentOrders"][0]["refundedAmount"]["quantity"] == refunded
    if payment_status == "REFUNDED":
        assert balance == 0  # the seller is back where it started: every cent and the whole fee


@pytest.mark.parametrize(
    ("case", "status", "field"),
    [
        ("above what is left", 422, "amount.quantity"),
        ("above what is left with one pending", 422, "amount.quantity"),
        ("of a failed order", 422, "paymentOrderId"),
        ("in another currency", 422, "amount.currency"),
        ("of another payment's order", 404, None),
        ("of an unknown payment", 404, None),
        ("with a malformed order id", 400, None),
        ("of zero", 400, None),
        ("with a NUL in its reason", 400, None),
    ],
)
async def test_refused_refunds_are_problems_and_write_nothing(
    svc: Service, case: str, status: int, field: str | None
) -> None:
    payment_id, [order_id, failed_order], _ = await captured_payment(svc, 1000, 1066)  # 1066: capture declined
    other_payment, [other_order], _ = await captured_payment(svc, 500)
    target, order, amount, currency = payment_id, order_id, 1001, "EUR"
    if case == "above what is left with one pending":
        assert (await refund(svc, payment_id, order_id, 600)).status_code == 202
        amount = 401
    elif case == "of a failed order":
        order, amount = failed_order, 10
    elif case == "in another currency":
        amount, currency = 10, "USD"
    elif case == "of another payment's order":
        order, amount = other_order, 10
    elif case == "of an unknown payment":
        target, amount = other_payment[:-2] + ("AA" if not other_payment.endswith("AA") else "AB"), 10
    elif case == "with a malformed order id":
        order, amount = "po_nope", 10
    elif case == "of zero":
        amount = 0
    before = await svc.fetchval("SELECT count(*) FROM refunds")
    if case == "with a NUL in its reason":
        r = await svc.client.post(
            f"/api/v1/payments/{target}/refunds",
            json={"paymentOrderId": order, "amount": {"quantity": 10, "currency": "EUR"}, "reason": "a\u0000b"},
            headers=svc.auth("payment:write"),
        )
    else:
        r = await refund(svc, target, order, amount, currency=currency)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    if field is not None:
        assert field in [e["field"] for e in r.json()["errors"]]
    assert await svc.fetchval("SELECT count(*) FROM refunds") == before


async def test_idempotency_key_replays_refuses_another_body_and_concurrent_duplicates_make_one(svc: Service) -> None:
    payment_id, [order_id], _ = await captured_payment(svc, 1000)
    first = await refund(svc, payment_id, order_id, 100, key="rf-key-1")
    again = await refund(svc, payment_id, order_id, 100, key="rf-key-1")
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json() and again.headers["idempotent-replayed"] == "true"
    other = await refund(svc, payment_id, order_id, 200, key="rf-key-1")
    assert other.status_code == 422
    answers = await asyncio.gather(*(refund(svc, payment_id, order_id, 50, key="rf-key-2") for _ in range(10)))
    assert {a.status_code for a in answers} <= {202, 409}
    ids = {a.json()["refundId"] for a in answers if a.status_code == 202}
    assert len(ids) == 1
    assert await svc.fetchval("SELECT count(*) FROM refunds WHERE payment_order_id = $1", _order(order_id)) == 2


def _order(order_id: str) -> int:
    from marketplace_pay.shared.ids import PAYMENT_ORDER_PREFIX, decode_public_id

    return decode_public_id(PAYMENT_ORDER_PREFIX, order_id)


async def test_ten_concurrent_refunds_never_refund_more_than_was_captured(svc: Service) -> None:
    payment_id, [order_id], [seller] = await captured_payment(svc, 1000)
    answers = await asyncio.gather(*(refund(svc, payment_id, order_id, 300) for _ in range(10)))
    accepted = [a.json()["refundId"] for a in answers if a.status_code == 202]
    assert len(accepted) == 3 and sorted({a.status_code for a in answers}) == [202, 422]
    for refund_id in accepted:
        assert (await final(svc, refund_id))["status"] == "SUCCEEDED"
    payment = (await svc.get_payment(payment_id)).json()
    assert payment["refundedAmount"]["quantity"] == 900 and payment["status"] == "PARTIALLY_REFUNDED"
    assert await exact_balance(svc, seller) == 1000 - fee(1000) - 900 + 3 * fee(300)


async def test_a_refund_event_delivered_twice_records_its_journals_once(svc: Service) -> None:
    payment_id, [order_id], [seller] = await captured_payment(svc, 1000)
    refund_id = (await refund(svc, payment_id, order_id, 1000)).json()["refundId"]
    await final(svc, refund_id)
    balance = await exact_balance(svc, seller)
    assert balance == 0
    row = await svc.fetch(
        "SELECT payload FROM outbox WHERE event_type = 'refund_succeeded' AND event_id = $1", f"{refund_id}:succeeded"
    )
    assert len(row) == 1
    # the same event, handed to the ledger's handler again (as a redelivery after a crash would)
    [sub] = [s for s in svc.container.subscriptions if s.consumer == "ledger-record-refunds"]
    event = await _envelope(svc, f"{refund_id}:succeeded")
    await sub.handler([event, event])
    assert await exact_balance(svc, seller) == balance
    internal = _internal(refund_id)
    assert (
        await svc.fetchval(
            "SELECT count(*) FROM journal_entries WHERE journal_id = ANY($1::text[])",
            [f"REFUND:{internal}", f"COMMISSION_REFUND:{internal}"],
        )
        == 2
    )


async def _envelope(svc: Service, event_id: str) -> Envelope[RefundSucceeded]:
    from marketplace_pay.infra.codec import decode_envelope

    [row] = await svc.fetch("SELECT payload FROM outbox WHERE event_id = $1", event_id)
    return decode_envelope(bytes(row["payload"]), RefundSucceeded)


async def test_a_refund_after_a_payout_takes_the_seller_below_zero_and_reconcile_is_clean(svc: Service) -> None:
    payment_id, [order_id], [seller] = await captured_payment(svc, 2000)
    r = await payout(svc, seller)  # everything: 1900
    assert r.status_code == 202, r.text
    [paid] = await until_final(svc, seller)
    assert paid["status"] == "PAID" and await exact_balance(svc, seller) == 0
    refund_id = (await refund(svc, payment_id, order_id, 1000)).json()["refundId"]
    assert (await final(svc, refund_id))["status"] == "SUCCEEDED"
    assert await exact_balance(svc, seller) == -1000 + fee(1000)  # the seller owes the platform 950

    async def reported() -> bool:  # the real-time balance shows the debt, never hides it
        got = await svc.client.get(f"/api/v1/sellers/{seller}/balance", headers=svc.auth("FINANCE"))
        return bool(got.json()["balance"] == {"quantity": -950, "currency": "EUR"})

    await svc.until(reported, timeout=10)
    # a payout now finds nothing available
    assert (await payout(svc, seller)).status_code == 422
    report = await svc.container.balances.reconcile()
    assert report.ok, report.differences()


async def test_reads_and_roles(svc: Service) -> None:
    payment_id, [order_id], _ = await captured_payment(svc, 1000)
    refund_id = (await refund(svc, payment_id, order_id, 10)).json()["refundId"]
    for role in ("payment:read", "payment:write", "FINANCE"):
        one = await svc.client.get(f"/api/v1/refunds/{refund_id}", headers=svc.auth(role))
        listed = await svc.client.get(f"/api/v1/payments/{payment_id}/refunds", headers=svc.auth(role))
        assert one.status_code == listed.status_code == 200
        assert [x["refundId"] for x in listed.json()["data"]] == [refund_id]
    assert (
        await svc.client.get(f"/api/v1/refunds/{refund_id}", headers=svc.auth("SELLER", seller="X"))
    ).status_code == 403
    assert (await svc.client.get("/api/v1/refunds/rf_AAAAAAAAAAA", headers=svc.auth("FINANCE"))).status_code == 404
    assert (await svc.client.get("/api/v1/refunds/nope", headers=svc.auth("FINANCE"))).status_code == 404
    missing = payment_id[:-1] + ("B" if payment_id[-1] != "B" else "C")
    assert (await svc.client.get(f"/api/v1/payments/{missing}/refunds", headers=svc.auth("FINANCE"))).status_code == 404
    r = await svc.client.post(
        f"/api/v1/payments/{payment_id}/refunds",
        json={"paymentOrderId": order_id, "amount": {"quantity": 1, "currency": "EUR"}},
        headers=svc.auth("payment:read"),
    )
    assert r.status_code == 403


async def test_settlement_takes_captured_minus_refunded_once_and_reconcile_is_clean(svc: Service) -> None:
    async def quiet() -> bool:  # earlier tests' refunds final and recorded
        return bool(
            await svc.fetchval(
                """SELECT count(*) FILTER (WHERE status = 'PENDING') = 0
                          AND count(*) FILTER (WHERE status = 'SUCCEEDED')
                              = (SELECT count(*) FROM journal_entries WHERE journal_type = 'REFUND')
                   FROM refunds"""
            )
        )

    await svc.until(quiet, timeout=20)
    await svc.container.treasury.settle()  # what earlier tests of this module left
    payment_id, [order_id], _ = await captured_payment(svc, 3000)
    refund_id = (await refund(svc, payment_id, order_id, 1200)).json()["refundId"]
    assert (await final(svc, refund_id))["status"] == "SUCCEEDED"
    [settled] = await svc.container.treasury.settle()
    assert (settled.gross_minor, settled.fee_minor) == (1800, (1800 * 30 + 5000) // 10000)
    assert len(settled.journal_ids) == 2  # the CAPTURE and the REFUND, each covered once
    assert await svc.container.treasury.settle() == []  # a second run finds nothing

    async def owed_nothing() -> bool:
        return (await svc.container.balances.of_account("PSP_RECEIVABLES.GLOBAL.EUR")).balance_minor == 0

    await svc.until(owed_nothing, timeout=20)
    report = await svc.container.balances.reconcile(grace_s=0)
    assert report.ok, report.drift


async def test_many_concurrent_404s_do_not_starve_the_connection_pool(svc: Service) -> None:
    payment_id, _, _ = await captured_payment(svc, 1000)
    _, [other_order], _ = await captured_payment(svc, 500)
    pool_max = svc.container.settings.db.pool_max
    answers = await asyncio.wait_for(
        asyncio.gather(*(refund(svc, payment_id, other_order, 10) for _ in range(2 * pool_max + 5))), timeout=30
    )
    assert {a.status_code for a in answers} == {404}


async def test_a_refund_whose_capture_is_not_recorded_yet_is_tried_again_never_dead_lettered(svc: Service) -> None:
    from datetime import UTC, datetime

    from marketplace_pay.infra.failures import TransientError
    from marketplace_pay.shared.envelope import envelope

    event = RefundSucceeded(
        refund_id="999999",
        public_refund_id="rf_AAAAAAAAD0I",
        payment_id="1",
        public_payment_id="pay_AAAAAAAAAAE",
        payment_order_id="2",
        public_payment_order_id="po_AAAAAAAAAAI",
        seller_id="SELLER-111",
        amount_minor=100,
        currency="EUR",
        timestamp=datetime.now(UTC),
        order_amount_minor=1000,
        order_refunded_minor=100,
    )
    [sub] = [s for s in svc.container.subscriptions if s.consumer == "ledger-record-refunds"]
    with pytest.raises(TransientError):  # the dispatcher retries it without counting an attempt
        await sub.handler([envelope(event, aggregate_id="2", timestamp=event.timestamp, trace_id="0" * 32)])
    assert not await svc.fetch("SELECT 1 FROM journal_entries WHERE journal_id = 'REFUND:999999'")
