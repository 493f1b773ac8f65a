"""The Kafka bus (aiokafka). Production: several processes share each subscription through its
consumer group, partitions keyed by the message's key (payment id, payment order id, journal id).

Producing: acks=all, the outbox relay waits for the acknowledgement before its cursor moves past the rows.
There is no idempotent producer (the Tansu broker used in tests lacks it), so a retried send may
duplicate a record; handlers are idempotent (state guards), which makes that harmless.

Consuming: one consumer per subscription; the batches of the partitions fetched together are
handled concurrently, each through the dispatcher (retries, dead letters), and a partition's
offset is committed only after its handler's transaction committed. A crash in between
redelivers the batch; the handlers' state guards absorb it. A consumer that fails unexpectedly
leaves its group (so its partitions go to the other members at once) and joins again after a
pause; it never sits in the group heartbeating while consuming nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import CommitFailedError, KafkaError, TopicAlreadyExistsError

from marketplace_pay.infra import metrics
from marketplace_pay.infra.dispatch import Dispatcher
from marketplace_pay.shared.bus import Message, Subscription
from marketplace_pay.shared.faults import faults

log = logging.getLogger(__name__)

# Partition counts of the topics created at start (MP_KAFKA_TOPIC_PARTITIONS overrides).
SEED_PARTITIONS = {
    "payment_authorized_topic": 48,
    "payment_order_created_topic": 48,
    "payment_order_capture_request_queue_topic": 48,
    "payment_order_psp_result_updated_topic": 48,
    "payment_order_finalized_topic": 48,
    "ledger_record_request_queue_topic": 24,
    "ledger_entries_recorded_topic": 24,
}


class KafkaEventBus:
    pipelined = False

    def __init__(
        self,
        dispatcher: Dispatcher,
        *,
        bootstrap_servers: str,
        client_id: str,
        topics: Sequence[str],
        topic_partitions: int = 0,
        replication_factor: int = 0,
        session_timeout_ms: int = 10000,
    ) -> None:
        """`replication_factor` 0: as many replicas as the cluster has brokers, up to 3."""
        self._dispatcher = dispatcher
        self._bootstrap = bootstrap_servers
        self._client_id = client_id
        self._topics = list(dict.fromkeys(topics))
        self._topic_partitions = topic_partitions
        self._replication_factor = replication_factor
        self._session_timeout_ms = session_timeout_ms
        self._subscriptions: list[Subscription] = []
        self._producer: AIOKafkaProducer | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._lag_reported: dict[str, set[TopicPartition]] = {}

    def subscribe(self, subscription: Subscription) -> None:
        if self._producer is not None:
            raise RuntimeError("subscribe before start()")
        self._subscriptions.append(subscription)
        if subscription.event.topic not in self._topics:
            self._topics.append(subscription.event.topic)

    async def _ensure_topics(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self._bootstrap, client_id=f"{self._client_id}-admin")
        await admin.start()
        try:
            existing = set(await admin.list_topics())
            replicas = self._replication_factor or min(3, max(1, len((await admin.describe_cluster())["brokers"])))
            wanted = [
                NewTopic(
                    t,
                    num_partitions=self._topic_partitions or SEED_PARTITIONS.get(t, 12),
                    replication_factor=replicas,
                )
                for t in self._topics
                if t not in existing
            ]
            if wanted:
                with contextlib.suppress(TopicAlreadyExistsError):
                    await admin.create_topics(wanted)
        finally:
            await admin.close()

    async def start(self) -> None:
        self._stopping = False
        await self._ensure_topics()
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self._bootstrap,
            client_id=f"{self._client_id}-producer",
            acks="all",
            enable_idempotence=False,
            linger_ms=2,
            max_batch_size=262144,
            request_timeout_ms=20000,
        )
        await self._producer.start()
        # Group joins take a few seconds each: start every consumer at once.
        consumers = [self._consumer(sub) for sub in self._subscriptions]
        await asyncio.gather(*(c.start() for c in consumers))
        self._tasks = [
            asyncio.create_task(self._supervise(sub, c), name=f"kafka:{sub.consumer}")
            for sub, c in zip(self._subscriptions, consumers, strict=True)
        ]

    def _consumer(self, sub: Subscription) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            sub.event.topic,
            bootstrap_servers=self._bootstrap,
            client_id=f"{self._client_id}-{sub.consumer}",
            group_id=sub.consumer,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=self._session_timeout_ms,
            heartbeat_interval_ms=max(100, self._session_timeout_ms // 5),
            max_poll_records=sub.batch_max,
            fetch_max_wait_ms=20,
        )

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def publish(self, messages: Sequence[Message]) -> asyncio.Future[None]:
        assert self._producer is not None, "bus not started"
        acks = []
        for m in messages:
            headers = [("eventId", m.event_id.encode()), ("eventType", m.event_type.encode())]
            if m.traceparent:
                headers.append(("traceparent", m.traceparent.encode()))
            acks.append(await self._producer.send(m.topic, value=m.value, key=m.key.encode(), headers=headers))
        return asyncio.ensure_future(_all_acked(acks))

    async def _supervise(self, sub: Subscription, consumer: AIOKafkaConsumer) -> None:
        """Run the consumer; after an unexpected failure, leave the group and join again."""
        failures = 0
        while True:
            try:
                await self._consume(sub, consumer)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                failures += 1
                log.exception(
                    "kafka consumer failed; leaving the group and joining again", extra={"consumer": sub.consumer}
                )
            finally:
                with contextlib.suppress(Exception):  # a consumer that failed may fail to stop too
                    await consumer.stop()  # leaves the group: its partitions are reassigned now
            await asyncio.sleep(min(30.0, 0.5 * 2**failures))
            consumer = self._consumer(sub)
            try:
                await consumer.start()
            except Exception:
                log.warning("kafka consumer could not join again", extra={"consumer": sub.consumer}, exc_info=True)

    async def _consume(self, sub: Subscription, consumer: AIOKafkaConsumer) -> None:
        while not self._stopping:
            try:
                batches = await consumer.getmany(timeout_ms=500, max_records=sub.batch_max)
            except KafkaError as exc:
                log.warning("kafka fetch failed", extra={"consumer": sub.consumer, "error": repr(exc)})
                await asyncio.sleep(1)
                continue
            await asyncio.gather(*(self._handle(sub, consumer, tp, records) for tp, records in batches.items()))
            await self._report_lag(sub, consumer)

    async def _handle(self, sub: Subscription, consumer: AIOKafkaConsumer, tp: TopicPartition, records: list) -> None:  # type: ignore[type-arg]
        messages = [
            Message(
                topic=r.topic,
                key=(r.key or b"").decode(),
                event_id=_header(r.headers, "eventId") or "",
                event_type=_header(r.headers, "eventType") or "",
                value=r.value or b"",
                traceparent=_header(r.headers, "traceparent"),
            )
            for r in records
        ]
        faults.hit("kafka.before_deliver")
        await self._dispatcher.deliver(sub, messages)
        await self._commit(sub, consumer, tp, records[-1].offset + 1)

    async def _commit(self, sub: Subscription, consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int) -> None:
        try:
            await consumer.commit({tp: offset})
        except (CommitFailedError, KafkaError) as exc:
            # Rebalanced away: the new owner redelivers from the last commit; the handlers' state
            # guards absorb the repeat.
            log.warning("kafka commit failed", extra={"consumer": sub.consumer, "error": repr(exc)})

    async def _report_lag(self, sub: Subscription, consumer: AIOKafkaConsumer) -> None:
        assigned = set(consumer.assignment())
        # Partitions handed to another member: their lag is that member's to report now.
        for tp in self._lag_reported.get(sub.consumer, set()) - assigned:
            metrics.CONSUMER_LAG.labels(sub.consumer, tp.topic, str(tp.partition)).set(0)
        self._lag_reported[sub.consumer] = assigned
        for tp in assigned:
            highwater = consumer.highwater(tp)
            position = consumer.last_stable_offset(tp) if highwater is None else highwater
            try:
                current = await consumer.position(tp)
            except KafkaError:
                continue
            if position is not None:
                metrics.CONSUMER_LAG.labels(sub.consumer, tp.topic, str(tp.partition)).set(max(0, position - current))

    async def ready(self) -> bool:
        if self._producer is None:
            return False
        try:
            await asyncio.wait_for(self._producer.client.force_metadata_update(), timeout=2)
        except (TimeoutError, KafkaError):
            return False
        return all(not t.done() for t in self._tasks)


async def _all_acked(acks: list[asyncio.Future[object]]) -> None:
    await asyncio.gather(*acks)


def _header(headers: Sequence[tuple[str, bytes]] | None, name: str) -> str | None:
    for key, value in headers or ():
        if key == name:
            return value.decode()
    return None
