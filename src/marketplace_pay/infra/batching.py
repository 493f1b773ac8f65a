"""Group commit: concurrent callers' writes go to the database together.

    batcher = Batcher(write_many, name="payments.add")
    result = await batcher.submit(item)     # returns once the batch holding `item` committed

While a batch is being written, new items wait and form the next batch, so under load each
statement (and each commit's flush to disk) carries many requests, and when idle an item is
written at once. `write_many(items)` returns one result per item, in order; it must be a single
atomic statement or transaction. If it fails with an error that is not about the connection,
the items are written one by one, so one bad item cannot fail its neighbours.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from marketplace_pay.infra.failures import is_transient

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    def __init__(
        self,
        write_many: Callable[[Sequence[T]], Awaitable[Sequence[R]]],
        *,
        name: str,
        batch_max: int = 256,
        concurrent: int = 2,
    ) -> None:
        self._write_many = write_many
        self.name = name
        self._batch_max = batch_max
        self._concurrent = concurrent
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._running = 0

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._running < self._concurrent:
            self._start()
        return await future

    def _start(self) -> None:
        batch, self._waiting = self._waiting[: self._batch_max], self._waiting[self._batch_max :]
        self._running += 1
        asyncio.get_running_loop().create_task(self._write(batch), name=f"batch:{self.name}")

    async def _write(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            await self._settle(batch)
        finally:
            self._running -= 1
            if self._waiting and self._running < self._concurrent:
                self._start()

    async def _settle(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            results = await self._write_many([item for item, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                if not future.done():
                    future.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - handed to the callers
            if len(batch) > 1 and not is_transient(exc):
                log.warning(
                    "batched write failed; writing its items one by one", extra={"batch": self.name, "error": repr(exc)}
                )
                for one in batch:
                    await self._settle([one])
                return
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
