"""In-memory fakes of the ports, for unit tests. tests/contract runs the same assertions against
these and the Postgres adapters so the fakes cannot drift from the real thing."""

from __future__ import annotations

import asyncio
import copy
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any

from marketplace_pay.ledger.application.directory import OnboardSeller, Seller, seller_account_code
from marketplace_pay.ledger.domain.accounts import AccountStatus
from marketplace_pay.payments.application.ports import (
    Acquired,
    AuthorizationOutcome,
    CaptureOutcome,
    IdempotencyBegin,
    KeyInProgress,
    KeyMismatch,
    PendingAuthorization,
    Replay,
    StaleOrder,
)
from marketplace_pay.payments.domain.payment import Payment, PaymentStatus
from marketplace_pay.payments.domain.payment_order import PaymentOrder, PaymentOrderStatus
from marketplace_pay.shared.clock import Clock, FixedClock
from marketplace_pay.shared.envelope import Envelope
from marketplace_pay.shared.ids import SnowflakeGenerator
from marketplace_pay.shared.money import Currency, Money


@dataclass
class _StoredPayment:
    payment: Payment
    idempotency_key: str | None
    trace_id: str
    traceparent: str | None
    auth_check_after: datetime | None = None


@dataclass
class _Key:
    fingerprint: bytes
    state: str
    token: str | None
    lease_until: datetime | None
    status: int | None = None
    body: bytes | None = None


@dataclass
class _StoredOrder:
    order: PaymentOrder
    trace_id: str
    traceparent: str | None


@dataclass
class FakeState:
    payments: dict[int, _StoredPayment] = field(default_factory=dict)
    orders: dict[int, _StoredOrder] = field(default_factory=dict)
    keys: dict[tuple[str, str], _Key] = field(default_factory=dict)
    outbox: list[Envelope[Any]] = field(default_factory=list)
    inbox: set[tuple[str, str]] = field(default_factory=set)


