"""What the outbox relay asks PostgreSQL and how it reads a snapshot — the rows after each
shard's position, the rows late committers left behind it, the cursors, the backlog, the
processes sharing the shards — and the NOTIFY that wakes the relays of other processes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

import asyncpg

from marketplace_pay.infra import metrics

log = logging.getLogger(__name__)

Position = tuple[int, int]  # (transaction id, row id)
MAX_ROW_ID = 2**63 - 1

_COLUMNS = "o.shard, o.tx, o.id, o.event_id, o.event_type, o.topic, o.msg_key, o.payload, o.traceparent"

# The rows after each shard's position, and the snapshot the read was taken in.
READ = f"""
SELECT {_COLUMNS}, pg_current_snapshot()::text AS snapshot
FROM unnest($1::smallint[], $2::xid8[], $3::bigint[]) AS c(shard, tx, id)
CROSS JOIN LATERAL (
    SELECT * FROM outbox o
    WHERE o.shard = c.shard AND (o.tx, o.id) > (c.tx, c.id)
    ORDER BY o.tx, o.id
    LIMIT $4
) o
"""

# The rows that transactions still running at an earlier read, and finished since, committed
# *behind* each shard's read position (rows ahead of it are the next reads' business, in order).
READ_LATE = f"""
SELECT {_COLUMNS}
FROM unnest($1::smallint[], $2::xid8[], $3::bigint[]) AS c(shard, tx, id)
CROSS JOIN LATERAL (
    SELECT * FROM outbox o
    WHERE o.shard = c.shard AND o.tx = ANY($4::xid8[]) AND (o.tx, o.id) < (c.tx, c.id)
    ORDER BY o.tx, o.id
) o
"""

SAVE_CURSORS = """
UPDATE outbox_cursors c SET tx = v.tx, id = v.id, updated_at = now()
FROM unnest($1::smallint[], $2::xid8[], $3::bigint[]) AS v(shard, tx, id)
WHERE c.shard = v.shard AND (c.tx, c.id) < (v.tx, v.id)
"""

BACKLOG = """
SELECT count(*) FROM outbox_cursors c
CROSS JOIN LATERAL (SELECT 1 FROM outbox o WHERE o.shard = c.shard AND (o.tx, o.id) > (c.tx, c.id)) o
"""


def running(snapshot: str) -> set[int]:
    """The transactions still running in a snapshot ("xmin:xmax:xip,…")."""
    _, _, xip = snapshot.split(":")
    return {int(x) for x in xip.split(",") if x}


def running_below(snapshot: str, positions: Iterable[Position]) -> set[int]:
    """The transactions still running in `snapshot` whose ids lie below a read position: they
    may yet commit rows behind it."""
    top = max((tx for tx, _ in positions), default=0)
    return {x for x in running(snapshot) if x < top}


def before(position: Position) -> Position:
    tx, row = position
    return tx, row - 1


async def live_instances(pool: asyncpg.Pool, *, fresh_s: float = 5.0) -> int:
    """Processes that lead outbox shards (not API-only ones) and whose snowflake lease heartbeat
    is fresh: the members sharing the shards."""
    return int(
        await pool.fetchval(
            "SELECT count(*) FROM instance_leases WHERE relays AND heartbeat_at > now() - make_interval(secs => $1)",
            fresh_s,
        )
    )


class Batch:
    """Rows published together; `first` is each shard's oldest row in it."""

    __slots__ = ("first", "size")

    def __init__(self, first: dict[int, Position], size: int) -> None:
        self.first = first
        self.size = size


async def backlog(pool: asyncpg.Pool) -> int:
    """Outbox rows not yet published, over every shard (also into the metric)."""
    count = int(await pool.fetchval(BACKLOG))
    metrics.OUTBOX_BACKLOG.set(count)
    return count


class Notifier:
    """NOTIFY on a channel, coalesced: one in flight at a time, so a burst of commits costs one
    or two, not one each (NOTIFY serializes the commits of the transactions that send it)."""

    def __init__(self, pool: asyncpg.Pool, channel: str) -> None:
        self._pool = pool
        self._channel = channel
        self._task: asyncio.Task[None] | None = None
        self._again = False

    def notify(self) -> None:
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.create_task(self._send(), name=f"notify-{self._channel}")

    async def drain(self) -> None:
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def _send(self) -> None:
        while True:
            self._again = False
            try:
                await self._pool.execute("SELECT pg_notify($1, '')", self._channel)
            except Exception as exc:  # noqa: BLE001 - the listeners poll as well
                log.debug("notify failed", extra={"channel": self._channel, "error": repr(exc)})
            if not self._again:
                return
            await asyncio.sleep(0.002)
