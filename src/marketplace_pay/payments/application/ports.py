"""Ports of the payments context. Adapters: payments/adapters (Postgres, Redis, PSP simulator) and,
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
from marketplace_pay.payments.domain.refund import Refund, RefundStatus
from marketplace_pay.shared.envelope import Envelope
from marketplace_pay.shared.money import Currency, Money

# -- PSP ---------------------------------------------------------------------------------------


class PspTimeout(Exception):
    """The PSP did not answer within the caller's budget. The operation may still happen."""


class PspUnavailable(Exception):
    """The PSP could not be reached, or answered with an error: the outcome is unknown."""


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
    RETRYABLE = "RETRYABLE"  # not captured; a new capture (with a new key) may succeed later


class CaptureGateway(Protocol):
    async def capture(self, *, idempotency_key: str, payment_order_id: str, amount: Money) -> CaptureOutcome:
        """Capture `amount` of an authorized payment for one payment order (`po_…`).

        Idempotent per `idempotency_key`: a repeated call never captures twice and answers
        what the PSP did the first time. The PSP acts on the request when it receives it,
        whether or not the caller waits for the answer. Raises PspUnavailable."""
        ...

    async def capture_status(
        self, *, idempotency_key: str, payment_order_id: str, amount: Money
    ) -> CaptureOutcome | None:
        """What the PSP did with the capture of `amount` sent under `idempotency_key`; None if it
        never received one. Raises PspUnavailable."""
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
        """The directory entries of the given sellers; unknown sellers are absent. May answer
        from a cache a second or so old."""
        ...


# -- ids ---------------------------------------------------------------------------------------


class IdGenerator(Protocol):
    def next_id(self, shard: int) -> int:
        """A unique 64-bit id on `shard`. Raises when the instance lease is lost."""
        ...


# -- pay-in persistence ------------------------------------------------------------------------


class Keyed(msgspec.Struct, frozen=True):
    """Who asked, and under which Idempotency-Key (None: the business key identifies it)."""

    client_id: str
    idempotency_key: str | None = None
    fingerprint: bytes | None = None


class StoredPayment(msgspec.Struct, frozen=True):
    """A payment found under a client's key, with what is needed to answer a repeat."""

    payment: Payment
    fingerprint: bytes | None
    response: tuple[int, bytes] | None  # the first response, while it is kept


class PendingAuthorization(msgspec.Struct, frozen=True):
    payment: Payment
    trace_id: str
    traceparent: str | None


class PaymentStore(Protocol):
    """Pay-in writes. Concurrent calls are committed together (group commit): each call returns
    once its own rows are durable."""

    async def add(self, payment: Payment, *, keyed: Keyed, trace_id: str, traceparent: str | None) -> bool:
        """Insert a new PENDING_AUTH payment. False (nothing written) when the client already
        has a payment under the same Idempotency-Key, or — without one — the same business key
        (buyer, order, total)."""
        ...

    async def find(self, keyed: Keyed, *, buyer_id: str, order_id: str, total: Money) -> StoredPayment | None:
        """The client's payment under this Idempotency-Key, or without one under this business key."""
        ...

    async def record_authorization(
        self, payment: Payment, events: Sequence[Envelope[Any]], response: tuple[int, bytes] | None
    ) -> bool:
        """Persist AUTHORIZED/DECLINED with its events (and the response to keep for the key), only
        if the stored payment is still PENDING_AUTH. False (nothing written) if it was not."""
        ...

    async def keep_response(self, payment_id: int, response: tuple[int, bytes]) -> None:
        """Keep the response given to the first request of a keyed payment."""
        ...

    async def get(self, payment_id: int) -> Payment | None: ...

    async def claim_pending_authorizations(
        self, *, created_before: datetime, lease_ms: int, limit: int
    ) -> list[PendingAuthorization]:
        """PENDING_AUTH payments created before the given time whose previous claim (if any)
        expired, oldest first; each is leased for `lease_ms` so that no other caller claims it
        meanwhile."""
        ...


# -- capture persistence -----------------------------------------------------------------------


OrderChange = tuple[PaymentOrder, tuple[PaymentOrderStatus, int]]
"""An order's new state and (status, retry count) before: the update's guard."""


class NewOrder(msgspec.Struct, frozen=True):
    order: PaymentOrder
    trace_id: str
    traceparent: str | None


class CaptureStore(Protocol):
    async def open_orders(self, orders: Sequence[NewOrder]) -> list[PaymentOrder]:
        """Create these orders (CAPTURE_REQUESTED) unless they exist; return those of them that
        still wait for their first capture attempt — new ones, and ones a crash left waiting."""
        ...

    async def orders(self, payment_order_ids: Sequence[int]) -> dict[int, PaymentOrder]: ...

    async def save_attempts(self, changes: Sequence[OrderChange], events: Sequence[Envelope[Any]]) -> set[int]:
        """Write each order's new state if it is still in its state before; a finished order rolls
        its payment up (CAPTURED / CAPTURED_PARTIALLY / CAPTURE_FAILED once the last one is done).
        Each event is written only with its order's update (the events' aggregate ids name the
        orders). One atomic statement. Returns the ids of the orders updated."""
        ...

    async def overdue_retries(self, *, before: datetime, limit: int) -> list[tuple[int, int, int]]:
        """(id, attempt, due epoch ms) of PENDING_CAPTURE orders whose undispatched retry was due
        before `before`."""
        ...

    async def stuck_orders(self, *, unchanged_since: datetime, limit: int) -> list[PaymentOrder]:
        """Open orders whose capture is not waiting for a scheduled retry and that have not
        changed since `unchanged_since`: their command was lost or dead-lettered."""
        ...

    async def unknown_outcomes(self) -> int:
        """Open orders whose last PSP call went unanswered."""
        ...