class FakeDatabase:
    """Committed state; units of work copy it on entry and swap it in on commit."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.state = FakeState()
        self.clock = clock or FixedClock()
        self.commits = 0


class FakePaymentRepository:
    def __init__(self, state: FakeState, clock: Clock) -> None:
        self._s = state
        self._clock = clock

    async def add(
        self, payment: Payment, *, idempotency_key: str | None, trace_id: str, traceparent: str | None
    ) -> Payment | None:
        for stored in self._s.payments.values():
            p = stored.payment
            if idempotency_key is not None and stored.idempotency_key == idempotency_key:
                return copy.deepcopy(p)
            if (
                idempotency_key is None
                and stored.idempotency_key is None
                and (p.buyer_id, p.order_id, p.total) == (payment.buyer_id, payment.order_id, payment.total)
            ):
                return copy.deepcopy(p)
        self._s.payments[payment.payment_id] = _StoredPayment(
            copy.deepcopy(payment), idempotency_key, trace_id, traceparent
        )
        return None

    async def get(self, payment_id: int, *, for_update: bool = False) -> Payment | None:
        stored = self._s.payments.get(payment_id)
        return None if stored is None else copy.deepcopy(stored.payment)

    async def get_many(self, payment_ids: Sequence[int], *, for_update: bool = False) -> dict[int, Payment]:
        return {i: copy.deepcopy(self._s.payments[i].payment) for i in payment_ids if i in self._s.payments}

    async def save_roll_up(self, payment: Payment) -> None:
        stored = self._s.payments[payment.payment_id]
        if stored.payment.status is PaymentStatus.AUTHORIZED:
            stored.payment = copy.deepcopy(payment)

    async def save_authorization(self, payment: Payment) -> bool:
        stored = self._s.payments.get(payment.payment_id)
        if stored is None or stored.payment.status is not PaymentStatus.PENDING_AUTH:
            return False
        stored.payment.status = payment.status
        stored.payment.updated_at = payment.updated_at
        stored.auth_check_after = None
        return True

    async def claim_pending_authorizations(
        self, *, created_before: datetime, lease_ms: int, limit: int
    ) -> list[PendingAuthorization]:
        now = self._clock.now()
        due = sorted(
            (
                s
                for s in self._s.payments.values()
                if s.payment.status is PaymentStatus.PENDING_AUTH
                and s.payment.created_at < created_before
                and (s.auth_check_after is None or s.auth_check_after < now)
            ),
            key=lambda s: s.payment.created_at,
        )[:limit]
        for s in due:
            s.auth_check_after = now + timedelta(milliseconds=lease_ms)
        return [PendingAuthorization(copy.deepcopy(s.payment), s.trace_id, s.traceparent) for s in due]


class FakePaymentOrderRepository:
    def __init__(self, state: FakeState) -> None:
        self._s = state

    async def add_all(self, orders: Sequence[tuple[PaymentOrder, str, str | None]]) -> set[int]:
        created = set()
        for order, trace_id, traceparent in orders:
            if order.payment_order_id not in self._s.orders:
                self._s.orders[order.payment_order_id] = _StoredOrder(copy.deepcopy(order), trace_id, traceparent)
                created.add(order.payment_order_id)
        return created

    async def get_many(self, payment_order_ids: Sequence[int], *, for_update: bool = False) -> dict[int, PaymentOrder]:
        return {i: copy.deepcopy(self._s.orders[i].order) for i in payment_order_ids if i in self._s.orders}

    async def save_all(self, changes: Sequence[tuple[PaymentOrder, tuple[PaymentOrderStatus, int]]]) -> None:
        for order, (status, retry_count) in changes:
            stored = self._s.orders[order.payment_order_id]
            current = stored.order
            if (current.status, current.retry_count) != (status, retry_count) or current.status.terminal:
                raise StaleOrder(order.public_id)
        for order, _ in changes:
            stored = self._s.orders[order.payment_order_id]
            updated = copy.deepcopy(order)
            updated.updated_at = max(stored.order.updated_at, order.updated_at)
            stored.order = updated

    async def traces(self, payment_order_ids: Sequence[int]) -> dict[int, tuple[str, str | None]]:
        return {i: (self._s.orders[i].trace_id, self._s.orders[i].traceparent) for i in payment_order_ids if i in self._s.orders}

    async def mark_retries_dispatched(self, payment_order_ids: Sequence[int]) -> None:
        for i in payment_order_ids:
            order = self._s.orders[i].order
            if order.status is PaymentOrderStatus.PENDING_CAPTURE:
                order.next_retry_at = None

    async def overdue_retries(self, *, before: datetime, limit: int) -> list[tuple[int, int, int]]:
        due = sorted(
            (s.order for s in self._s.orders.values()
             if s.order.status is PaymentOrderStatus.PENDING_CAPTURE and s.order.next_retry_at is not None
             and s.order.next_retry_at < before),
            key=lambda o: o.next_retry_at or before,
        )[:limit]
        return [(o.payment_order_id, o.retry_count, int((o.next_retry_at or before).timestamp() * 1000)) for o in due]


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


class FakeIdempotencyStore:
    def __init__(self, state: FakeState, clock: Clock) -> None:
        self._s = state
        self._clock = clock

    async def begin(self, *, scope: str, key: str, fingerprint: bytes, lease_ms: int) -> IdempotencyBegin:
        now = self._clock.now()
        lease = now + timedelta(milliseconds=lease_ms)
        token = os.urandom(6).hex()
        existing = self._s.keys.get((scope, key))
        if existing is None:
            self._s.keys[(scope, key)] = _Key(fingerprint, "IN_PROGRESS", token, lease)
            return Acquired(token)
        if existing.fingerprint != fingerprint:
            return KeyMismatch()
        if existing.state == "COMPLETED":
            assert existing.status is not None and existing.body is not None
            return Replay(existing.status, existing.body)
        if existing.lease_until is not None and existing.lease_until > now:
            return KeyInProgress()
        existing.token, existing.lease_until = token, lease
        return Acquired(token)

    async def complete(self, *, scope: str, key: str, token: str, status: int, body: bytes) -> None:
        existing = self._s.keys.get((scope, key))
        if existing is not None and existing.token == token and existing.state == "IN_PROGRESS":
            existing.state, existing.status, existing.body = "COMPLETED", status, body
            existing.token = existing.lease_until = None

    async def release(self, *, scope: str, key: str, token: str) -> None:
        existing = self._s.keys.get((scope, key))
        if existing is not None and existing.token == token and existing.state == "IN_PROGRESS":
            del self._s.keys[(scope, key)]


class FakePaymentsUnitOfWork:
    def __init__(self, db: FakeDatabase) -> None:
        self._db = db
        self._committed = False

    async def __aenter__(self) -> FakePaymentsUnitOfWork:
        self._state = copy.deepcopy(self._db.state)
        self.payments = FakePaymentRepository(self._state, self._db.clock)
        self.idempotency = FakeIdempotencyStore(self._state, self._db.clock)
        self.orders = FakePaymentOrderRepository(self._state)
        self._pending: list[Envelope[Any]] = []
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None  # uncommitted changes are simply dropped

    def publish(self, *envelopes: Envelope[Any]) -> None:
        self._pending.extend(envelopes)

    async def claim_inbox(self, consumer: str, event_ids: Sequence[str]) -> set[str]:
        fresh = {e for e in event_ids if (consumer, e) not in self._state.inbox}
        self._state.inbox.update((consumer, e) for e in fresh)
        return fresh

    async def seen(self, consumer: str, event_ids: Sequence[str]) -> set[str]:
        return {e for e in event_ids if (consumer, e) in self._db.state.inbox}

    async def commit(self) -> None:
        known = {e.event_id for e in self._state.outbox}
        self._state.outbox.extend(e for e in self._pending if e.event_id not in known)
        self._db.state = self._state
        self._db.commits += 1
        self._committed = True


class FakeSellerStore:
    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock or FixedClock()
        self.sellers: dict[str, Seller] = {}
        for seller_id in ("SELLER-111", "SELLER-222", "SELLER-333"):
            self._put(OnboardSeller(seller_id, Currency.EUR, 500))

    def _put(self, cmd: OnboardSeller) -> Seller:
        now = self._clock.now()
        seller = Seller(
            cmd.seller_id,
            seller_account_code(cmd.seller_id, cmd.currency),
            cmd.currency,
            AccountStatus.ACTIVE,
            cmd.commission_bps,
            now,
            now,
        )
        self.sellers[cmd.seller_id] = seller
        return seller

    async def add(self, cmd: OnboardSeller) -> Seller | None:
        return None if cmd.seller_id in self.sellers else self._put(cmd)

    async def get(self, seller_id: str) -> Seller | None:
        return self.sellers.get(seller_id)

    async def set_status(self, seller_id: str, status: AccountStatus) -> Seller | None:
        seller = self.sellers.get(seller_id)
        if seller is None:
            return None
        import msgspec

        self.sellers[seller_id] = msgspec.structs.replace(seller, status=status, updated_at=self._clock.now())
        return self.sellers[seller_id]

    async def many(self, seller_ids: Sequence[str]) -> list[Seller]:
        return [self.sellers[s] for s in seller_ids if s in self.sellers]

    async def list(self) -> list[Seller]:
        return [self.sellers[k] for k in sorted(self.sellers)]


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

    async def authorization_status(self, *, payment_id: int, buyer_id: str, amount: Money) -> AuthorizationOutcome | None:
        self.status_calls.append(payment_id)
        return self.known.get(payment_id)


class ScriptedCaptureGateway:
    """Answers per amount (default CAPTURED) and records every call (idempotency key, outcome)."""

    def __init__(self, answers: dict[int, list[CaptureOutcome]] | None = None) -> None:
        self.answers = answers or {}
        self.calls: list[tuple[str, CaptureOutcome]] = []
        self.fail_with: BaseException | None = None

    async def capture(self, *, idempotency_key: str, amount: Money) -> CaptureOutcome:
        if self.fail_with is not None:
            raise self.fail_with
        script = self.answers.get(amount.amount_minor, [CaptureOutcome.CAPTURED])
        attempt = int(idempotency_key.rsplit(":", 1)[1])
        outcome = script[min(attempt, len(script) - 1)]
        self.calls.append((idempotency_key, outcome))
        return outcome


# -- ledger and balances ----------------------------------------------------------------------


@dataclass
class FakeLedgerState:
    clock: Clock
    sellers: FakeSellerStore | None = None  # the directory, for commission rates
    journals: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    seq: int = 0


class FakeJournalRepository:
    def __init__(self, state: FakeLedgerState) -> None:
        self._s = state

    async def enter_commit_fence(self) -> None:
        return None

    async def commission_bps(self, seller_ids: Sequence[str]) -> dict[str, int]:
        directory = self._s.sellers.sellers if self._s.sellers else {}
        return {s: directory[s].commission_bps for s in seller_ids if s in directory}

    async def add_all(self, items: Sequence[tuple[Any, Any]]) -> dict[str, Any]:
        from marketplace_pay.ledger.application.recording import StoredJournal

        out = {}
        for journal, ref in items:
            if journal.journal_id not in self._s.journals:
                self._s.seq += 1
                self._s.journals[journal.journal_id] = (StoredJournal(journal, self._s.seq, self._s.clock.now()), ref)
            out[journal.journal_id] = self._s.journals[journal.journal_id][0]
        return out


class FakeLedgerUnitOfWork:
    """Shares the payments FakeDatabase's outbox and inbox (one database, like Postgres). Like
    the payments fake, it assumes units of work run one after another."""

    def __init__(self, db: FakeDatabase, ledger: FakeLedgerState) -> None:
        self._db = db
        self._ledger = ledger

    async def __aenter__(self) -> "FakeLedgerUnitOfWork":
        self._state = copy.deepcopy(self._db.state)
        self._journals_before = (dict(self._ledger.journals), self._ledger.seq)
        self.journals = FakeJournalRepository(self._ledger)
        self._pending: list[Envelope[Any]] = []
        self._committed = False
        return self

    async def __aexit__(self, *exc: object) -> None:
        if not self._committed:
            self._ledger.journals, self._ledger.seq = self._journals_before

    async def claim_inbox(self, consumer: str, event_ids: Sequence[str]) -> set[str]:
        fresh = {e for e in event_ids if (consumer, e) not in self._state.inbox}
        self._state.inbox.update((consumer, e) for e in fresh)
        return fresh

    def publish(self, *envelopes: Envelope[Any]) -> None:
        self._pending.extend(envelopes)

    async def commit(self) -> None:
        known = {e.event_id for e in self._state.outbox}
        self._state.outbox.extend(e for e in self._pending if e.event_id not in known)
        self._db.state = self._state  # like the payments fake: units of work run one at a time here
        self._committed = True


class FakeOverlay:
    """The Redis overlay's contract, in memory (tests/contract keeps them in step)."""

    def __init__(self) -> None:
        self.horizon = 0
        self.zsets: dict[str, dict[int, int]] = {}

    async def apply(self, entries: Sequence[tuple[str, int, int]]) -> int:
        added = 0
        for code, seq, amount in entries:
            if seq > self.horizon and seq not in self.zsets.setdefault(code, {}):
                self.zsets[code][seq] = amount
                added += 1
        return added

    async def entries(self, account_code: str) -> list[tuple[int, int]]:
        return sorted(self.zsets.get(account_code, {}).items())

    async def accounts(self) -> list[str]:
        return [c for c, z in self.zsets.items() if z]

    async def prune(self, horizon: int, account_codes: Sequence[str]) -> None:
        self.horizon = max(self.horizon, horizon)
        for code in account_codes or list(self.zsets):
            self.zsets[code] = {s: a for s, a in self.zsets.get(code, {}).items() if s > horizon}

    async def clear(self) -> None:
        self.zsets.clear()


