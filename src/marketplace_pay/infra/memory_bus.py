"""The in-memory bus: the outbox relay's messages go to per-subscriber partition queues.

Each ordered subscription has `partitions` workers; a message goes to the worker of hash(key),
so one key's messages are handled in order while other keys proceed in parallel — the same
contract Kafka gives. An unordered subscription has one queue and runs several batches at once.
`publish` resolves only when every subscriber has handled (committed, or dead-lettered) every
message, and only then does the relay's cursor move past the outbox rows: a crash before that
leaves them behind the saved cursor and they are delivered again after restart. Nothing is lost
with the process, although the queues live in memory.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections import defaultdict, deque
from collections.abc import Sequence

from marketplace_pay.infra.dispatch import Dispatcher
from marketplace_pay.shared.bus import Message, Subscription

log = logging.getLogger(__name__)


class BusStopped(RuntimeError):
    pass


class _Ticket:
    """Completion of one publish call: resolves when all (message, subscriber) pairs are done."""

    __slots__ = ("future", "remaining")

    def __init__(self, future: asyncio.Future[None], remaining: int) -> None:
        self.future = future
        self.remaining = remaining

    def done_one(self) -> None:
        self.remaining -= 1
        if self.remaining == 0 and not self.future.done():
            self.future.set_result(None)


class _Partition:
    """One worker of a subscription: takes batches off its queue and delivers them. An ordered
    subscription has one partition per key hash and one batch in flight per partition; an
    unordered one has a single queue drained by `concurrency` batches at once."""

    def __init__(self, subscription: Subscription, dispatcher: Dispatcher) -> None:
        self.subscription = subscription
        self.dispatcher = dispatcher
        self.queue: deque[tuple[Message, _Ticket]] = deque()
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.running: set[asyncio.Task[None]] = set()
        self._room = asyncio.Event()  # a running batch finished

    def put(self, message: Message, ticket: _Ticket) -> None:
        self.queue.append((message, ticket))
        self.wake.set()

    async def run(self) -> None:
        sub = self.subscription
        limit = 1 if sub.ordered else max(1, sub.concurrency)
        room = self._room
        try:
            while True:
                if not self.queue:
                    self.wake.clear()
                    await self.wake.wait()
                    continue
                if len(self.running) >= limit:
                    room.clear()
                    await room.wait()
                    continue
                items = [self.queue.popleft() for _ in range(min(sub.batch_max, len(self.queue)))]
                if limit == 1:
                    await self._deliver(items)
                    continue
                task = asyncio.create_task(self._deliver(items))
                self.running.add(task)
                task.add_done_callback(self._finished)
        finally:
            for task in list(self.running):
                task.cancel()
            await asyncio.gather(*self.running, return_exceptions=True)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.running.discard(task)
        self._room.set()

    async def _deliver(self, items: list[tuple[Message, _Ticket]]) -> None:
        while True:
            try:
                await self.dispatcher.deliver(self.subscription, [m for m, _ in items])
                break
            except asyncio.CancelledError:
                # Not handled: put back so that stop() fails their tickets (the relay re-sends).
                self.queue.extendleft(reversed(items))
                raise
            except Exception:  # a bug in delivery itself: keep the messages, try again later
                log.exception("delivery failed", extra={"consumer": self.subscription.consumer})
                await asyncio.sleep(1)
        for _, ticket in items:
            ticket.done_one()


class InMemoryEventBus:
    pipelined = True

    def __init__(self, dispatcher: Dispatcher, *, partitions: int = 4) -> None:
        self._dispatcher = dispatcher
        self._partitions = partitions
        self._by_topic: dict[str, list[list[_Partition]]] = defaultdict(list)
        self._running = False

    def subscribe(self, subscription: Subscription) -> None:
        if self._running:
            raise RuntimeError("subscribe before start()")
        consumers = {p[0].subscription.consumer for subs in self._by_topic.values() for p in subs}
        if subscription.consumer in consumers:
            raise ValueError(f"consumer {subscription.consumer!r} is already subscribed")
        partitions = self._partitions if subscription.ordered else 1
        self._by_topic[subscription.event.topic].append(
            [_Partition(subscription, self._dispatcher) for _ in range(partitions)]
        )

    async def start(self) -> None:
        self._running = True
        for partition in self._all():
            partition.task = asyncio.create_task(partition.run(), name=f"bus:{partition.subscription.consumer}")

    def _all(self) -> list[_Partition]:
        return [p for subs in self._by_topic.values() for group in subs for p in group]

    async def stop(self) -> None:
        self._running = False
        partitions = self._all()
        for p in partitions:
            if p.task is not None:
                p.task.cancel()
        await asyncio.gather(*(p.task for p in partitions if p.task is not None), return_exceptions=True)
        for p in partitions:
            while p.queue:
                _, ticket = p.queue.popleft()
                if not ticket.future.done():
                    ticket.future.set_exception(BusStopped("bus stopped before the message was handled"))
            p.task = None

    async def publish(self, messages: Sequence[Message]) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not self._running:
            future.set_exception(BusStopped("bus is not running"))
            return future
        routes = [(m, self._by_topic.get(m.topic, ())) for m in messages]
        ticket = _Ticket(future, sum(len(subs) for _, subs in routes))
        if ticket.remaining == 0:
            future.set_result(None)
            return future
        for message, subs in routes:
            index = zlib.crc32(message.key.encode()) % self._partitions
            for group in subs:
                group[index % len(group)].put(message, ticket)
        return future

    async def ready(self) -> bool:
        return self._running and all(p.task is not None and not p.task.done() for p in self._all())

    def queued(self) -> int:
        return sum(len(p.queue) for p in self._all())
