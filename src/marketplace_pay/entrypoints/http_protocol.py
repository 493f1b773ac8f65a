"""uvicorn's httptools protocol, sending each response in one socket write.

uvicorn writes a response's status line and headers when the application starts the response,
and its body when the application sends it: two `send` system calls, and on loopback two trips
through the TCP stack, for a 202 of a few hundred bytes. Here the connection's small writes made
while one callback of the event loop runs (the application sends both parts without yielding in
between) are joined and written once, at the loop's next turn. Anything else written on the
connection (a large write, the end of stream, closing it) writes what is pending first, so the
bytes keep their order; a write the socket refuses closes the connection, as uvicorn's own write
would have, instead of leaving the client waiting for an answer that never comes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

# Writes are held back only while they add up to less than this: a large body goes out at once
# (and is not copied into a joined buffer), so flow control sees it as uvicorn would.
COALESCE_MAX_BYTES = 16 * 1024


class _CoalescingTransport:
    """A transport whose small writes within one loop callback reach the socket as one write."""

    __slots__ = ("_loop", "_pending", "_pending_bytes", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._pending_bytes = 0

    def write(self, data: bytes) -> None:
        if not self._pending:
            if len(data) >= COALESCE_MAX_BYTES:
                self._write(data)
                return
            self._loop.call_soon(self.flush)
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._pending_bytes >= COALESCE_MAX_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending = []
        self._pending_bytes = 0
        self._write(data)

    def _write(self, data: bytes) -> None:
        if self._transport.is_closing():
            return  # the peer is gone: uvicorn drops what is written after that too
        try:
            self._transport.write(data)
        except Exception:  # the socket refused it: the answer cannot arrive
            log.warning("could not write a response; closing the connection", exc_info=True)
            self._transport.abort()

    def writelines(self, chunks: Iterable[bytes]) -> None:
        for chunk in chunks:
            self.write(chunk)

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + self._pending_bytes

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:  # everything else is the real transport's
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
