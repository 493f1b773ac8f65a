"""The service as a user runs it (`marketplace-pay serve`): killed with SIGKILL at chosen points,
restarted, inspected in the database and on the broker; stopped with SIGTERM mid-traffic."""

from __future__ import annotations

import asyncio
import signal
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.harness import ServiceProcess, auth, payment_body

PASSED = "(o.tx, o.id) <= (c.tx, c.id)"  # the shard's cursor is past the row: it was delivered


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def post(service: ServiceProcess, body: dict[str, Any], **headers: str) -> httpx.Response | None:
    """None when the process died before answering."""
    try:
        return httpx.post(
            f"{service.url}/api/v1/payments",
            json=body,
            headers=auth(service.settings.jwt.secret or "", "payment:write") | headers,
            timeout=10,
        )
    except httpx.HTTPError:
        return None


async def wait_for(dsn: str, query: str, *args: Any, timeout: float = 20) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            value = await conn.fetchval(query, *args)
            if value:
                return value
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out waiting for: {query} {args}")
            await asyncio.sleep(0.1)
    finally:
        await conn.close()


async def records_with_event_id(bootstrap: str, topic: str, event_id: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in (consumer.partitions_for_topic(topic) or set())]
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = [TopicPartition(topic, p) for p in (consumer.partitions_for_topic(topic) or set())]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        found = 0
        while any([await consumer.position(tp) < ends[tp] for tp in partitions]):
            batches = await consumer.getmany(timeout_ms=1000)
            for records in batches.values():
                for r in records:
                    headers = dict(r.headers or ())
                    if headers.get("eventId", b"").decode() == event_id:
                        found += 1
        return found
    finally:
        await consumer.stop()


@pytest.mark.kafka
async def test_killed_between_commit_and_publish_the_event_is_published_exactly_once_after_restart(
    fresh_database: str, settings_for: Any, kafka_bootstrap: str, processes: list[ServiceProcess]
) -> None:
    settings = settings_for(fresh_database, kafka_bootstrap_servers=kafka_bootstrap, kafka_topic_partitions=4)
    service = ServiceProcess(settings)
    processes.append(service)
    service.start(faults="relay.after_read=kill")
    buyer = uid("BUYER")
    post(service, payment_body(buyer))  # the relay dies right after reading the committed event
    assert service.wait_exit(20) == -signal.SIGKILL

    conn = await asyncpg.connect(fresh_database)
    try:
        payment_id = await conn.fetchval("SELECT payment_id FROM payments WHERE buyer_id = $1", buyer)
        row = await conn.fetchrow(
            f"SELECT event_id, {PASSED} AS passed FROM outbox o JOIN outbox_cursors c USING (shard) "
            "WHERE event_type = 'payment_authorized' AND msg_key = $1",
            str(payment_id),
        )
    finally:
        await conn.close()
    assert row["passed"] is False  # committed, read, never published

    service.start()
    await wait_for(
        fresh_database,
        f"SELECT {PASSED} FROM outbox o JOIN outbox_cursors c USING (shard) WHERE event_id = $1",
        row["event_id"],
    )
    assert await records_with_event_id(kafka_bootstrap, "payment_authorized_topic", row["event_id"]) == 1


async def test_killed_before_the_psp_call_the_payment_is_finished_after_restart(
    fresh_database: str, settings_for: Any, processes: list[ServiceProcess]
) -> None:
    service = ServiceProcess(settings_for(fresh_database))
    processes.append(service)
    service.start(faults="payments.after_insert=kill")
    buyer = uid("BUYER")
    body = payment_body(buyer)
    assert post(service, body) is None  # died mid-request
    assert service.wait_exit(20) == -signal.SIGKILL
    status = await wait_for(fresh_database, "SELECT status FROM payments WHERE buyer_id = $1", buyer)
    assert status == "PENDING_AUTH"

    service.start()
    await wait_for(fresh_database, "SELECT status <> 'PENDING_AUTH' FROM payments WHERE buyer_id = $1", buyer)
    # The shopper's client retries: same payment, no second authorization.
    retry = post(service, body)
    assert retry is not None and retry.status_code == 202
    assert retry.headers["idempotent-replayed"] == "true"
    conn = await asyncpg.connect(fresh_database)
    try:
        assert await conn.fetchval("SELECT count(*) FROM payments WHERE buyer_id = $1", buyer) == 1
        assert await conn.fetchval("SELECT count(*) FROM outbox WHERE event_type = 'payment_authorized'") == 1
    finally:
        await conn.close()


