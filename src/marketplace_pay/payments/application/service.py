"""What the rest of the system may ask of the payments context: create and read payments, refund
them, the capture and refund handlers and the jobs that keep every order and refund moving."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Protocol

from marketplace_pay.payments.application import capture, refunds
from marketplace_pay.payments.application.capture import CapturePolicy, Capturer, RetryQueue
from marketplace_pay.payments.application.create_payment import (
    CreatePayment,
    CreatePaymentResult,
    Render,
    Replayed,
    create_payment,
    resolve_pending_authorizations,
)
from marketplace_pay.payments.application.ports import (
    AuthorizationGateway,
    CaptureGateway,
    CaptureStore,
    IdGenerator,
    PaymentStore,
    RefundGateway,
    RefundReads,
    RefundUnitOfWork,
    RetryUnitOfWork,
    SellerDirectory,
)
from marketplace_pay.payments.application.refunds import Refunder, RefundPolicy, Requested, RequestRefund
from marketplace_pay.payments.application.views import PaymentView
from marketplace_pay.payments.domain.events import CallRefund, CapturePaymentOrder, PaymentAuthorized, RefundRequested
from marketplace_pay.payments.domain.refund import Refund
from marketplace_pay.shared.bus import Subscription
from marketplace_pay.shared.clock import Clock
from marketplace_pay.shared.errors import NotFoundError


class PaymentViews(Protocol):
    async def view(self, payment_id: int) -> PaymentView | None: ...


@dataclass(frozen=True, slots=True)
class PaymentsPolicy:
    auth_timeout_ms: int  # budget of the synchronous authorization
    in_progress_ms: int  # a key's first request is taken as dead after this
    pending_auth_check_after_ms: int  # PENDING_AUTH payments older than this are resolved
    retry_requeue_after_ms: int  # a retry overdue this long and missing from Redis is put back
    retry_inflight_timeout_ms: int  # a retry popped but not dispatched goes back after this
    stuck_after_s: int  # an order this far behind its schedule is re-driven
    psp_max_inflight: int  # capture calls in flight at once


@dataclass(frozen=True, slots=True)
class PaymentsPorts:
    store: PaymentStore
    capture: CaptureStore
    retry_uow: Callable[[], RetryUnitOfWork]
    retries: RetryQueue
    views: PaymentViews
    sellers: SellerDirectory
    authorizer: AuthorizationGateway
    capturer: CaptureGateway
    ids: IdGenerator
    # delivers again PaymentAuthorized events this context's capture handler dead-lettered
    # before the given time; returns how many
    redrive_authorizations: Callable[[datetime], Awaitable[int]] | None = None
    # refunds (absent in unit tests of pay-in and capture)
    refund_uow: Callable[[], RefundUnitOfWork] | None = None
    refund_reads: RefundReads | None = None
    refunder: RefundGateway | None = None


class Payments:
    def __init__(
        self,
        ports: PaymentsPorts,
        *,
        policy: PaymentsPolicy,
        capture_policy: CapturePolicy,
        refund_policy: RefundPolicy | None = None,
        clock: Clock,
        rng: random.Random | None = None,
    ) -> None:
        self._ports = ports
        self._policy = policy
        self._clock = clock
        inflight = asyncio.Semaphore(policy.psp_max_inflight)
        self.capturer = Capturer(
            store=ports.capture,
            psp=ports.capturer,
            retries=ports.retries,
            clock=clock,
            policy=capture_policy,
            inflight=inflight,
            rng=rng,
        )
        self.refunder: Refunder | None = None
        if ports.refund_uow and ports.refund_reads and ports.refunder and refund_policy:
            self.refunder = Refunder(
                uow=ports.refund_uow,
                reads=ports.refund_reads,
                psp=ports.refunder,
                clock=clock,
                policy=refund_policy,
                inflight=inflight,
                rng=rng,
            )

    async def create(self, cmd: CreatePayment, *, render: Render) -> CreatePaymentResult:
        p = self._ports
        return await create_payment(
            cmd,
            render=render,
            store=p.store,
            sellers=p.sellers,
            psp=p.authorizer,
            ids=p.ids,
            clock=self._clock,
            auth_timeout_ms=self._policy.auth_timeout_ms,
            in_progress_ms=self._policy.in_progress_ms,
        )

    async def view(self, payment_id: int) -> PaymentView | None:
        return await self._ports.views.view(payment_id)

    async def exists(self, payment_id: int) -> bool:
        return await self.view(payment_id) is not None

    # -- refunds ----------------------------------------------------------------------------

    def _refunds(self) -> Refunder:
        if self.refunder is None:
            raise RuntimeError("refunds are not wired in this process")
        return self.refunder

    async def request_refund(self, cmd: RequestRefund, *, render: refunds.Render) -> Requested | Replayed:
        return await refunds.request_refund(cmd, uow=self._refunds().uow, render=render, clock=self._clock)

    async def refund(self, refund_id: int) -> Refund | None:
        return await self._refunds().reads.refund(refund_id)

    async def refunds_of(self, payment_id: int, public_id: str) -> list[Refund]:
        """NotFoundError for an unknown payment."""
        if not await self.exists(payment_id):
            raise NotFoundError(f"Payment {public_id} not found")
        return await self._refunds().reads.refunds_of(payment_id)

    async def dispatch_due_refunds(self) -> int:
        if self.refunder is None:
            return 0
        return await refunds.dispatch_due_refunds(
            uow=self.refunder.uow, clock=self._clock, stuck_after_s=self.refunder.policy.stuck_after_s
        )

    # -- jobs -------------------------------------------------------------------------------

    async def resolve_pending_authorizations(self) -> int:
        return await resolve_pending_authorizations(
            store=self._ports.store,
            psp=self._ports.authorizer,
            clock=self._clock,
            older_than_ms=self._policy.pending_auth_check_after_ms,
        )

    async def dispatch_due_retries(self) -> int:
        return await capture.dispatch_due_retries(
            uow=self._ports.retry_uow, retries=self._ports.retries, clock=self._clock
        )

    async def requeue_lost_retries(self) -> int:
        return await capture.requeue_lost_retries(
            store=self._ports.capture,
            retries=self._ports.retries,
            clock=self._clock,
            overdue_ms=self._policy.retry_requeue_after_ms,
        )

    async def reclaim_retries(self) -> int:
        return await self._ports.retries.reclaim(
            now_ms=self._clock.now_ms(), older_than_ms=self._policy.retry_inflight_timeout_ms
        )

    async def retry_queue_sizes(self) -> tuple[int, int]:
        return await self._ports.retries.sizes()

    async def sweep_stuck_orders(self) -> int:
        return await capture.sweep_stuck_orders(
            store=self._ports.capture,
            uow=self._ports.retry_uow,
            clock=self._clock,
            stuck_after_s=self._policy.stuck_after_s,
            redrive_authorizations=self._ports.redrive_authorizations,
        )

    # -- handlers ---------------------------------------------------------------------------

    def subscriptions(self, *, batch_max: int) -> list[Subscription]:
        # PSP calls in flight are bounded by the capturer's semaphore, not by the batches.
        batches = max(1, self._policy.psp_max_inflight // 16)
        return [
            Subscription(
                capture.CAPTURE_AUTHORIZED,
                PaymentAuthorized,
                partial(capture.capture_authorized_payments, capturer=self.capturer),
                batch_max,
                ordered=False,
                concurrency=batches,
            ),
            Subscription(
                capture.CAPTURE_RETRIES,
                CapturePaymentOrder,
                partial(capture.capture_due_orders, capturer=self.capturer),
                batch_max,
                ordered=False,
                concurrency=batches,
            ),
            *self._refund_subscriptions(batch_max),
        ]

    def _refund_subscriptions(self, batch_max: int) -> list[Subscription]:
        if self.refunder is None:
            return []
        return [
            Subscription(
                refunds.CALL_REQUESTED_REFUNDS,
                RefundRequested,
                partial(refunds.call_requested_refunds, refunder=self.refunder),
                batch_max,
                ordered=False,
            ),
            Subscription(
                refunds.CALL_REFUND_RETRIES,
                CallRefund,
                partial(refunds.call_due_refunds, refunder=self.refunder),
                batch_max,
                ordered=False,
            ),
        ]
