"""The Postgres unit of work: one transaction, the events it queues (outbox) and the events it
consumed (inbox), committed together.

    async with uow_factory() as uow:
        fresh = await uow.claim_inbox("consumer", [e.event_id for e in batch])
        ...                                  # state changes on uow.connection
        uow.publish(envelope(...))           # written to the outbox at commit
        await uow.commit()                   # one COMMIT; then the relay is woken

Leaving the block without `commit()` rolls everything back, inbox rows included, so a
redelivered event is processed again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, Self

import asyncpg

from marketplace_pay.infra.codec import encode
from marketplace_pay.shared.envelope import Envelope

_INSERT_OUTBOX = """
INSERT INTO outbox (event_id, event_type, topic, msg_key, payload, traceparent)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::text[])
ON CONFLICT (event_id) DO NOTHING
"""

_CLAIM_INBOX = """
INSERT INTO inbox (consumer, event_id)
SELECT $1, unnest($2::text[])
ON CONFLICT DO NOTHING
RETURNING event_id
"""


async def append_to_outbox(conn: asyncpg.Connection, envelopes: Sequence[Envelope[Any]]) -> None:
    """Insert envelopes into the outbox, in order. An event id already there is skipped, so
    re-emitting a deterministic event is harmless."""
    if not envelopes:
        return
    await conn.execute(
        _INSERT_OUTBOX,
        [e.event_id for e in envelopes],
        [e.event_type for e in envelopes],
        [e.topic for e in envelopes],
        [e.key for e in envelopes],
        [encode(e) for e in envelopes],
        [e.traceparent for e in envelopes],
    )


async def claim_inbox(conn: asyncpg.Connection, consumer: str, event_ids: Iterable[str]) -> set[str]:
    """Record that `consumer` processes these events in the current transaction; returns the ids
    not processed before. A concurrent transaction claiming the same id waits for this one and
    then gets nothing, so an event is applied once even under concurrent duplicates."""
    ids = list(dict.fromkeys(event_ids))
    if not ids:
        return set()
    rows = await conn.fetch(_CLAIM_INBOX, consumer, ids)
    return {r["event_id"] for r in rows}


class PgUnitOfWork:
    def __init__(self, pool: asyncpg.Pool, *, on_commit: Callable[[], None] | None = None) -> None:
        self._pool = pool
        self._on_commit = on_commit
        self._connection: asyncpg.Connection | None = None
        self._tx: Any = None
        self._pending: list[Envelope[Any]] = []
        self._committed = False

    @property
    def connection(self) -> asyncpg.Connection:
        assert self._connection is not None, "unit of work not entered"
        return self._connection

    async def __aenter__(self) -> Self:
        self._connection = await self._pool.acquire()
        try:
            self._tx = self._connection.transaction()
            await self._tx.start()
        except BaseException:
            await self._pool.release(self._connection)
            self._connection = None
            raise
        self._bind(self._connection)
        return self

    def _bind(self, connection: asyncpg.Connection) -> None:
        """Subclasses create their repositories on the connection here."""

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        conn, self._connection = self._connection, None
        if conn is None:
            return
        try:
            if not self._committed and not conn.is_closed():
                try:
                    await self._tx.rollback()
                except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                    pass  # the pool resets (or discards) the connection on release
        finally:
            await self._pool.release(conn)

    def publish(self, *envelopes: Envelope[Any]) -> None:
        self._pending.extend(envelopes)

    async def claim_inbox(self, consumer: str, event_ids: Iterable[str]) -> set[str]:
        return await claim_inbox(self.connection, consumer, event_ids)

    async def seen(self, consumer: str, event_ids: Iterable[str]) -> set[str]:
        rows = await self.connection.fetch(
            "SELECT event_id FROM inbox WHERE consumer = $1 AND event_id = ANY($2::text[])", consumer, list(event_ids)
        )
        return {r["event_id"] for r in rows}

    async def commit(self) -> None:
        pending, self._pending = self._pending, []
        await append_to_outbox(self.connection, pending)
        await self._tx.commit()
        self._committed = True
        if pending and self._on_commit is not None:
            self._on_commit()
