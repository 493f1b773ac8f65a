"""Time partitions of the queue tables: created ahead of need, dropped whole once nothing in them
is needed any more — never deleted row by row, so the tables stay small at any rate.

A partition covers `[start, start + width)` of `created_at` and is named
`<table>_p<YYYYMMDD>t<HHMMSS>` (UTC start). A default partition catches rows if the job that
creates partitions fell behind; a range that already has rows there is not created (those rows
stay in the default partition until it is emptied).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from marketplace_pay.infra import outbox

log = logging.getLogger(__name__)

_NAME = re.compile(r"^(?P<table>[a-z_]+)_p(?P<day>\d{8})t(?P<time>\d{6})$")


@dataclass(frozen=True, slots=True)
class PartitionedTable:
    name: str
    width_s: int  # divides a day
    ahead: int  # partitions kept ready beyond the current one

    def start_of(self, at: datetime) -> datetime:
        day = at.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        offset = int((at - day).total_seconds()) // self.width_s * self.width_s
        return day + timedelta(seconds=offset)

    def partition_name(self, start: datetime) -> str:
        return f"{self.name}_p{start:%Y%m%d}t{start:%H%M%S}"


OUTBOX = PartitionedTable("outbox", width_s=300, ahead=2)
# How long creating or dropping a partition may wait for its table lock (the table's writers wait
# behind it meanwhile); a run that could not have it tries again a minute later.
DDL_LOCK_TIMEOUT_MS = 200
IDEMPOTENCY_RESPONSES = PartitionedTable("idempotency_responses", width_s=86_400, ahead=1)
TABLES = (OUTBOX, IDEMPOTENCY_RESPONSES)


def _start_of_partition(table: PartitionedTable, relname: str) -> datetime | None:
    match = _NAME.match(relname)
    if match is None or match.group("table") != table.name:
        return None
    return datetime.strptime(match.group("day") + match.group("time"), "%Y%m%d%H%M%S").replace(tzinfo=UTC)


async def partitions(conn: asyncpg.Connection, table: PartitionedTable) -> dict[str, datetime]:
    """Name → start of every time partition of `table` (not the default one)."""
    rows = await conn.fetch(
        """SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
           WHERE i.inhparent = $1::regclass""",
        table.name,
    )
    found = {}
    for r in rows:
        start = _start_of_partition(table, r["relname"])
        if start is not None:
            found[r["relname"]] = start
    return found


async def ensure_partitions(conn: asyncpg.Connection, table: PartitionedTable, *, now: datetime) -> list[str]:
    """Create the current partition and `ahead` more. Returns the names created."""
    existing = await partitions(conn, table)
    newest_default = await conn.fetchval(f"SELECT max(created_at) FROM {table.name}_default")
    created = []
    start = table.start_of(now)
    for _ in range(table.ahead + 1):
        name = table.partition_name(start)
        end = start + timedelta(seconds=table.width_s)
        blocked = newest_default is not None and newest_default >= start
        if name not in existing and not blocked:
            # Creating a partition locks the whole table, and while it waits for that lock every
            # writer queues behind it: wait briefly, else leave it to the next run (partitions are
            # made `ahead` windows early, so a missed run costs nothing).
            try:
                async with conn.transaction():
                    await conn.execute(f"SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT_MS}ms'")
                    await conn.execute(
                        f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF {table.name} "
                        f"FOR VALUES FROM ('{start.isoformat()}') TO ('{end.isoformat()}')"
                    )
            except asyncpg.LockNotAvailableError:
                log.info("table busy; creating its partition later", extra={"partition": name})
                break
            created.append(name)
        start = end
    return created


async def drop_partitions(
    conn: asyncpg.Connection,
    table: PartitionedTable,
    *,
    older_than: datetime,
    still_needed: Callable[[asyncpg.Connection, str], Awaitable[bool]] | None = None,
) -> list[str]:
    """Drop every partition that ended before `older_than` and that `still_needed` (if given)
    does not hold back. A drop that cannot get its lock quickly is left for the next run rather
    than queueing the table's writers behind it."""
    dropped = []
    for name, start in sorted((await partitions(conn, table)).items(), key=lambda item: item[1]):
        if start + timedelta(seconds=table.width_s) > older_than:
            break
        if still_needed is not None and await still_needed(conn, name):
            break  # later partitions are newer still: nothing beyond this one can go either
        try:
            async with conn.transaction():
                await conn.execute(f"SET LOCAL lock_timeout = '{DDL_LOCK_TIMEOUT_MS}ms'")
                await conn.execute(f"DROP TABLE {name}")
        except asyncpg.LockNotAvailableError:
            log.info("partition busy; dropping it later", extra={"partition": name})
            break
        dropped.append(name)
    return dropped


async def maintain_queue_tables(conn: asyncpg.Connection, *, outbox_retention_s: int, responses_ttl_hours: int) -> None:
    """Create the partitions the next hour needs; drop the outbox's once every shard's cursor is
    past them (and they are older than the retention), the kept responses' after their TTL."""
    now = datetime.now(UTC)
    for table in TABLES:
        created = await ensure_partitions(conn, table, now=now)
        if created:
            log.info("partitions created", extra={"partitions": created})
    dropped = await drop_partitions(
        conn, OUTBOX, older_than=now - timedelta(seconds=outbox_retention_s), still_needed=outbox.partition_still_needed
    )
    dropped += await drop_partitions(conn, IDEMPOTENCY_RESPONSES, older_than=now - timedelta(hours=responses_ttl_hours))
    if dropped:
        log.info("partitions dropped", extra={"partitions": dropped})
    await outbox.prune_default_partition(conn, older_than_s=outbox_retention_s)
