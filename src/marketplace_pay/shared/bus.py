"""The event bus port. Contexts talk only through it.

Two adapters implement it: `InMemoryEventBus` (tests, embedded default) and `KafkaEventBus`
(production). Both deliver batches of envelopes to idempotent handlers; the outbox relay is the
only publisher.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from marketplace_pay.shared.envelope import Envelope, Event


class Message(msgspec.Struct, frozen=True):
    """One encoded envelope and its routing, as the relay hands it to the bus."""

    topic: str
    key: str
    event_id: str
    event_type: str
    value: bytes
    traceparent: str | None = None


Handler = Callable[[Sequence[Envelope[Any]]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Subscription:
    """`consumer` names the handler (and its Kafka consumer group).

    The handler gets a batch of envelopes of `event` and must be idempotent: a batch may be
    delivered again after a crash, whole or in part. `ordered`: events of one key are handled one
    after the other, in publish order. An unordered subscription (its handler guards its own
    state, and may wait on slow calls) runs up to `concurrency` batches at once."""

    consumer: str
    event: type[Event]
    handler: Handler
    batch_max: int = 200
    ordered: bool = True
    concurrency: int = 1


class EventBus(Protocol):
    pipelined: bool
    """True when `publish` resolves only after handlers ran, so the relay keeps several
    batches in flight; False when it resolves on the broker's acknowledgement."""

    def subscribe(self, subscription: Subscription) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def publish(self, messages: Sequence[Message]) -> asyncio.Future[None]:
        """Queue `messages` in order and return a future that resolves once all of them are
        durable: acknowledged by every Kafka replica (acks=all), or, in memory, handled by
        every subscriber (committed, or dead-lettered). Messages with the same key keep their
        order within and across calls. The future fails if the messages could not be made
        durable; the caller must then publish them again."""
        ...

    async def ready(self) -> bool: ...


class DeadLetterSink(Protocol):
    async def record(self, *, consumer: str, message: Message, error: str, attempts: int) -> None:
        """Keep a message a handler could not process, for an operator. Must not lose it:
        raises if it cannot be stored, and the delivery is then retried."""
        ...
