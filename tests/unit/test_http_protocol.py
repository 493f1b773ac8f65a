"""The HTTP protocol that sends a response in one socket write: what it joins, when it writes,
and that a real server using it still answers, keeps connections alive and closes them."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import uvicorn

from marketplace_pay.entrypoints.http_protocol import (
    COALESCE_MAX_BYTES,
    CoalescingHttpToolsProtocol,
    _CoalescingTransport,
)
from tests.services import free_port


class RecordingTransport:
    def __init__(self, *, refuse: bool = False) -> None:
        self.writes: list[bytes] = []
        self.closed = False
        self.aborted = False
        self.refuse = refuse

    def write(self, data: bytes) -> None:
        if self.refuse:
            raise RuntimeError("the socket is gone")
        self.writes.append(data)

    def write_eof(self) -> None:
        self.writes.append(b"<eof>")

    def get_write_buffer_size(self) -> int:
        return 0

    def abort(self) -> None:
        self.aborted = self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


async def test_writes_in_one_callback_reach_the_socket_once_at_the_next_turn() -> None:
    real = RecordingTransport()
    transport = _CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"HTTP/1.1 202 Accepted\r\n\r\n")
    transport.write(b"{}")
    assert real.writes == []  # nothing yet: the callback is still running
    await asyncio.sleep(0)
    assert real.writes == [b"HTTP/1.1 202 Accepted\r\n\r\n{}"]
    transport.write(b"next")
    await asyncio.sleep(0)
    assert real.writes[1:] == [b"next"]
    assert transport.get_extra_info("peername") == "info:peername"  # the rest is the real transport's


async def test_closing_writes_what_is_pending_first_and_nothing_is_written_after() -> None:
    real = RecordingTransport()
    transport = _CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"last answer")
    transport.close()
    assert (real.writes, real.closed) == ([b"last answer"], True)
    transport.write(b"too late")
    await asyncio.sleep(0)
    assert real.writes == [b"last answer"]


async def test_a_large_write_and_the_end_of_stream_go_out_at_once_in_order() -> None:
    real = RecordingTransport()
    transport = _CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    big = b"x" * COALESCE_MAX_BYTES
    transport.write(big)  # nothing pending: straight through, not copied
    assert real.writes == [big]
    transport.write(b"head")
    assert transport.get_write_buffer_size() == 4
    transport.write(big)  # pending and large: both at once, in order
    assert real.writes[1:] == [b"head" + big]
    transport.write(b"tail")
    transport.write_eof()
    assert real.writes[2:] == [b"tail", b"<eof>"]


async def test_a_write_the_socket_refuses_closes_the_connection() -> None:
    real = RecordingTransport(refuse=True)
    transport = _CoalescingTransport(real, asyncio.get_running_loop())  # type: ignore[arg-type]
    transport.write(b"answer")
    await asyncio.sleep(0)  # the deferred write fails: the client must not wait for nothing
    assert real.aborted


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = scope["path"].encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


async def test_a_server_with_it_answers_keeps_alive_and_closes() -> None:
    port = free_port()
    config = uvicorn.Config(_app, host="127.0.0.1", port=port, http=CoalescingHttpToolsProtocol, log_config=None)
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    try:
        for _ in range(500):  # up to 5 s
            if server.started:
                break
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for path in ("/one", "/two"):  # the same connection twice
            writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"content-length: 4" in head
            assert await reader.readexactly(4) == path.encode()
        writer.write(b"GET /bye HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), timeout=5)  # to the end: the server closed it
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"\r\n\r\n/bye")
        writer.close()
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await serving
