"""Fakes of the payments context's ports."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import msgspec

from marketplace_pay.payments.application.ports import (
    AuthorizationOutcome,
    CaptureOutcome,
    Keyed,
    NewOrder,
    OrderChange,
    PendingAuthorization,
    PspTimeout,
)
from marketplace_pay.payments.application.ports import (
    StoredPayment as FoundPayment,
)
from marketplace_pay.payments.application.views import OrderState, PaymentView, payment_view
from marketplace_pay.payments.domain.payment import Payment, PaymentStatus
from marketplace_pay.payments.domain.payment_order import PaymentOrder, PaymentOrderStatus
from marketplace_pay.shared.envelope import Envelope
from marketplace_pay.shared.ids import SnowflakeGenerator
from marketplace_pay.shared.money import Money
from tests.fakes.db import FakeDatabase, FakeUnitOfWork, StoredOrder, StoredPayment


class FakePaymentStore:
    """The pay-in store: every call is one committed transaction."""

    def __init__(self, db: FakeDatabase) -> None:
        self._db = db

    def _same_key(self, stored: StoredPayment, keyed: Keyed, buyer_id: str, order_id: str, total: Money) -> bool:
        if stored.client_id != keyed.client_id:
            return False
        if keyed.idempotency_key is not None:
            return stored.idempotency_key == keyed.idempotency_key
        p = stored.payment
        return stored.idempotency_key is None and (p.buyer_id, p.order_id, p.total) == (buyer_id, order_id, total)

    async def add(self, payment: Payment, *, keyed: Keyed, trace_id: str, traceparent: str | None) -> bool:
        t = self._db.tables
        if payment.payment_id in t.payments or any(
            self._same_key(s, keyed, payment.buyer_id, payment.order_id, payment.total) for s in t.payments.values()
        ):
            return False
        t.payments[payment.payment_id] = StoredPayment(
            copy.deepcopy(payment), keyed.client_id, keyed.idempotency_key, keyed.fingerprint, trace_id, traceparent
        )
        self._db.next_xid()
        return True

    async def find(self, keyed: Keyed, *, buyer_id: str, order_id: str, total: Money) -> FoundPayment | None:
        for stored in self._db.tables.payments.values():
            if self._same_key(stored, keyed, buyer_id, order_id, total):
                response = self._db.tables.responses.get(stored.payment.payment_id)
                return FoundPayment(copy.deepcopy(stored.payment), stored.fingerprint, response)
        return None

    async def record_authorization(
        self, payment: Payment, events: Sequence[Envelope[Any]], response: tuple[int, bytes] | None
    ) -> bool:
        stored = self._db.tables.payments.get(payment.payment_id)
        if stored is None or stored.payment.status is not PaymentStatus.PENDING_AUTH:
            return False
        stored.payment.status = payment.status
        stored.payment.updated_at = payment.updated_at
        stored.auth_check_after = None
        self._db.tables.outbox.extend(events)
        if response is not None:
            self._db.tables.responses.setdefault(payment.payment_id, response)
        self._db.next_xid()
        return True

    async def keep_response(self, payment_id: int, response: tuple[int, bytes]) -> None:
        self._db.tables.responses.setdefault(payment_id, response)

    async def get(self, payment_id: int) -> Payment | None:
        stored = self._db.tables.payments.get(payment_id)
        return None if stored is None else copy.deepcopy(stored.payment)

    async def claim_pending_authorizations(
        self, *, created_before: datetime, lease_ms: int, limit: int
    ) -> list[PendingAuthorization]:
        now = self._db.clock.now()
        due = sorted(
            (
                s
                for s in self._db.tables.payments.values()
                if s.payment.status is PaymentStatus.PENDING_AUTH
                and s.payment.created_at < created_before
                and (s.auth_check_after is None or s.auth_check_after < now)
            ),
            key=lambda s: s.payment.created_at,
        )[:limit]
        for s in due:
            s.auth_check_after = now + timedelta(milliseconds=lease_ms)
        return [PendingAuthorization(copy.deepcopy(s.payment), s.trace_id, s.traceparent) for s in due]


class FakeCaptureStore:
    def __init__(self, db: FakeDatabase) -> None:
        self._db = db

    async def open_orders(self, orders: Sequence[NewOrder]) -> list[PaymentOrder]:
        t = self._db.tables
        for new in orders:
            if new.order.payment_order_id not in t.orders:
                t.orders[new.order.payment_order_id] = StoredOrder(
                    copy.deepcopy(new.order), new.trace_id, new.traceparent
                )
        self._db.next_xid()
        waiting = [t.orders[n.order.payment_order_id].order for n in orders]
        return [
            copy.deepcopy(o) for o in waiting if o.status is PaymentOrderStatus.CAPTURE_REQUESTED and o.retry_count == 0
        ]

    async def orders(self, payment_order_ids: Sequence[int]) -> dict[int, PaymentOrder]:
        t = self._db.tables
        return {i: copy.deepcopy(t.orders[i].order) for i in payment_order_ids if i in t.orders}

    async def save_attempts(self, changes: Sequence[OrderChange], events: Sequence[Envelope[Any]]) -> set[int]:
        t = self._db.tables
        applied: set[int] = set()
        for order, before in changes:
            stored = t.orders.get(order.payment_order_id)
            if stored is None or stored.order.state() != before or stored.order.status.terminal:
                continue
            updated = copy.deepcopy(order)
            updated.updated_at = max(stored.order.updated_at, order.updated_at)
            stored.order = updated
            applied.add(order.payment_order_id)
            if updated.status.terminal:  # the payment's roll-up, by the domain's own rule
                payment = t.payments[updated.payment_id].payment
                if payment.status is PaymentStatus.AUTHORIZED:
                    captured = updated.amount if updated.status is PaymentOrderStatus.CAPTURED else None
                    payment.record_order_outcome(captured=captured, now=updated.updated_at)
        t.outbox.extend(e for e in events if int(e.aggregate_id) in applied)
        self._db.next_xid()
        return applied

    async def overdue_retries(self, *, before: datetime, limit: int) -> list[tuple[int, int, int]]:
        due = sorted(
            (
                s.order
                for s in self._db.tables.orders.values()
                if s.order.status is PaymentOrderStatus.PENDING_CAPTURE
                and s.order.next_retry_at is not None
                and s.order.next_retry_at < before
            ),
            key=lambda o: o.next_retry_at or before,
        )[:limit]
        return [(o.payment_order_id, o.retry_count, int((o.next_retry_at or before).timestamp() * 1000)) for o in due]

    async def stuck_orders(self, *, unchanged_since: datetime, limit: int) -> list[PaymentOrder]:
        stuck = [
            copy.deepcopy(s.order)
            for s in self._db.tables.orders.values()
            if not s.order.status.terminal
            and s.order.updated_at < unchanged_since
            and (s.order.next_retry_at is None or s.order.next_retry_at < unchanged_since)
        ]
        return sorted(stuck, key=lambda o: o.updated_at)[:limit]

    async def unknown_outcomes(self) -> int:
        return sum(
            1
            for s in self._db.tables.orders.values()
            if s.order.psp_outcome_unknown and s.order.status is PaymentOrderStatus.PENDING_CAPTURE
        )


class FakeRetryUnitOfWork(FakeUnitOfWork):
    async def lock_orders(self, payment_order_ids: Sequence[int]) -> dict[int, tuple[PaymentOrder, str, str | None]]:
        orders = self.tables.orders
        return {
            i: (copy.deepcopy(orders[i].order), orders[i].trace_id, orders[i].traceparent)
            for i in payment_order_ids
            if i in orders
        }

    async def mark_dispatched(self, payment_order_ids: Sequence[int], *, touch: bool = False) -> None:
        now = self._db.clock.now()
        for i in payment_order_ids:
            order = self.tables.orders[i].order
            order.next_retry_at = None
            if touch:
                order.updated_at = max(order.updated_at, now)


class FakeRetryQueue:
    """The Redis retry queue's contract, in memory (tests/contract keeps the two in step)."""

    def __init__(self) -> None:
        self.waiting: dict[tuple[int, int], int] = {}
        self.inflight: dict[tuple[int, int], int] = {}

    async def schedule(self, items: Sequence[tuple[int, int, int]]) -> None:
        for po, attempt, due_ms in items:
            self.waiting[(po, attempt)] = due_ms

    async def pop_due(self, *, now_ms: int, limit: int) -> list[tuple[int, int]]:
        due = sorted((due_ms, item) for item, due_ms in self.waiting.items() if due_ms <= now_ms)[:limit]
        for _, item in due:
            del self.waiting[item]
            self.inflight[item] = now_ms
        return [item for _, item in due]

    async def ack(self, items: Sequence[tuple[int, int]]) -> None:
        for item in items:
            self.inflight.pop(item, None)

    async def reclaim(self, *, now_ms: int, older_than_ms: int, limit: int = 1000) -> int:
        stale = [item for item, popped in self.inflight.items() if popped <= now_ms - older_than_ms][:limit]
        for item in stale:
            del self.inflight[item]
            self.waiting[item] = now_ms
        return len(stale)

    async def sizes(self) -> tuple[int, int]:
        return len(self.waiting), len(self.inflight)


