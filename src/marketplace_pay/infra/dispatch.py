"""Delivering a batch of messages to one subscription, the same way on both buses.

Transient failures (database, Redis or network trouble) are retried without limit, with capped
back-off: the messages wait, they are not dropped. Any other failure splits the batch so one bad
event cannot hold back the others; an event that keeps failing alone is dead-lettered after
`max_attempts` tries (and stays in `dead_letters` for an operator).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import msgspec

from marketplace_pay.infra import metrics
from marketplace_pay.infra.codec import decode_envelope
from marketplace_pay.infra.failures import is_transient
from marketplace_pay.infra.logs import about
from marketplace_pay.infra.telemetry import consume_span
from marketplace_pay.shared.bus import DeadLetterSink, Message, Subscription
from marketplace_pay.shared.envelope import Envelope

log = logging.getLogger(__name__)


def _backoff_s(attempt: int, *, cap_s: float = 5.0) -> float:
    return min(cap_s, 0.05 * float(2 ** min(attempt, 10)))


class Dispatcher:
    def __init__(self, *, dead_letters: DeadLetterSink, max_attempts: int) -> None:
        self._dead_letters = dead_letters
        self._max_attempts = max_attempts

    async def deliver(self, sub: Subscription, messages: Sequence[Message]) -> None:
        """Returns when every message was handled or dead-lettered. Cancellation propagates."""
        decoded: list[tuple[Message, Envelope[Any]]] = []
        for message in messages:
            try:
                decoded.append((message, decode_envelope(message.value, sub.event)))
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                await self._dead_letter(sub, message, f"undecodable envelope: {exc}", attempts=1)
        if decoded:
            await self._run(sub, decoded)

    async def _run(self, sub: Subscription, batch: list[tuple[Message, Envelope[Any]]]) -> None:
        attempt = 0
        transient_streak = 0
        while True:
            started = time.perf_counter()
            try:
                with consume_span(sub.consumer, sub.event.event_type, [m.traceparent for m, _ in batch]):
                    await sub.handler([e for _, e in batch])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                metrics.HANDLER_FAILURES.labels(sub.consumer, "transient" if is_transient(exc) else "error").inc()
                if is_transient(exc):
                    transient_streak += 1
                    delay = _backoff_s(transient_streak)
                    log.warning(
                        "handler failed transiently; retrying",
                        extra={"consumer": sub.consumer, "error": repr(exc), "retryInS": delay, "batch": len(batch)},
                    )
                    await asyncio.sleep(delay)
                    continue
                if len(batch) > 1:
                    log.warning(
                        "handler failed on a batch; isolating events",
                        extra={"consumer": sub.consumer, "error": repr(exc), "batch": len(batch)},
                    )
                    for item in batch:
                        await self._run(sub, [item])
                    return
                attempt += 1
                message, env = batch[0]
                if attempt >= self._max_attempts:
                    log.error(
                        "handler keeps failing; dead-lettering",
                        extra={"consumer": sub.consumer, **about(env), "error": repr(exc)},
                        exc_info=exc,
                    )
                    await self._dead_letter(sub, message, repr(exc), attempts=attempt)
                    return
                await asyncio.sleep(_backoff_s(attempt))
                continue
            metrics.HANDLER_SECONDS.labels(sub.consumer).observe(time.perf_counter() - started)
            metrics.HANDLED_EVENTS.labels(sub.consumer).inc(len(batch))
            return

    async def _dead_letter(self, sub: Subscription, message: Message, error: str, *, attempts: int) -> None:
        streak = 0
        while True:
            try:
                await self._dead_letters.record(consumer=sub.consumer, message=message, error=error, attempts=attempts)
                metrics.DEAD_LETTERS.labels(sub.consumer).inc()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                streak += 1
                log.warning("could not store dead letter; retrying", exc_info=True)
                await asyncio.sleep(_backoff_s(streak))