class RetryUnitOfWork(Protocol):
    """Turning due retries into capture commands, in one transaction with the outbox."""

    async def __aenter__(self) -> RetryUnitOfWork: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    async def lock_orders(self, payment_order_ids: Sequence[int]) -> dict[int, tuple[PaymentOrder, str, str | None]]:
        """The orders, locked in id order, with the (trace id, traceparent) they were created in."""
        ...

    async def mark_dispatched(self, payment_order_ids: Sequence[int], *, touch: bool = False) -> None:
        """The due retry (or a re-drive, `touch`) of these orders is in the outbox."""
        ...

    def publish(self, *envelopes: Envelope[Any]) -> None: ...

    async def commit(self) -> None: ...


# -- refunds -----------------------------------------------------------------------------------


class RefundOutcome(StrEnum):
    REFUNDED = "REFUNDED"
    DECLINED = "DECLINED"  # final: the PSP refuses this refund for good
    RETRYABLE = "RETRYABLE"  # not refunded; a new refund (with a new key) may succeed later


class RefundGateway(Protocol):
    async def refund(
        self, *, idempotency_key: str, refund_id: str, payment_order_id: str, amount: Money
    ) -> RefundOutcome:
        """Give `amount` of a captured payment order (`po_…`) back to the shopper.

        Idempotent per `idempotency_key`: a repeated call never refunds twice and answers what
        the PSP did the first time. The PSP acts on the request when it receives it, whether or
        not the caller waits for the answer. Raises PspUnavailable."""
        ...

    async def refund_status(
        self, *, idempotency_key: str, refund_id: str, payment_order_id: str, amount: Money
    ) -> RefundOutcome | None:
        """What the PSP did with the refund sent under `idempotency_key`; None if it never
        received one. Raises PspUnavailable."""
        ...


class RefundableOrder(msgspec.Struct, frozen=True):
    """A payment order as a refund sees it, read under the order's row lock."""

    payment_order_id: int
    payment_id: int
    seller_id: str
    amount: Money
    status: PaymentOrderStatus
    refunded_minor: int
    reserved_minor: int  # pending refunds

    @property
    def refundable_minor(self) -> int:
        return self.amount.amount_minor - self.refunded_minor - self.reserved_minor


class KeyedRefund(msgspec.Struct, frozen=True):
    refund: Refund
    fingerprint: bytes
    response: tuple[int, bytes] | None


class OpenRefund(msgspec.Struct, frozen=True):
    refund: Refund
    trace_id: str
    traceparent: str | None


class RefundSettled(msgspec.Struct, frozen=True):
    """What a succeeded refund changed on its order: what the order captured and has refunded."""

    order_amount_minor: int
    order_refunded_minor: int


class RefundUnitOfWork(Protocol):
    """Refund writes: creation under the order's row lock, guarded answers, due calls."""

    async def __aenter__(self) -> RefundUnitOfWork: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    async def lock_key(self, client_id: str, idempotency_key: str) -> bool:
        """Hold the key until commit; False when another request holds it."""
        ...

    async def by_key(self, client_id: str, idempotency_key: str) -> KeyedRefund | None: ...

    async def payment_exists(self, payment_id: int) -> bool:
        """On this transaction's connection (a second connection while this one is held could
        wait forever for a pool that concurrent requests like this one have emptied)."""
        ...

    async def lock_order(self, payment_id: int, payment_order_id: int) -> RefundableOrder | None:
        """The payment's order, locked until commit; None when the payment has no such order."""
        ...

    async def next_id(self) -> int: ...

    async def add(
        self,
        refund: Refund,
        *,
        keyed: Keyed,
        response: tuple[int, bytes] | None,
        trace_id: str,
        traceparent: str | None,
    ) -> None:
        """Insert the refund and reserve its amount on its order (locked by `lock_order`)."""
        ...

    async def save(self, refund: Refund, *, before: tuple[RefundStatus, int]) -> bool:
        """Write the refund's new state if it is still in state `before`; False when it was not."""
        ...

    async def settle(self, refund: Refund) -> RefundSettled:
        """A succeeded refund: its amount moves from reserved to refunded, on its order and on its
        payment (whose status becomes PARTIALLY_REFUNDED or REFUNDED once its orders are all
        finished)."""
        ...

    async def release(self, refund: Refund) -> None:
        """A failed refund: its reserved amount becomes refundable again."""
        ...

    async def claim_due(self, *, now: datetime, stuck_before: datetime, limit: int) -> list[OpenRefund]:
        """Pending refunds whose next call is due, or that have waited for a call with none
        scheduled since before `stuck_before` (their event was dead-lettered or lost); each
        leaves the due list (its call is being dispatched)."""
        ...

    def publish(self, *envelopes: Envelope[Any]) -> None: ...

    async def commit(self) -> None: ...


class RefundReads(Protocol):
    async def open_refunds(self, refund_ids: Sequence[int]) -> dict[int, OpenRefund]: ...

    async def refund(self, refund_id: int) -> Refund | None: ...

    async def refunds_of(self, payment_id: int) -> list[Refund]: ...
