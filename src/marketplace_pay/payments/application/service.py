"""What the rest of the system may ask of the payments context: create and read payments, the
capture handlers and the jobs that keep every order moving."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Protocol

from marketplace_pay.payments.application import capture
from marketplace_pay.payments.application.capture import CapturePolicy, Capturer, RetryQueue
from marketplace_pay.payments.application.create_payment import (
    CreatePayment,
    CreatePaymentResult,
    Render,
    create_payment,
    resolve_pending_authorizations,
)
from marketplace_pay.payments.application.ports import (
    AuthorizationGateway,
    CaptureGateway,
    CaptureStore,
    IdGenerator,
    PaymentStore,
    RetryUnitOfWork,
    SellerDirectory,
)
from marketplace_pay.payments.application.views import PaymentView
from marketplace_pay.payments.domain.events import CapturePaymentOrder, PaymentAuthorized
from marketplace_pay.shared.bus import Subscription
from marketplace_pay.shared.clock import Clock


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


class Payments:
    def __init__(
        self,
        ports: PaymentsPorts,
        *,
        policy: PaymentsPolicy,
        capture_policy: CapturePolicy,
        clock: Clock,
        rng: random.Random | None = None,
    ) -> None:
        self._ports = ports
        self._policy = policy
        self._clock = clock
        self.capturer = Capturer(
            store=ports.capture,
            psp=ports.capturer,
            retries=ports.retries,
            clock=clock,
            policy=capture_policy,
            inflight=asyncio.Semaphore(policy.psp_max_inflight),
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
        ]
