"""Dead letters: events a handler could not process after its retries. Kept for an operator, never
dropped; listed and replayed with `marketplace-pay dead-letters`, counted in a metric.

Replaying puts the event back into the outbox under its own id and key: it is delivered again to
every subscriber of its topic — the one that failed, and the others, whose state guards make the
repeat a no-op. The row stays, marked replayed (history); if the event fails again it is a dead
letter again.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

import asyncpg
import msgspec

from marketplace_pay.infra import metrics
from marketplace_pay.infra.outbox import insert_sql, shard_of
from marketplace_pay.shared.bus import Message


class DeadLetter(msgspec.Struct, frozen=True):
    id: int
    consumer: str
    event_id: str
    event_type: str
    topic: str
    key: str
    error: str
    attempts: int
    created_at: datetime
    replayed_at: datetime | None


def _dead_letter(r: asyncpg.Record) -> DeadLetter:
    return DeadLetter(
        r["id"],
        r["consumer"],
        r["event_id"],
        r["event_type"],
        r["topic"],
        r["msg_key"],
        r["error"],
        r["attempts"],
        r["created_at"],
        r["replayed_at"],
    )


class DeadLetters(Protocol):
    async def record(self, *, consumer: str, message: Message, error: str, attempts: int) -> None: ...

    async def find(
        self, *, consumer: str | None = None, include_replayed: bool = False, limit: int = 100
    ) -> list[DeadLetter]: ...

    async def replay(
        self,
        *,
        ids: Sequence[int] = (),
        consumer: str | None = None,
        older_than: datetime | None = None,
        attempts_below: int | None = None,
        limit: int | None = None,
    ) -> list[DeadLetter]: ...

    async def gauge(self) -> int: ...


class PgDeadLetters:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def record(self, *, consumer: str, message: Message, error: str, attempts: int) -> None:
        await self._pool.execute(
            """INSERT INTO dead_letters
                   (consumer, event_id, event_type, topic, msg_key, payload, traceparent, error, attempts)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
               ON CONFLICT (consumer, event_id) DO UPDATE
               SET error = EXCLUDED.error, attempts = dead_letters.attempts + EXCLUDED.attempts, created_at = now(),
                   replayed_at = NULL""",
            consumer,
            message.event_id,
            message.event_type,
            message.topic,
            message.key,
            message.value,
            message.traceparent,
            error[:8000],
            attempts,
        )

    async def find(
        self, *, consumer: str | None = None, include_replayed: bool = False, limit: int = 100
    ) -> list[DeadLetter]:
        rows = await self._pool.fetch(
            """SELECT id, consumer, event_id, event_type, topic, msg_key, error, attempts, created_at, replayed_at
               FROM dead_letters
               WHERE ($1::text IS NULL OR consumer = $1) AND ($2 OR replayed_at IS NULL)
               ORDER BY id LIMIT $3""",
            consumer,
            include_replayed,
            limit,
        )
        return [_dead_letter(r) for r in rows]

    async def replay(
        self,
        *,
        ids: Sequence[int] = (),
        consumer: str | None = None,
        older_than: datetime | None = None,
        attempts_below: int | None = None,
        limit: int | None = None,
    ) -> list[DeadLetter]:
        """Put the chosen dead letters (by id, or every one of `consumer`; when given, only those
        dead-lettered before `older_than`, that failed fewer than `attempts_below` times in all,
        at most `limit`) not replayed yet back into the outbox, in one transaction. Returns what
        was replayed."""
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                """UPDATE dead_letters SET replayed_at = now()
                   WHERE id IN (
                       SELECT id FROM dead_letters
                       WHERE replayed_at IS NULL AND (id = ANY($1::bigint[]) OR consumer = $2)
                         AND ($3::timestamptz IS NULL OR created_at < $3)
                         AND ($4::int IS NULL OR attempts < $4)
                       ORDER BY id LIMIT $5
                       FOR UPDATE SKIP LOCKED
                   )
                   RETURNING id, consumer, event_id, event_type, topic, msg_key, payload, traceparent, error, attempts,
                             created_at, replayed_at""",
                list(ids),
                consumer,
                older_than,
                attempts_below,
                limit,
            )
            rows = sorted(rows, key=lambda r: r["id"])
            await conn.execute(
                insert_sql(1),
                [shard_of(r["msg_key"]) for r in rows],
                [r["event_id"] for r in rows],
                [r["event_type"] for r in rows],
                [r["topic"] for r in rows],
                [r["msg_key"] for r in rows],
                [r["payload"] for r in rows],
                [r["traceparent"] for r in rows],
            )
        return [_dead_letter(r) for r in rows]

    async def gauge(self) -> int:
        """Dead letters waiting for an operator, per consumer, into the metric; returns the total."""
        # Every consumer that ever had one, so that a consumer whose letters were all replayed
        # reads 0 (in every worker process), not its last count.
        rows = await self._pool.fetch(
            "SELECT consumer, count(*) FILTER (WHERE replayed_at IS NULL) AS n FROM dead_letters GROUP BY consumer"
        )
        for r in rows:
            metrics.DEAD_LETTERS_WAITING.labels(r["consumer"]).set(r["n"])
        return sum(r["n"] for r in rows)