class FakeIds:
    def __init__(self) -> None:
        self._gen = SnowflakeGenerator(1)

    def next_id(self, shard: int) -> int:
        return self._gen.next_id(shard)


class ScriptedAuthorizationGateway:
    """Answers what the test says, counts calls, and can hold calls until released."""

    def __init__(self, outcome: AuthorizationOutcome = AuthorizationOutcome.APPROVED) -> None:
        self.outcome = outcome
        self.calls: list[int] = []
        self.status_calls: list[int] = []
        self.gate: asyncio.Event | None = None
        self.hang = False
        self.known: dict[int, AuthorizationOutcome] = {}

    async def authorize(self, *, payment_id: int, buyer_id: str, amount: Money) -> AuthorizationOutcome:
        self.calls.append(payment_id)
        self.known[payment_id] = self.outcome  # the PSP decided, whether or not we hear back
        if self.gate is not None:
            await self.gate.wait()
        if self.hang:
            await asyncio.sleep(3600)
        return self.outcome

    async def authorization_status(
        self, *, payment_id: int, buyer_id: str, amount: Money
    ) -> AuthorizationOutcome | None:
        self.status_calls.append(payment_id)
        return self.known.get(payment_id)


@dataclass(frozen=True)
class Lost:
    """A scripted call whose answer never reaches the caller; the PSP did `did` all the same."""

    did: CaptureOutcome


