"""What the rest of the system may ask of the ledger context: the account directory (sellers),
statements and a payment's journals; and the handlers that record money movements."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Protocol

from marketplace_pay.ledger.application import recording
from marketplace_pay.ledger.application.directory import (
    CachedSellers,
    OnboardSeller,
    Seller,
    change_seller_status,
    onboard_seller,
)
from marketplace_pay.ledger.application.recording import LedgerUnitOfWork
from marketplace_pay.ledger.application.views import JournalView, LedgerReads, PostingLine
from marketplace_pay.ledger.domain.accounts import AccountStatus
from marketplace_pay.payments import PaymentAuthorized, PaymentOrderFinalized, RefundSucceeded
from marketplace_pay.shared.bus import Subscription
from marketplace_pay.shared.clock import Clock
from marketplace_pay.shared.errors import NotFoundError
from marketplace_pay.shared.money import Currency


class PaymentLookup(Protocol):
    """Whether a payment exists (the payments context knows; a payment may have no journal yet)."""

    async def exists(self, payment_id: int) -> bool: ...


class Ledger:
    def __init__(
        self,
        *,
        directory: CachedSellers,
        reads: LedgerReads,
        uow: Callable[[], LedgerUnitOfWork],
        payments: PaymentLookup,
        clock: Clock,
    ) -> None:
        self.directory = directory
        self._store = directory.store
        self._reads = reads
        self._uow = uow
        self._payments = payments
        self._clock = clock

    # -- the account directory --------------------------------------------------------------

    async def onboard_seller(self, cmd: OnboardSeller) -> Seller:
        return await onboard_seller(cmd, store=self._store, cache=self.directory)

    async def change_seller_status(self, seller_id: str, status: AccountStatus) -> Seller:
        return await change_seller_status(seller_id, status, store=self._store, cache=self.directory)

    async def add_seller(self, seller_id: str, currency: str, commission_bps: int) -> Seller:
        """`onboard_seller` from plain values (the command line's)."""
        return await self.onboard_seller(OnboardSeller(seller_id, Currency(currency), commission_bps))

    async def set_seller_status(self, seller_id: str, status: str) -> Seller:
        return await self.change_seller_status(seller_id, AccountStatus(status))

    async def seller(self, seller_id: str) -> Seller:
        """NotFoundError for an unknown seller."""
        seller = await self._store.get(seller_id)
        if seller is None:
            raise NotFoundError(f"Seller {seller_id} not found")
        return seller

    async def sellers(self) -> list[Seller]:
        return await self._store.list()

    async def account_of(self, seller_id: str) -> str | None:
        seller = await self._store.get(seller_id)
        return seller.account_code if seller is not None else None

    # -- reads ------------------------------------------------------------------------------

    async def statement(self, account_code: str, *, limit: int, after: int | None) -> tuple[list[PostingLine], bool]:
        """The account's postings, newest first, after the posting id `after`. NotFoundError for
        an unknown account."""
        if not await self._reads.account_exists(account_code):
            raise NotFoundError(f"Account {account_code} not found")
        return await self._reads.postings(account_code, limit=limit, before_posting_id=after)

    async def payment_journals(self, payment_id: int, public_id: str) -> list[JournalView]:
        """NotFoundError for an unknown payment; none yet for one not authorized."""
        if not await self._payments.exists(payment_id):
            raise NotFoundError(f"Payment {public_id} not found")
        return await self._reads.payment_journals(payment_id)

    # -- recording --------------------------------------------------------------------------

    def subscriptions(self, *, batch_max: int) -> list[Subscription]:
        return [
            Subscription(
                recording.RECORD_AUTHORIZATIONS,
                PaymentAuthorized,
                partial(recording.record_authorizations, uow=self._uow, clock=self._clock),
                batch_max,
                ordered=False,
                concurrency=2,
            ),
            Subscription(
                recording.RECORD_FINALIZATIONS,
                PaymentOrderFinalized,
                partial(recording.record_finalizations, uow=self._uow, rates=self.directory, clock=self._clock),
                batch_max,
                ordered=False,
                concurrency=2,
            ),
            Subscription(  # ordered: one order's refunds give back its commission in turn
                recording.RECORD_REFUNDS,
                RefundSucceeded,
                partial(recording.record_refunds, uow=self._uow, rates=self.directory, clock=self._clock),
                batch_max,
            ),
        ]
