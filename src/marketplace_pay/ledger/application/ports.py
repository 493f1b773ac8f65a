"""Ports of the ledger's treasury operations (payouts, PSP settlement). Adapters:
ledger/adapters/pg_treasury.py (Postgres), ledger/adapters/bank.py (the bank simulator)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from types import TracebackType
from typing import Any, NamedTuple, Protocol

import msgspec

from marketplace_pay.ledger.application.recording import JournalRepository
from marketplace_pay.ledger.application.views import PayoutView, SettlementView
from marketplace_pay.ledger.domain.accounts import AccountStatus
from marketplace_pay.ledger.domain.payout import Payout, PayoutStatus
from marketplace_pay.shared.envelope import Envelope
from marketplace_pay.shared.money import Currency, Money

# -- the bank ------------------------------------------------------------------------------------


class BankTimeout(Exception):
    """The bank did not answer within the caller's budget. The payout may still happen."""


class BankUnavailable(Exception):
    """The bank could not be reached, or answered with an error: the outcome is unknown."""


class BankOutcome(StrEnum):
    PAID = "PAID"
    FAILED = "FAILED"  # final: the bank refuses this payout for good
    RETRYABLE = "RETRYABLE"  # not paid; a new call (with a new key) may succeed later


class BankGateway(Protocol):
    async def pay(self, *, idempotency_key: str, payout_id: str, seller_id: str, amount: Money) -> BankOutcome:
        """Send `amount` to the seller's bank account for one payout (`pout_…`).

        Idempotent per `idempotency_key`: a repeated call never pays twice and answers what the
        bank did the first time. The bank acts on the request when it receives it, whether or
        not the caller waits for the answer. Raises BankUnavailable."""
        ...

    async def payment_status(
        self, *, idempotency_key: str, payout_id: str, seller_id: str, amount: Money
    ) -> BankOutcome | None:
        """What the bank did with the payout sent under `idempotency_key`; None if it never
        received it. Raises BankUnavailable."""
        ...


# -- payouts -------------------------------------------------------------------------------------


class PayableSeller(msgspec.Struct, frozen=True):
    seller_id: str
    account_code: str
    currency: Currency
    status: AccountStatus


class Keyed(msgspec.Struct, frozen=True):
    """Who asked, and under which Idempotency-Key (None: no key)."""

    client_id: str
    idempotency_key: str | None = None
    fingerprint: bytes | None = None


class KeyedPayout(NamedTuple):
    """A payout found under a client's key, with what is needed to answer a repeat."""

    payout: Payout
    fingerprint: bytes
    response: tuple[int, bytes] | None


class OpenPayout(NamedTuple):
    """A payout as the bank's caller needs it: with the trace of the request that created it."""

    payout: Payout
    trace_id: str
    traceparent: str | None


class PayoutRepository(Protocol):
    """Payout writes, inside a treasury unit of work (one transaction)."""

    async def lock_key(self, client_id: str, idempotency_key: str) -> bool:
        """Hold the client's key for this transaction; False if another transaction holds it
        (a request with the same key is still running)."""
        ...

    async def by_key(self, client_id: str, idempotency_key: str) -> KeyedPayout | None: ...

    async def lock_seller(self, seller_id: str) -> PayableSeller | None:
        """The seller's account, locked until the end of the transaction: payouts of one seller
        are created one after the other. None for an unknown seller."""
        ...

    async def available_minor(self, account_code: str) -> int:
        """The account's exact balance, from committed postings (never from a cache)."""
        ...

    async def next_id(self) -> int: ...

    async def add(
        self,
        payout: Payout,
        *,
        account_code: str,
        keyed: Keyed,
        response: tuple[int, bytes] | None,
        trace_id: str,
        traceparent: str | None,
    ) -> None: ...

    async def save(self, payout: Payout, *, before: tuple[PayoutStatus, int]) -> bool:
        """Write the payout's new state if it is still in the state `before` (status, attempt).
        False (nothing written) otherwise."""
        ...

    async def claim_due(self, *, now: datetime, stuck_before: datetime, limit: int) -> list[OpenPayout]:
        """Pending payouts whose next bank call is due, and those that stopped moving (no call
        scheduled, unchanged since `stuck_before`): locked (others skip them), marked dispatched."""
        ...


# -- settlement ----------------------------------------------------------------------------------


class Unsettled(NamedTuple):
    """One CAPTURE (+) or REFUND (−) journal's effect on PSP_RECEIVABLES, not yet settled."""

    journal_id: str
    currency: Currency
    signed_amount_minor: int


class NewSettlement(msgspec.Struct, frozen=True):
    settlement_id: int
    currency: Currency
    gross_minor: int
    fee_minor: int
    net_minor: int
    fee_bps: int
    journal_ids: list[str]


class SettlementRepository(Protocol):
    async def lock(self) -> None:
        """Settlement runs one at a time: this waits for any other run's transaction to end."""
        ...

    async def unsettled(self) -> list[Unsettled]:
        """Every CAPTURE and REFUND journal's PSP_RECEIVABLES posting that no settlement covers."""
        ...

    async def next_id(self) -> int: ...

    async def add(self, settlement: NewSettlement) -> None:
        """Record the settlement and mark its journals covered. Raises if one already is."""
        ...


class TreasuryUnitOfWork(Protocol):
    """One transaction over journals, payouts and settlements, and the events it queues."""

    @property
    def journals(self) -> JournalRepository: ...

    @property
    def payouts(self) -> PayoutRepository: ...

    @property
    def settlements(self) -> SettlementRepository: ...

    async def __aenter__(self) -> TreasuryUnitOfWork: ...

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    def publish(self, *envelopes: Envelope[Any]) -> None: ...

    async def commit(self) -> None: ...


class TreasuryReads(Protocol):
    async def payouts(self, payout_ids: Sequence[int]) -> dict[int, OpenPayout]: ...

    async def payout(self, payout_id: int) -> PayoutView | None: ...

    async def payouts_of(
        self, seller_id: str, *, limit: int, before_payout_id: int | None
    ) -> tuple[list[PayoutView], bool]:
        """The seller's payouts, newest first, keyset-paged by payout id: (views, has_more)."""
        ...

    async def settlements(self, *, limit: int, before_settlement_id: int | None) -> tuple[list[SettlementView], bool]:
        """Settlements, newest first, keyset-paged by settlement id."""
        ...

    async def payable_sellers(self, minimum_minor: int) -> list[str]:
        """ACTIVE sellers whose exact balance is at least `minimum_minor`."""
        ...