class PspCall(msgspec.Struct, frozen=True):
    op: str  # capture | capture_status
    key: str
    did: CaptureOutcome | None  # what the PSP did under the key (None: nothing, the key is unknown)
    answered: bool


class ScriptedCaptureGateway:
    """An idempotent PSP whose behaviour the test scripts, per order amount, one item per call:
    an outcome (answered) or `Lost(outcome)` (the PSP acts, the answer is lost). A repeated key
    replays what the PSP did the first time under it — the script item only says whether the
    answer arrives. Default: CAPTURED. Records every call."""

    def __init__(self, answers: dict[int, list[CaptureOutcome | Lost]] | None = None) -> None:
        self.answers = answers or {}
        self.done: dict[str, CaptureOutcome] = {}
        self.calls: list[PspCall] = []
        self.fail_with: BaseException | None = None
        self.lose_status_answers = 0
        self._used: dict[int, int] = {}

    def _next(self, amount: Money) -> CaptureOutcome | Lost:
        script = self.answers.get(amount.amount_minor, [CaptureOutcome.CAPTURED])
        n = self._used.get(amount.amount_minor, 0)
        self._used[amount.amount_minor] = n + 1
        return script[min(n, len(script) - 1)]

    async def capture(self, *, idempotency_key: str, payment_order_id: str, amount: Money) -> CaptureOutcome:
        if self.fail_with is not None:
            raise self.fail_with
        item = self._next(amount)
        did = item.did if isinstance(item, Lost) else item
        did = self.done.setdefault(idempotency_key, did)
        self.calls.append(PspCall("capture", idempotency_key, did, not isinstance(item, Lost)))
        if isinstance(item, Lost):
            raise PspTimeout(idempotency_key)
        return did

    async def capture_status(
        self, *, idempotency_key: str, payment_order_id: str, amount: Money
    ) -> CaptureOutcome | None:
        did = self.done.get(idempotency_key)
        answered = self.lose_status_answers <= 0
        self.lose_status_answers -= 1
        self.calls.append(PspCall("capture_status", idempotency_key, did, answered))
        if not answered:
            raise PspTimeout(idempotency_key)
        return did

    def captures_by_key(self) -> dict[str, CaptureOutcome]:
        """What the PSP did, per key it received."""
        return dict(self.done)


class FakePaymentViews:
    """The payment reads, over the fake tables."""

    def __init__(self, db: FakeDatabase) -> None:
        self._db = db

    async def view(self, payment_id: int) -> PaymentView | None:
        stored = self._db.tables.payments.get(payment_id)
        if stored is None:
            return None
        orders = {
            o.order.payment_order_id: OrderState(o.order.status.value, o.order.retry_count, o.order.updated_at)
            for o in self._db.tables.orders.values()
            if o.order.payment_id == payment_id
        }
        return payment_view(stored.payment, orders)
