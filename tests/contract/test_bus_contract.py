"""The event bus: one suite over the in-memory bus (tests, embedded) and the Kafka bus (a Tansu
broker unless KAFKA_BOOTSTRAP_SERVERS says otherwise).

Both deliver every published message to every subscription, keep one key's order for an ordered
subscription, retry transient failures without limit, isolate and dead-letter an event that keeps
failing, and say when they are running. They differ where the port says they do: the in-memory
`publish` future resolves once every subscriber handled the messages, Kafka's once the broker
acknowledged them.

One started bus per module (and per kind) serves the cases; each case has its own topic (an
event class of its own) and its own consumers, with names unique to this run."""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

import pytest

from marketplace_pay.infra.codec import encode
from marketplace_pay.infra.dispatch import Dispatcher
from marketplace_pay.infra.kafka_bus import KafkaEventBus
from marketplace_pay.infra.memory_bus import InMemoryEventBus
from marketplace_pay.shared.bus import Message, Subscription
from marketplace_pay.shared.envelope import Envelope, Event, envelope

RUN = secrets.token_hex(3)  # topics and consumer groups of this run only (a shared broker keeps old ones)
MAX_ATTEMPTS = 3
KAFKA = pytest.mark.kafka
KINDS = ["memory", pytest.param("kafka", marks=KAFKA)]
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Tick(Event, frozen=True):
    event_type: ClassVar[str] = "contract_tick"
    topic: ClassVar[str] = f"contract_tick_{RUN}"

    key: str
    n: int

    def event_id(self) -> str:
        return f"{self.key}:{self.n}"

    def partition_key(self) -> str:
        return self.key


class LossTick(Tick, frozen=True):
    topic: ClassVar[str] = f"contract_loss_{RUN}"


class OrderTick(Tick, frozen=True):
    topic: ClassVar[str] = f"contract_order_{RUN}"


class PoisonTick(Tick, frozen=True):
    topic: ClassVar[str] = f"contract_poison_{RUN}"


class FlakyTick(Tick, frozen=True):
    topic: ClassVar[str] = f"contract_flaky_{RUN}"


class GatedTick(Tick, frozen=True):
    topic: ClassVar[str] = f"contract_gated_{RUN}"


class ReadyTick(Tick, frozen=True):
    topic: ClassVar[str] = f"contract_ready_{RUN}"


def messages(event: type[Tick], *keyed: tuple[str, int]) -> list[Message]:
    out = []
    for key, n in keyed:
        env = envelope(event(key=key, n=n), aggregate_id=key, timestamp=T0, trace_id="0" * 32)
        out.append(
            Message(topic=env.topic, key=env.key, event_id=env.event_id, event_type=env.event_type, value=encode(env))
        )
    return out


def consumer(name: str) -> str:
    return f"contract-{name}-{RUN}"


class RecordedDeadLetters:
    def __init__(self) -> None:
        self.records: list[tuple[str, str, int, str]] = []  # (consumer, event id, attempts, error)

    async def record(self, *, consumer: str, message: Message, error: str, attempts: int) -> None:
        self.records.append((consumer, message.event_id, attempts, error))

    def of(self, name: str) -> list[tuple[str, int]]:
        return [(event_id, attempts) for c, event_id, attempts, _ in self.records if c == consumer(name)]


@dataclass
class Suite:
    kind: str
    bus: Any
    dead: RecordedDeadLetters
    handled: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))  # consumer name → event ids
    attempts: Counter[str] = field(default_factory=Counter)  # event id → handler calls that included it
    gate: asyncio.Event = field(default_factory=asyncio.Event)

    def recorder(self, name: str, *, before: Callable[[Sequence[Envelope[Any]]], Any] | None = None) -> Any:
        async def handle(batch: Sequence[Envelope[Any]]) -> None:
            if before is not None:
                await before(batch)
            self.handled[name].extend(e.event_id for e in batch)

        return handle