async def test_sigterm_lets_in_flight_requests_finish(
    fresh_database: str, settings_for: Any, processes: list[ServiceProcess]
) -> None:
    # NORMAL: the PSP takes 50-150 ms, so requests are in flight when SIGTERM arrives.
    service = ServiceProcess(settings_for(fresh_database, psp_scenario="NORMAL"))
    processes.append(service)
    service.start()
    headers = auth(service.settings.jwt.secret or "", "payment:write")
    buyers = [uid(f"B{i}") for i in range(30)]

    async def one(buyer: str) -> int | Exception:
        try:
            async with httpx.AsyncClient(timeout=10) as client:
                r = await client.post(f"{service.url}/api/v1/payments", json=payment_body(buyer), headers=headers)
                return r.status_code
        except httpx.HTTPError as exc:
            return exc

    requests = [asyncio.create_task(one(b)) for b in buyers]
    # SIGTERM once payments are stored and waiting for the PSP: truly in flight.
    await wait_for(fresh_database, "SELECT count(*) >= 10 FROM payments")
    assert service.proc is not None
    service.proc.send_signal(signal.SIGTERM)
    outcomes = dict(zip(buyers, await asyncio.gather(*requests), strict=True))
    exit_code = await asyncio.to_thread(service.wait_exit, 30)
    assert exit_code == 0, service.log()[-2000:]

    conn = await asyncpg.connect(fresh_database)
    try:
        stored = {r["buyer_id"]: r["status"] for r in await conn.fetch("SELECT buyer_id, status FROM payments")}
    finally:
        await conn.close()
    assert len(stored) >= 10
    for buyer, outcome in outcomes.items():
        if buyer in stored:  # the request was taken: it was answered in full
            assert outcome == 202, (buyer, outcome)
            assert stored[buyer] != "PENDING_AUTH"
        else:  # never taken (arrived after the listener closed): nothing written, no answer
            assert isinstance(outcome, httpx.HTTPError), (buyer, outcome)


@pytest.mark.slow
async def test_the_embedded_default_runs_with_nothing_configured(
    tmp_path: Path, processes: list[ServiceProcess]
) -> None:
    """`marketplace-pay serve` with no DATABASE_URL/REDIS_URL: embedded PostgreSQL and Redis,
    data kept across a restart."""
    from marketplace_pay.settings import Settings

    settings = Settings().with_(data_dir=tmp_path / "data", jwt_secret=None)
    service = ServiceProcess(settings)
    env = {
        k: v
        for k, v in service.env().items()
        if k not in ("DATABASE_URL", "REDIS_URL", "MP_JWT_SECRET", "MP_REDIS_PREFIX")
    }
    service.env = lambda: env  # type: ignore[method-assign]
    processes.append(service)
    service.start(timeout=60)
    secret = (tmp_path / "data" / "jwt-secret").read_text().strip()  # generated on first start
    r = httpx.post(f"{service.url}/api/v1/payments", json=payment_body(), headers=auth(secret, "payment:write"))
    assert r.status_code == 202, r.text
    payment_id = r.json()["paymentId"]
    assert service.terminate() == 0

    service.start(timeout=60)
    got = httpx.get(f"{service.url}/api/v1/payments/{payment_id}", headers=auth(secret, "payment:read"))
    assert got.status_code == 200  # NORMAL: the orders may still be retrying, or have finished
    assert got.json()["status"] in ("AUTHORIZED", "CAPTURED", "CAPTURED_PARTIALLY", "CAPTURE_FAILED")
    assert service.terminate() == 0
    assert (tmp_path / "data" / "postgres" / "PG_VERSION").exists()


@pytest.mark.kafka
async def test_a_kafka_consumer_that_fails_unexpectedly_rejoins_and_its_events_are_handled(
    fresh_database: str, settings_for: Any, kafka_bootstrap: str, processes: list[ServiceProcess]
) -> None:
    settings = settings_for(
        fresh_database, kafka_bootstrap_servers=kafka_bootstrap, kafka_topic_partitions=4, kafka_session_timeout_ms=6000
    )
    service = ServiceProcess(settings)
    processes.append(service)
    service.start(faults="kafka.before_deliver=raise@1", timeout=60)  # the first delivery blows up
    buyer = uid("BUYER")
    r = post(service, payment_body(buyer))
    assert r is not None and r.status_code == 202
    await wait_for(
        fresh_database,
        "SELECT status = 'CAPTURED' FROM payments WHERE buyer_id = $1",
        buyer,
        timeout=60,
    )
    assert "kafka consumer failed; leaving the group and joining again" in service.log()
