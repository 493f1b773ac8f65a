"""Pay-in through the use cases, wired by bootstrap() with fakes (no I/O)."""

from __future__ import annotations

import asyncio
import hashlib

import msgspec
import pytest

from marketplace_pay.ledger.application.directory import OnboardSeller
from marketplace_pay.ledger.domain.accounts import AccountStatus
from marketplace_pay.payments.adapters.http import render
from marketplace_pay.payments.application.create_payment import Created, CreatePayment, LineRequest, Replayed
from marketplace_pay.payments.application.ports import AuthorizationOutcome, Keyed
from marketplace_pay.payments.domain.payment import PaymentStatus
from marketplace_pay.shared.errors import ConflictError, UnprocessableError, ValidationError
from marketplace_pay.shared.money import Currency, Money
from tests.fakes import ScriptedAuthorizationGateway
from tests.world import World as BaseWorld


def eur(q: int) -> Money:
    return Money(q, Currency.EUR)


def cmd(
    lines: list[tuple[str, Money]] | None = None,
    *,
    total: Money | None = None,
    buyer: str = "BUYER-1",
    order: str = "ORDER-1",
    key: str | None = None,
    fingerprint: bytes = b"same",
    client: str = "tests",
) -> CreatePayment:
    lines = lines or [("SELLER-111", eur(1000)), ("SELLER-222", eur(2000))]
    return CreatePayment(
        buyer_id=buyer,
        order_id=order,
        total=total or Money(sum(m.amount_minor for _, m in lines), lines[0][1].currency),
        lines=[LineRequest(s, m) for s, m in lines],
        trace_id="0" * 32,
        keyed=Keyed(client, key, None if key is None else hashlib.sha256(fingerprint).digest()),
    )


class World(BaseWorld):
    def __init__(self, outcome: AuthorizationOutcome = AuthorizationOutcome.APPROVED) -> None:
        super().__init__(psp_auth=ScriptedAuthorizationGateway(outcome))
        self.psp = self.psp_auth  # type: ignore[assignment] - here the PSP under test authorizes


async def test_approved_payment_is_authorized_with_one_event_in_the_outbox() -> None:
    w = World()
    result = await w.create(cmd())
    assert isinstance(result, Created) and not result.replayed
    assert result.payment.status is PaymentStatus.AUTHORIZED
    [event] = w.db.tables.outbox
    assert event.event_type == "payment_authorized"
    assert [line.payment_order_id for line in event.data.payment_lines] == [
        str(line.payment_order_id) for line in result.payment.lines
    ]
    assert len(w.psp.calls) == 1


async def test_declined_payment_has_no_event() -> None:
    w = World(AuthorizationOutcome.DECLINED)
    result = await w.create(cmd())
    assert isinstance(result, Created) and result.payment.status is PaymentStatus.DECLINED
    assert w.db.tables.outbox == []
    assert render(result.payment)[0] == 402


async def test_psp_timeout_leaves_pending_auth_and_the_resolver_finishes_it() -> None:
    w = World()
    w.psp.hang = True
    result = await w.create(cmd())
    assert isinstance(result, Created) and result.payment.status is PaymentStatus.PENDING_AUTH
    assert w.db.tables.outbox == []
    w.clock.advance(ms=5000)
    assert await w.container.payments.resolve_pending_authorizations() == 1
    stored = w.db.tables.payments[result.payment.payment_id].payment
    assert stored.status is PaymentStatus.AUTHORIZED
    assert [e.event_type for e in w.db.tables.outbox] == ["payment_authorized"]
    assert await w.container.payments.resolve_pending_authorizations() == 0  # nothing left pending


# Validation, in the documented order (docs/api.md); nothing is written and the PSP is not called.
@pytest.mark.parametrize(
    ("command", "error", "field"),
    [
        (cmd([("SELLER-111", eur(1000)), ("SELLER-111", eur(2000))]), ValidationError, "paymentOrders[1].sellerId"),
        (cmd(total=eur(2999)), ValidationError, "totalAmount.quantity"),
        (
            cmd([("SELLER-111", eur(1000)), ("SELLER-222", Money(2000, Currency.USD))], total=eur(3000)),
            ValidationError,
            "paymentOrders[1].amount.currency",
        ),
        (cmd([("SELLER-999", eur(1000))]), UnprocessableError, "paymentOrders[0].sellerId"),
    ],
)
async def test_invalid_requests_write_nothing(command: CreatePayment, error: type[Exception], field: str) -> None:
    w = World()
    with pytest.raises(error) as raised:
        await w.create(command)
    assert raised.value.errors[0].field == field  # type: ignore[attr-defined]
    assert w.db.tables.payments == {} and w.psp.calls == []


async def test_duplicate_sellers_are_reported_before_a_wrong_sum() -> None:
    w = World()
    with pytest.raises(ValidationError, match="Duplicate seller"):
        await w.create(cmd([("SELLER-111", eur(1)), ("SELLER-111", eur(2))], total=eur(10)))


