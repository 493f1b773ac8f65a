"""Writing to the transactional outbox.

An event is queued by inserting its envelope into `outbox` in the same transaction as the state
change that caused it. Rows are never updated: the relay (infra/relay.py) reads each of the 32
shards in transaction order and keeps a cursor per shard. A row's shard follows from its key, so
every event of one key is in one shard and keeps its order.

Handlers that change state and emit events in one statement embed `insert_sql(...)` as a
data-modifying CTE; the unit of work (infra/uow.py) uses `append_to_outbox`.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import asyncpg

from marketplace_pay.infra.codec import encode
from marketplace_pay.shared.envelope import Envelope

SHARDS = 32
COLUMNS = 7  # parameters `insert_sql` takes per event column


def shard_of(key: str) -> int:
    return zlib.crc32(key.encode()) % SHARDS


def rows(envelopes: Sequence[Envelope[Any]]) -> list[list[Any]]:
    """The column arrays of `insert_sql`, in its parameter order."""
    shards, ids, types, topics, keys, payloads, traceparents = [], [], [], [], [], [], []
    for e in envelopes:
        key = e.key
        shards.append(shard_of(key))
        ids.append(e.event_id)
        types.append(e.event_type)
        topics.append(e.topic)
        keys.append(key)
        payloads.append(encode(e))
        traceparents.append(e.traceparent)
    return [shards, ids, types, topics, keys, payloads, traceparents]


def insert_sql(first: int, *, only_for: tuple[int, str] | None = None) -> str:
    """`INSERT INTO outbox …` taking the column arrays as parameters `$first…$first+6`.

    `only_for=(n, "cte.column")`: parameter `$n` is one more array, parallel to the others,
    naming each event's subject, and only events whose subject is in `cte.column` are inserted —
    so a guarded state change and the events it causes commit together or not at all."""
    p = [f"${first + i}" for i in range(COLUMNS)]
    source = (
        f"unnest({p[0]}::smallint[], {p[1]}::text[], {p[2]}::text[], {p[3]}::text[], {p[4]}::text[], "
        f"{p[5]}::bytea[], {p[6]}::text[]"
    )
    columns = "shard, event_id, event_type, topic, msg_key, payload, traceparent"
    if only_for is None:
        return f"INSERT INTO outbox ({columns}) SELECT * FROM {source})"
    n, column = only_for
    cte, _, name = column.partition(".")
    return (
        f"INSERT INTO outbox ({columns}) "
        f"SELECT e.shard, e.event_id, e.event_type, e.topic, e.msg_key, e.payload, e.traceparent "
        f"FROM {source}, ${n}::bigint[]) "
        f"AS e(shard, event_id, event_type, topic, msg_key, payload, traceparent, subject) "
        f"WHERE e.subject IN (SELECT {name} FROM {cte})"
    )


async def append_to_outbox(conn: asyncpg.Connection, envelopes: Sequence[Envelope[Any]]) -> None:
    """Insert envelopes into the outbox, in order, within the caller's transaction."""
    if envelopes:
        await conn.execute(insert_sql(1), *rows(envelopes))


def shards(envelopes: Sequence[Envelope[Any]]) -> set[int]:
    return {shard_of(e.key) for e in envelopes}


async def partition_still_needed(conn: asyncpg.Connection, partition: str) -> bool:
    """Whether a time partition of the outbox holds a row some shard's cursor has not passed."""
    return bool(
        await conn.fetchval(
            f"""SELECT EXISTS (SELECT 1 FROM outbox_cursors c
                               WHERE EXISTS (SELECT 1 FROM {partition} o
                                             WHERE o.shard = c.shard AND (o.tx, o.id) > (c.tx, c.id)))"""
        )
    )


async def prune_default_partition(conn: asyncpg.Connection, *, older_than_s: int) -> int:
    """Rows land in the default partition only when the partition job fell behind (or were
    carried over from an older outbox): delete those every cursor has passed."""
    status = await conn.execute(
        """DELETE FROM outbox_default o USING outbox_cursors c
           WHERE o.shard = c.shard AND (o.tx, o.id) <= (c.tx, c.id)
             AND o.created_at < now() - make_interval(secs => $1)""",
        older_than_s,
    )
    return int(status.split()[-1])