class FakeBalanceStore:
    """Folds the fake ledger's journals (no concurrent writers here: every journal is final)."""

    def __init__(self, ledger: FakeLedgerState) -> None:
        self._ledger = ledger
        self.horizon_seq = 0
        self.balances: dict[str, int] = {}

    def _postings(self) -> list[tuple[str, int, int]]:
        return [(code, seq, amount) for code, seq, amount, _ in self._timed_postings()]

    def _timed_postings(self) -> list[tuple[str, int, int, datetime]]:
        return [
            (p.account.code, stored.seq, p.signed_amount_minor, stored.created_at)
            for stored, _ in self._ledger.journals.values()
            for p in stored.journal.postings
        ]

    async def horizon(self) -> int:
        return self.horizon_seq

    async def fold(self) -> Any:
        from marketplace_pay.balances.application.balances import Folded

        top = self._ledger.seq
        touched = set()
        for code, seq, amount in self._postings():
            if self.horizon_seq < seq <= top:
                self.balances[code] = self.balances.get(code, 0) + amount
                touched.add(code)
        self.horizon_seq = max(self.horizon_seq, top)
        return Folded(self.horizon_seq, sorted(touched))

    async def snapshot(self, account_code: str) -> Any:
        from marketplace_pay.balances.application.balances import Snapshot

        currency = account_code.rsplit(".", 1)[-1]
        return Snapshot(account_code, currency, self.balances.get(account_code, 0), self.horizon_seq, None)

    async def snapshot_drift(self) -> tuple[int, list[Any]]:
        from marketplace_pay.balances.application.balances import Drift

        expected: dict[str, int] = {}
        for code, seq, amount in self._postings():
            if seq <= self.horizon_seq:
                expected[code] = expected.get(code, 0) + amount
        accounts = set(expected) | set(self.balances)
        return len(accounts), [
            Drift("snapshot", c, expected.get(c, 0), self.balances.get(c, 0))
            for c in accounts
            if expected.get(c, 0) != self.balances.get(c, 0)
        ]

    async def trial_balance_drift(self) -> list[Any]:
        return []

    async def auth_drift(self, *, finished_before_s: float) -> list[Any]:
        return []

    async def rebuild_snapshots(self) -> int:
        expected: dict[str, int] = {}
        for code, seq, amount in self._postings():
            if seq <= self.horizon_seq:
                expected[code] = expected.get(code, 0) + amount
        changed = sum(1 for c in set(expected) | set(self.balances) if expected.get(c, 0) != self.balances.get(c, 0))
        self.balances = expected
        return changed

    async def postings_above_horizon(self) -> tuple[int, list[tuple[str, int, int, datetime]]]:
        return self.horizon_seq, [p for p in self._timed_postings() if p[1] > self.horizon_seq]
