"""Ports of the payments context. Adapters: payments/adapters (Postgres, PSP simulator) and,
for the seller directory, the ledger context's account directory (wired in bootstrap)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from types import TracebackType
from typing import Any, Protocol

import msgspec

from marketplace_pay.payments.domain.payment import Payment
from marketplace_pay.payments.domain.payment_order import PaymentOrder, PaymentOrderStatus
from marketplace_pay.shared.envelope import Envelope
from marketplace_pay.shared.money import Currency, Money

# -- PSP ---------------------------------------------------------------------------------------


class PspTimeout(Exception):
    """The PSP did not answer within the caller's budget. The operation may still happen."""


class PspUnavailable(Exception):
    """The PSP could not be reached; the operation did not happen."""


class AuthorizationOutcome(StrEnum):
    APPROVED = "APPROVED"
    DECLINED = "DECLINED"


class AuthorizationGateway(Protocol):
    async def authorize(self, *, payment_id: int, buyer_id: str, amount: Money) -> AuthorizationOutcome:
        """Place a hold of `amount` on the shopper's instrument.

        Idempotent per `payment_id` (the PSP idempotency key): asking again never places a
        second hold and returns the first answer. May take arbitrarily long; the caller bounds
        it. Raises PspUnavailable when the PSP cannot be reached."""
        ...

    async def authorization_status(
        self, *, payment_id: int, buyer_id: str, amount: Money
    ) -> AuthorizationOutcome | None:
        """The final outcome of an authorization asked for earlier, or None if the PSP never
        received it. Raises PspUnavailable."""
        ...


class CaptureOutcome(StrEnum):
    CAPTURED = "CAPTURED"
    DECLINED = "DECLINED"  # final: the PSP refuses this capture for good
    RETRYABLE = "RETRYABLE"  # try again later (soft decline, PSP busy)


class CaptureGateway(Protocol):
    async def capture(self, *, idempotency_key: str, amount: Money) -> CaptureOutcome:
        """Capture `amount` of an authorized payment for one payment order.

        Idempotent per `idempotency_key` (one per order and attempt): a repeated call never
        captures twice and returns the first answer. May take arbitrarily long; the caller
        bounds it and treats no answer as retryable. Raises PspUnavailable."""
        ...


# -- sellers -----------------------------------------------------------------------------------


class SellerAccount(msgspec.Struct, frozen=True):
    seller_id: str
    currency: Currency
    status: str
    commission_bps: int

    @property
    def active(self) -> bool:
        return self.status == "ACTIVE"


class SellerDirectory(Protocol):
    async def sellers(self, seller_ids: Sequence[str]) -> dict[str, SellerAccount]:
        """The directory entries of the given sellers; unknown sellers are absent."""
        ...


# -- ids ---------------------------------------------------------------------------------------


class IdGenerator(Protocol):
    def next_id(self, shard: int) -> int:
        """A unique 64-bit id on `shard`. Raises when the instance lease is lost."""
        ...


# -- persistence -------------------------------------------------------------------------------


class Acquired(msgspec.Struct, frozen=True):
    token: str


class Replay(msgspec.Struct, frozen=True):
    status: int
    body: bytes


class KeyMismatch(msgspec.Struct, frozen=True):
    pass


class KeyInProgress(msgspec.Struct, frozen=True):
    pass


IdempotencyBegin = Acquired | Replay | KeyMismatch | KeyInProgress


class IdempotencyStore(Protocol):
    async def begin(self, *, scope: str, key: str, fingerprint: bytes, lease_ms: int) -> IdempotencyBegin:
        """Start work under (scope, key). Acquired: this caller owns the key (first use, or
        the previous owner's lease expired). Replay: the stored first response. KeyMismatch:
        the key was used with another request. KeyInProgress: another request holds it."""
        ...

    async def complete(self, *, scope: str, key: str, token: str, status: int, body: bytes) -> None:
        """Store the response. A no-op if the lease was taken over meanwhile."""
        ...

    async def release(self, *, scope: str, key: str, token: str) -> None:
        """Give the key up without a response (the request failed before an outcome)."""
        ...


