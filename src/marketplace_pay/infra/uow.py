"""The Postgres unit of work: one transaction and the events it queues (outbox), committed together.

    async with uow_factory() as uow:
        ...                                  # state changes on uow.connection, guarded
        uow.publish(envelope(...))           # written to the outbox at commit
        await uow.commit()                   # one COMMIT; then the relay is woken

Leaving the block without `commit()` rolls everything back. Handlers are idempotent by the
guards of their state changes (an order only accepts the attempt it waits for, a journal id is
recorded once), so an event delivered again changes nothing.

Hot handlers do their whole effect in one statement instead (state change and outbox rows as
data-modifying CTEs, see infra/outbox.py): one round trip, atomic without BEGIN/COMMIT.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, Self

import asyncpg

from marketplace_pay.infra.outbox import append_to_outbox, shards
from marketplace_pay.shared.envelope import Envelope

OnCommit = Callable[[Iterable[int]], None]
"""Called after a commit with the outbox shards it wrote to (the relay wakes up)."""


class PgUnitOfWork:
    def __init__(self, pool: asyncpg.Pool, *, on_commit: OnCommit | None = None) -> None:
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
                # if it fails, the pool resets (or discards) the connection on release
                with contextlib.suppress(asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                    await self._tx.rollback()
        finally:
            await self._pool.release(conn)

    def publish(self, *envelopes: Envelope[Any]) -> None:
        self._pending.extend(envelopes)

    async def commit(self) -> None:
        pending, self._pending = self._pending, []
        await append_to_outbox(self.connection, pending)
        await self._tx.commit()
        self._committed = True
        if pending and self._on_commit is not None:
            self._on_commit(shards(pending))