async def test_inactive_and_foreign_currency_sellers_are_422() -> None:
    w = World()
    await w.sellers.set_status("SELLER-222", AccountStatus.SUSPENDED)
    await w.sellers.add(OnboardSeller("SELLER-USD", Currency.USD, 0))
    with pytest.raises(UnprocessableError) as raised:
        await w.create(cmd([("SELLER-222", eur(1000)), ("SELLER-USD", eur(5))]))
    messages = [e.message for e in raised.value.errors]
    assert "not active" in messages[0] and "settles in USD" in messages[1]


async def test_business_key_repeat_returns_the_payment_without_a_second_authorization() -> None:
    w = World()
    first = await w.create(cmd())
    again = await w.create(cmd())
    assert isinstance(first, Created) and isinstance(again, Created)
    assert again.replayed and again.payment.payment_id == first.payment.payment_id
    assert len(w.psp.calls) == 1 and len(w.db.tables.payments) == 1


async def test_idempotency_key_replays_the_first_response() -> None:
    w = World()
    first = await w.create(cmd(key="k1"))
    again = await w.create(cmd(key="k1"))
    assert isinstance(first, Created) and isinstance(again, Replayed)
    assert (again.status, msgspec.json.decode(again.body)["paymentId"]) == (202, first.payment.public_id)
    assert len(w.psp.calls) == 1


async def test_idempotency_key_with_another_body_is_422() -> None:
    w = World()
    await w.create(cmd(key="k1"))
    with pytest.raises(UnprocessableError, match="different request"):
        await w.create(cmd(key="k1", fingerprint=b"other"))


async def test_idempotency_key_in_progress_is_409_and_a_new_key_is_a_new_payment() -> None:
    w = World()
    w.psp.gate = asyncio.Event()
    first = asyncio.create_task(w.create(cmd(key="k1")))
    await asyncio.sleep(0.01)
    with pytest.raises(ConflictError):
        await w.create(cmd(key="k1"))
    w.psp.gate.set()
    await first
    # Same buyer/order/amount under another key: a new attempt (e.g. after a decline).
    other = await w.create(cmd(key="k2"))
    assert isinstance(other, Created) and not other.replayed
    assert len(w.db.tables.payments) == 2


async def test_the_key_decides_before_the_sellers() -> None:
    """A repeat of a keyed request is answered from what was stored, even after its seller was
    suspended — a client retrying after a lost response must not be told to pay again."""
    w = World()
    first = await w.create(cmd(key="k1"))
    await w.sellers.set_status("SELLER-222", AccountStatus.SUSPENDED)
    w.clock.advance(ms=5000)  # the directory cache has moved on
    again = await w.create(cmd(key="k1"))
    assert isinstance(first, Created) and isinstance(again, Replayed)
    assert msgspec.json.decode(again.body)["paymentId"] == first.payment.public_id
    with pytest.raises(UnprocessableError, match="different request"):
        await w.create(cmd(key="k1", fingerprint=b"other"))
    with pytest.raises(UnprocessableError, match="sellers cannot be paid"):
        await w.create(cmd(key="k2"))


async def test_a_key_used_with_another_body_is_422_after_its_response_is_gone() -> None:
    w = World()
    first = await w.create(cmd(key="k1"))
    assert isinstance(first, Created)
    w.db.tables.responses.clear()  # the kept response expired (retention)
    with pytest.raises(UnprocessableError, match="different request"):
        await w.create(cmd(key="k1", fingerprint=b"other", total=eur(3000), buyer="BUYER-2"))
    again = await w.create(cmd(key="k1"))
    assert isinstance(again, Created) and again.replayed and again.payment.payment_id == first.payment.payment_id
    assert len(w.psp.calls) == 1 and len(w.db.tables.payments) == 1


async def test_keys_and_business_keys_belong_to_the_client() -> None:
    w = World()
    a = await w.create(cmd(key="k1", client="shop-a"))
    b = await w.create(cmd(key="k1", client="shop-b", fingerprint=b"other"))
    c = await w.create(cmd(client="shop-a"))
    d = await w.create(cmd(client="shop-b"))
    ids = {r.payment.payment_id for r in (a, b, c, d) if isinstance(r, Created) and not r.replayed}
    assert len(ids) == 4 and len(w.psp.calls) == 4


async def test_a_failed_request_leaves_a_pending_payment_for_the_resolver() -> None:
    w = World()

    async def boom(**_: object) -> AuthorizationOutcome:
        raise RuntimeError("psp adapter bug")

    w.psp.authorize = boom  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        await w.create(cmd(key="k1"))
    [stored] = w.db.tables.payments.values()
    assert stored.payment.status is PaymentStatus.PENDING_AUTH  # committed before the PSP call