def subscribe_all(bus: Any, suite: Suite) -> None:
    async def shuffle(_: Sequence[Envelope[Any]]) -> None:
        await asyncio.sleep(random.random() * 0.01)  # batches of different keys finish out of order

    async def picky(batch: Sequence[Envelope[Any]]) -> None:
        if any(e.data.n == 13 for e in batch):
            raise ValueError("cannot handle 13")

    async def flaky(batch: Sequence[Envelope[Any]]) -> None:
        for e in batch:
            suite.attempts[e.event_id] += 1
        if any(e.event_id == "k:1" and suite.attempts["k:1"] <= MAX_ATTEMPTS + 1 for e in batch):
            raise ConnectionError("database restarting")  # more failures in a row than max_attempts

    async def gated(_: Sequence[Envelope[Any]]) -> None:
        await suite.gate.wait()

    subscriptions = [
        Subscription(consumer("loss-ordered"), LossTick, suite.recorder("loss-ordered"), batch_max=7),
        Subscription(
            consumer("loss-unordered"),
            LossTick,
            suite.recorder("loss-unordered"),
            batch_max=5,
            ordered=False,
            concurrency=3,
        ),
        Subscription(consumer("order"), OrderTick, suite.recorder("order", before=shuffle), batch_max=3),
        Subscription(consumer("poison"), PoisonTick, suite.recorder("poison", before=picky), batch_max=10),
        Subscription(consumer("bystander"), PoisonTick, suite.recorder("bystander"), batch_max=10),
        Subscription(consumer("flaky"), FlakyTick, suite.recorder("flaky", before=flaky), batch_max=10),
        Subscription(consumer("gated"), GatedTick, suite.recorder("gated", before=gated)),
    ]
    for sub in subscriptions:
        bus.subscribe(sub)


def kafka_bus(dispatcher: Dispatcher, bootstrap: str) -> KafkaEventBus:
    return KafkaEventBus(
        dispatcher,
        bootstrap_servers=bootstrap,
        client_id=f"contract-{RUN}",
        topics=[],
        topic_partitions=2,  # more than one, so keys spread, few enough to assign quickly
        session_timeout_ms=6000,
    )


def new_bus(kind: str, dead: RecordedDeadLetters, request: pytest.FixtureRequest) -> Any:
    dispatcher = Dispatcher(dead_letters=dead, max_attempts=MAX_ATTEMPTS)
    if kind == "memory":
        return InMemoryEventBus(dispatcher, partitions=4)
    return kafka_bus(dispatcher, request.getfixturevalue("kafka_bootstrap"))


@pytest.fixture(scope="module", params=KINDS)
async def suite(request: pytest.FixtureRequest) -> AsyncIterator[Suite]:
    dead = RecordedDeadLetters()
    bus = new_bus(request.param, dead, request)
    s = Suite(request.param, bus, dead)
    subscribe_all(bus, s)
    await bus.start()
    yield s
    s.gate.set()
    await bus.stop()


