"""One fake database for every context (like Postgres): committed tables, an outbox, and
transaction ids. A unit of work copies the tables on entry and swaps them in on commit; units of
work in these tests run one after another."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Self

from marketplace_pay.payments.domain.payment import Payment
from marketplace_pay.payments.domain.payment_order import PaymentOrder
from marketplace_pay.shared.clock import Clock, FixedClock
from marketplace_pay.shared.envelope import Envelope


@dataclass
class StoredPayment:
    payment: Payment
    client_id: str
    idempotency_key: str | None
    fingerprint: bytes | None
    trace_id: str
    traceparent: str | None
    auth_check_after: datetime | None = None


@dataclass
class StoredOrder:
    order: PaymentOrder
    trace_id: str
    traceparent: str | None


@dataclass
class Tables:
    payments: dict[int, StoredPayment] = field(default_factory=dict)
    responses: dict[int, tuple[int, bytes]] = field(default_factory=dict)
    orders: dict[int, StoredOrder] = field(default_factory=dict)
    journals: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # id → (StoredJournal, JournalRef)
    seq: int = 0
    outbox: list[Envelope[Any]] = field(default_factory=list)
    payouts: dict[int, Any] = field(default_factory=dict)  # id → StoredPayout (tests/fakes/treasury.py)
    settlements: dict[int, Any] = field(default_factory=dict)  # id → (NewSettlement, created at)
    settled: dict[str, int] = field(default_factory=dict)  # journal id → settlement id
    next_ids: dict[str, int] = field(default_factory=dict)  # sequences


class FakeDatabase:
    def __init__(self, clock: Clock | None = None) -> None:
        self.tables = Tables()
        self.clock = clock or FixedClock()
        self.xid = 2  # transaction ids, like Postgres: every commit takes the next one
        self.commits = 0
        self.held_locks: set[tuple[str, str]] = set()  # (client, Idempotency-Key) held by other transactions

    def next_xid(self) -> int:
        self.xid += 1
        self.commits += 1
        return self.xid


class FakeUnitOfWork:
    """The fake of infra/uow.PgUnitOfWork: copy on entry, swap in on commit, drop otherwise."""

    def __init__(self, db: FakeDatabase) -> None:
        self._db = db

    async def __aenter__(self) -> Self:
        self.tables = copy.deepcopy(self._db.tables)
        self.xid = self._db.xid + 1  # the id this transaction commits under
        self._pending: list[Envelope[Any]] = []
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None  # uncommitted changes are simply dropped

    def publish(self, *envelopes: Envelope[Any]) -> None:
        self._pending.extend(envelopes)

    async def commit(self) -> None:
        self.tables.outbox.extend(self._pending)
        self._db.tables = self.tables
        self._db.next_xid()