class PendingAuthorization(msgspec.Struct, frozen=True):
    payment: Payment
    trace_id: str
    traceparent: str | None


class PaymentRepository(Protocol):
    async def add(
        self, payment: Payment, *, idempotency_key: str | None, trace_id: str, traceparent: str | None
    ) -> Payment | None:
        """Insert a new PENDING_AUTH payment (with the trace it was created in). Returns None
        when inserted; otherwise the existing payment with the same idempotency key (when
        given) or, without one, the same business key (buyer, order, total)."""
        ...

    async def get(self, payment_id: int, *, for_update: bool = False) -> Payment | None: ...

    async def save_authorization(self, payment: Payment) -> bool:
        """Persist AUTHORIZED/DECLINED, only if the stored payment is still PENDING_AUTH.
        Returns False (and writes nothing) if it was not."""
        ...

    async def get_many(self, payment_ids: Sequence[int], *, for_update: bool = False) -> dict[int, Payment]:
        """Locked in id order when `for_update`, so concurrent roll-ups never deadlock."""
        ...

    async def save_roll_up(self, payment: Payment) -> None:
        """Persist captured amount, open orders and status after an order finished."""
        ...

    async def claim_pending_authorizations(
        self, *, created_before: datetime, lease_ms: int, limit: int
    ) -> list[PendingAuthorization]:
        """PENDING_AUTH payments created before the given time whose previous claim (if any)
        expired, oldest first; each is leased for `lease_ms` so that no other caller claims it
        meanwhile."""
        ...


class StaleOrder(Exception):
    """A guarded payment-order update found the row changed: the transaction must not commit."""


class PaymentOrderRepository(Protocol):
    async def add_all(self, orders: Sequence[tuple[PaymentOrder, str, str | None]]) -> set[int]:
        """Insert (order, trace id, traceparent) rows; ids already there are skipped. Returns
        the ids inserted."""
        ...

    async def get_many(self, payment_order_ids: Sequence[int], *, for_update: bool = False) -> dict[int, PaymentOrder]:
        """Locked in id order when `for_update`."""
        ...

    async def save_all(self, changes: Sequence[tuple[PaymentOrder, tuple[PaymentOrderStatus, int]]]) -> None:
        """Write each order's new state, guarded on its state before (status, retry count): the
        UPDATE itself refuses to regress an order. Raises StaleOrder if any guard failed."""
        ...

    async def traces(self, payment_order_ids: Sequence[int]) -> dict[int, tuple[str, str | None]]:
        """(trace id, traceparent) each order was created in."""
        ...

    async def mark_retries_dispatched(self, payment_order_ids: Sequence[int]) -> None:
        """The due retry of these orders is in the outbox: not pending any more."""
        ...

    async def overdue_retries(self, *, before: datetime, limit: int) -> list[tuple[int, int, int]]:
        """(id, attempt, due epoch ms) of PENDING_CAPTURE orders whose undispatched retry was due
        before `before`."""
        ...


class PaymentsUnitOfWork(Protocol):
    payments: PaymentRepository
    idempotency: IdempotencyStore
    orders: PaymentOrderRepository

    async def claim_inbox(self, consumer: str, event_ids: Sequence[str]) -> set[str]:
        """Mark events processed by `consumer` in this transaction; returns the new ones."""
        ...

    async def seen(self, consumer: str, event_ids: Sequence[str]) -> set[str]:
        """Which of these events `consumer` has processed (committed)."""
        ...

    async def __aenter__(self) -> PaymentsUnitOfWork: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    def publish(self, *envelopes: Envelope[Any]) -> None:
        """Queue events; they are written to the outbox by `commit`, in the same transaction."""
        ...

    async def commit(self) -> None: ...