async def until(check: Callable[[], bool], *, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def published(suite: Suite, batches: Sequence[Sequence[Message]]) -> None:
    """Publish each batch (without waiting in between) and wait for every future; on Kafka that
    is the broker's acknowledgement only."""
    futures = [await suite.bus.publish(batch) for batch in batches]
    await asyncio.wait_for(asyncio.gather(*futures), timeout=20)


async def test_every_message_reaches_every_subscription_once(suite: Suite) -> None:
    keyed = [(f"k{k}", n) for n in range(10) for k in range(6)]
    await published(suite, [messages(LossTick, *keyed[i : i + 20]) for i in range(0, 60, 20)])
    expected = sorted(f"k{k}:{n}" for k in range(6) for n in range(10))
    names = ("loss-ordered", "loss-unordered")
    await until(lambda: all(len(suite.handled[name]) >= 60 for name in names))
    await asyncio.sleep(0.3)  # nothing more arrives
    for name in names:
        assert sorted(suite.handled[name]) == expected, name  # each once
    assert suite.dead.of("loss-ordered") == suite.dead.of("loss-unordered") == []


async def test_an_ordered_subscription_keeps_each_keys_order(suite: Suite) -> None:
    keyed = [(f"k{k}", n) for n in range(20) for k in range(5)]  # keys interleaved
    await published(suite, [messages(OrderTick, *keyed[i : i + 25]) for i in range(0, 100, 25)])
    await until(lambda: len(suite.handled["order"]) >= 100)
    by_key: dict[str, list[int]] = defaultdict(list)
    for event_id in suite.handled["order"]:
        key, n = event_id.split(":")
        by_key[key].append(int(n))
    assert dict(by_key) == {f"k{k}": list(range(20)) for k in range(5)}


async def test_an_event_that_keeps_failing_is_isolated_and_dead_lettered(suite: Suite) -> None:
    await published(suite, [messages(PoisonTick, *[("k", n) for n in range(20)])])
    await until(lambda: len(suite.handled["poison"]) >= 19 and len(suite.dead.of("poison")) >= 1)
    await until(lambda: len(suite.handled["bystander"]) >= 20)
    assert suite.handled["poison"] == [f"k:{n}" for n in range(20) if n != 13]  # the others, in order
    assert suite.dead.of("poison") == [("k:13", MAX_ATTEMPTS)]
    [error] = [e for c, _, _, e in suite.dead.records if c == consumer("poison")]
    assert "cannot handle 13" in error
    assert suite.handled["bystander"] == [f"k:{n}" for n in range(20)]  # another subscription: untouched
    assert suite.dead.of("bystander") == []


async def test_transient_failures_are_retried_without_dead_lettering(suite: Suite) -> None:
    await published(suite, [messages(FlakyTick, ("k", 1), ("k", 2))])
    await until(lambda: len(suite.handled["flaky"]) >= 2)
    assert suite.handled["flaky"] == ["k:1", "k:2"]
    assert suite.attempts["k:1"] == MAX_ATTEMPTS + 2  # four transient failures, then handled
    assert suite.dead.of("flaky") == []


async def test_the_publish_future_resolves_after_handling_in_memory_and_on_the_ack_on_kafka(suite: Suite) -> None:
    assert suite.bus.pipelined is {"memory": True, "kafka": False}[suite.kind]
    future = await suite.bus.publish(messages(GatedTick, ("k", 1), ("j", 2)))
    if suite.kind == "memory":
        await asyncio.sleep(0.2)
        assert not future.done()  # the handler is held: not handled, not resolved
        suite.gate.set()
        await asyncio.wait_for(future, timeout=5)
        assert sorted(suite.handled["gated"]) == ["j:2", "k:1"]  # handled by the time it resolves
    else:
        await asyncio.wait_for(future, timeout=10)  # acknowledged while the handler is still held
        assert suite.handled["gated"] == []
        suite.gate.set()
        await until(lambda: len(suite.handled["gated"]) >= 2)
        assert sorted(suite.handled["gated"]) == ["j:2", "k:1"]


@pytest.mark.parametrize("kind", KINDS)
async def test_ready_while_running_only_and_a_stopped_bus_publishes_nothing(
    kind: str, request: pytest.FixtureRequest
) -> None:
    dead = RecordedDeadLetters()
    bus = new_bus(kind, dead, request)
    handled: list[str] = []

    async def record(batch: Sequence[Envelope[Any]]) -> None:
        handled.extend(e.event_id for e in batch)

    bus.subscribe(Subscription(consumer(f"ready-{kind}"), ReadyTick, record))
    assert await bus.ready() is False  # not started
    await bus.start()
    try:
        assert await bus.ready() is True
        await asyncio.wait_for(await bus.publish(messages(ReadyTick, ("k", 1))), timeout=10)
        await until(lambda: handled == ["k:1"])
        assert await bus.ready() is True
    finally:
        await bus.stop()
    assert await bus.ready() is False
    with pytest.raises(Exception):  # noqa: B017,PT011 - refused outright or a failed future: the relay handles both
        await asyncio.wait_for(await bus.publish(messages(ReadyTick, ("k", 2))), timeout=5)
    assert handled == ["k:1"]
