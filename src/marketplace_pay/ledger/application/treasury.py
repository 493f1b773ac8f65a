"""What the rest of the system may ask of the ledger's treasury: seller payouts and PSP
settlement — their use cases, reads, handlers and jobs."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from marketplace_pay.ledger.application import payouts
from marketplace_pay.ledger.application.directory import SellerStore
from marketplace_pay.ledger.application.payouts import (
    Created,
    CreatePayout,
    Payer,
    PayoutPolicy,
    Render,
    Replayed,
    create_payout,
    run_scheduled_payouts,
)
from marketplace_pay.ledger.application.ports import BankGateway, NewSettlement, TreasuryReads, TreasuryUnitOfWork
from marketplace_pay.ledger.application.settlement import settle
from marketplace_pay.ledger.application.views import PayoutView, SettlementView
from marketplace_pay.ledger.domain.events import PayoutRequested, PayPayout
from marketplace_pay.ledger.domain.payout import Payout
from marketplace_pay.shared.bus import Subscription
from marketplace_pay.shared.clock import Clock


@dataclass(frozen=True, slots=True)
class TreasuryPolicy:
    payout: PayoutPolicy
    payout_minimum_minor: int  # scheduled payouts skip sellers with less available
    psp_fee_bps: int  # the PSP's fee on what it settles


class Treasury:
    def __init__(
        self,
        *,
        uow: Callable[[], TreasuryUnitOfWork],
        reads: TreasuryReads,
        bank: BankGateway,
        sellers: SellerStore,
        policy: TreasuryPolicy,
        clock: Clock,
        rng: random.Random | None = None,
    ) -> None:
        self._uow = uow
        self._reads = reads
        self._sellers = sellers
        self._policy = policy
        self._clock = clock
        self.payer = Payer(uow=uow, reads=reads, bank=bank, clock=clock, policy=policy.payout, rng=rng)

    # -- payouts --------------------------------------------------------------------------------

    async def create_payout(self, cmd: CreatePayout, *, render: Render) -> Created | Replayed:
        """NotFoundError (unknown seller), UnprocessableError (seller not ACTIVE, other currency,
        nothing or not enough available, key used with another body), ConflictError (the same
        key is still being processed). `render` makes the response kept for the key."""
        return await create_payout(cmd, uow=self._uow, render=render, clock=self._clock)

    async def payout(self, payout_id: int) -> PayoutView | None:
        return await self._reads.payout(payout_id)

    async def seller_exists(self, seller_id: str) -> bool:
        return await self._sellers.get(seller_id) is not None

    async def payouts_of(self, seller_id: str, *, limit: int, after: int | None) -> tuple[list[PayoutView], bool]:
        return await self._reads.payouts_of(seller_id, limit=limit, before_payout_id=after)

    async def run_scheduled_payouts(self, progress: Callable[[str, Payout | None], None] | None = None) -> list[Payout]:
        """Pay out every ACTIVE seller whose available balance reaches the minimum."""
        return await run_scheduled_payouts(
            minimum_minor=self._policy.payout_minimum_minor,
            uow=self._uow,
            reads=self._reads,
            clock=self._clock,
            progress=progress,
        )

    async def dispatch_due_payouts(self) -> int:
        return await payouts.dispatch_due_payouts(
            uow=self._uow, clock=self._clock, stuck_after_s=self._policy.payout.stuck_after_s
        )

    # -- settlement -----------------------------------------------------------------------------

    async def settle(self) -> list[NewSettlement]:
        return await settle(uow=self._uow, clock=self._clock, fee_bps=self._policy.psp_fee_bps)

    async def settlements(self, *, limit: int, after: int | None) -> tuple[list[SettlementView], bool]:
        return await self._reads.settlements(limit=limit, before_settlement_id=after)

    # -- handlers -------------------------------------------------------------------------------

    def subscriptions(self, *, batch_max: int) -> list[Subscription]:
        return [
            Subscription(
                payouts.PAY_PAYOUTS,
                PayoutRequested,
                partial(payouts.pay_requested_payouts, payer=self.payer),
                batch_max,
                ordered=False,
                concurrency=2,
            ),
            Subscription(
                payouts.PAY_PAYOUT_RETRIES,
                PayPayout,
                partial(payouts.pay_due_payouts, payer=self.payer),
                batch_max,
                ordered=False,
                concurrency=2,
            ),
        ]
