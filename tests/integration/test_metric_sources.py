"""Gauges that must not keep a stale value in any worker: a Kafka partition handed to another
member reads 0 at its former owner, and a consumer whose dead letters were all replayed reads 0."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg
from aiokafka import TopicPartition
from prometheus_client import REGISTRY

from marketplace_pay.infra import partitions
from marketplace_pay.infra.dead_letters import PgDeadLetters
from marketplace_pay.infra.dispatch import Dispatcher
from marketplace_pay.infra.kafka_bus import KafkaEventBus
from marketplace_pay.shared.bus import Message, Subscription

LAG = "marketplace_pay_consumer_lag_records"


class FakeConsumer:
    """What `_report_lag` asks of an aiokafka consumer."""

    def __init__(self, positions: dict[TopicPartition, tuple[int, int]]) -> None:
        self.positions = positions  # partition -> (high water mark, position)

    def assignment(self) -> set[TopicPartition]:
        return set(self.positions)

    def highwater(self, tp: TopicPartition) -> int:
        return self.positions[tp][0]

    def last_stable_offset(self, tp: TopicPartition) -> int:
        return self.positions[tp][0]

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp][1]


async def test_a_partition_handed_to_another_member_reads_zero_at_its_former_owner() -> None:
    bus = KafkaEventBus(
        Dispatcher(dead_letters=None, max_attempts=1), bootstrap_servers="unused:9092", client_id="t", topics=()
    )  # type: ignore[arg-type]
    sub = Subscription("metrics-test-consumer", object, lambda batch: None)  # type: ignore[arg-type, return-value]
    p0, p1 = TopicPartition("metrics_test_topic", 0), TopicPartition("metrics_test_topic", 1)

    def lag(tp: TopicPartition) -> float | None:
        return REGISTRY.get_sample_value(
            LAG, {"consumer": sub.consumer, "topic": tp.topic, "partition": str(tp.partition)}
        )

    await bus._report_lag(sub, FakeConsumer({p0: (120, 20), p1: (50, 50)}))  # type: ignore[arg-type]
    assert (lag(p0), lag(p1)) == (100, 0)
    # p0 went to another member
    await bus._report_lag(sub, FakeConsumer({p1: (70, 60)}))  # type: ignore[arg-type]
    assert (lag(p0), lag(p1)) == (0, 10)


async def test_a_consumer_whose_dead_letters_were_replayed_reads_zero(fresh_database: str) -> None:
    conn = await asyncpg.connect(fresh_database)
    try:
        await partitions.ensure_partitions(conn, partitions.OUTBOX, now=datetime.now(UTC))
    finally:
        await conn.close()
    pool: Any = await asyncpg.create_pool(fresh_database, min_size=1, max_size=2)
    try:
        dead_letters = PgDeadLetters(pool)
        message = Message("metrics_test_topic", "k", "k:1", "pinged", b"{}", None)
        await dead_letters.record(consumer="metrics-test-picky", message=message, error="boom", attempts=3)
        waiting = {"consumer": "metrics-test-picky"}
        assert await dead_letters.gauge() == 1
        assert REGISTRY.get_sample_value("marketplace_pay_dead_letters_waiting", waiting) == 1
        await dead_letters.replay(consumer="metrics-test-picky")
        assert await dead_letters.gauge() == 0
        assert REGISTRY.get_sample_value("marketplace_pay_dead_letters_waiting", waiting) == 0
    finally:
        await pool.close()
