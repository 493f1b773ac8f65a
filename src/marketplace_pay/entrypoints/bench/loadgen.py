"""A load generator cheap enough to share two cores with the service it measures.

Requests are pre-encoded bytes: a template split at a counter mark, joined with the zero-padded
counter (so Content-Length never changes and nothing is serialized per request). Connections are
raw asyncio protocols with HTTP/1.1 keep-alive; a response is parsed only as far as the status
line, Content-Length (or chunked framing), Connection: close and Location.

Two ways to load:

- open loop (`rate`): request n is due at t0 + n / rate whatever the server does; a request
  waits for a free connection if all are busy, and its latency runs from the moment it was due,
  so a stalled server cannot hide its stall by slowing the generator down (coordinated omission);
- closed loop (`rate` None): `concurrency` connections, each sends its next request as soon as
  the previous answer arrived; latency runs from the send.

It runs in a process of its own (`run_child`) and reports to its parent through a pipe, so its
CPU time is its own and the parent's bookkeeping does not delay it. `python -m
marketplace_pay.entrypoints.bench.loadgen URL` loads any URL with GETs and prints what it could
push and the CPU it used.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import resource
import sys
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

COUNTER_MARK = b"@N@"
COUNTER_WIDTH = 12

# a failure that is not an HTTP status: counted under these names next to the statuses
CONNECTION_ERROR = "connection_error"
TIMEOUT = "timeout"


_TICK_S = 0.001


class ProtocolError(ValueError):
    """The server's bytes are not an HTTP/1.1 response this parser understands."""


@dataclass(frozen=True, slots=True)
class RequestTemplate:
    """One request as bytes, split at every counter mark: `render(n)` joins the parts with n."""

    parts: tuple[bytes, ...]
    width: int = COUNTER_WIDTH

    @classmethod
    def build(
        cls,
        method: str,
        path: str,
        host: str,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        *,
        width: int = COUNTER_WIDTH,
    ) -> RequestTemplate:
        # every mark becomes exactly `width` digits, so the length is known before rendering
        body_len = len(body) + body.count(COUNTER_MARK) * (width - len(COUNTER_MARK))
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {body_len}")
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        return cls(tuple(raw.split(COUNTER_MARK)), width)

    def render(self, n: int) -> bytes:
        if len(self.parts) == 1:
            return self.parts[0]
        digits = b"%0*d" % (self.width, n)
        if len(digits) != self.width:
            raise OverflowError(f"counter {n} does not fit in {self.width} digits")
        return digits.join(self.parts)


# (status, Location header value or None, body, the server closes the connection)
Response = tuple[int, bytes | None, bytes, bool]


class ResponseParser:
    """Incremental: feed it what the socket gave, get back the responses completed so far."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Response]:
        buf = self._buf
        buf += data
        out: list[Response] = []
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return out
            head = bytes(buf[:end])
            if not head.startswith(b"HTTP/1.") or len(head) < 12:
                raise ProtocolError(f"not an HTTP/1.x status line: {head[:40]!r}")
            try:
                status = int(head[9:12])
            except ValueError:
                raise ProtocolError(f"bad status line: {head[:40]!r}") from None
            lower = head.lower()
            location = _header(head, lower, b"\r\nlocation:")
            close = _header(head, lower, b"\r\nconnection:") == b"close"
            start = end + 4
            length = _header(head, lower, b"\r\ncontent-length:")
            if length is not None:
                try:
                    stop = start + int(length)
                except ValueError:
                    raise ProtocolError(f"bad Content-Length {length!r}") from None
                if len(buf) < stop:
                    return out
                body = bytes(buf[start:stop])
            elif (_header(head, lower, b"\r\ntransfer-encoding:") or b"").lower().endswith(b"chunked"):
                chunked = _dechunk(buf, start)
                if chunked is None:
                    return out
                body, stop = chunked
            elif status in (204, 304) or 100 <= status < 200:
                body, stop = b"", start
            else:
                raise ProtocolError("a response without Content-Length or chunked framing")
            del buf[:stop]
            out.append((status, location, body, close))


def _header(head: bytes, lower: bytes, name: bytes) -> bytes | None:
    """The value of the first header `name` (lower case, with its leading CRLF), case kept."""
    i = lower.find(name)
    if i < 0:
        return None
    i += len(name)
    j = head.find(b"\r\n", i)
    return head[i : j if j >= 0 else len(head)].strip()


def _dechunk(buf: bytearray, pos: int) -> tuple[bytes, int] | None:
    """(body, end offset) of a complete chunked body starting at pos, None while incomplete."""
    parts: list[bytes] = []
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        try:
            size = int(bytes(buf[pos:eol]).split(b";", 1)[0], 16)
        except ValueError:
            raise ProtocolError("bad chunk size") from None
        pos = eol + 2
        if size == 0:
            # no trailers: an empty line; trailers: up to the first empty line
            if buf[pos : pos + 2] == b"\r\n":
                return b"".join(parts), pos + 2
            end = buf.find(b"\r\n\r\n", pos)
            return None if end < 0 else (b"".join(parts), end + 4)
        if len(buf) < pos + size + 2:
            return None
        parts.append(bytes(buf[pos : pos + size]))
        pos += size + 2


@dataclass(frozen=True, slots=True)
class LoadPlan:
    host: str
    port: int
    template: RequestTemplate
    warmup_s: float
    duration_s: float
    rate: float | None  # requests/s (open loop); None: closed loop with `concurrency`
    concurrency: int = 64
    connections_max: int = 512  # open loop: connections it may open when all are busy
    ok_status: int = 202
    first_counter: int = 0
    response_timeout_s: float = 30.0  # after the load stops, answers still due get this long
    report_every_s: float = 0.5
    bodies_kept: int = 5


class _Connection(asyncio.Protocol):
    __slots__ = ("gen", "transport", "parser", "counter", "due", "start", "busy")

    def __init__(self, gen: Generator) -> None:
        self.gen = gen
        self.transport: asyncio.Transport | None = None
        self.parser = ResponseParser()
        self.counter = -1
        self.due = 0.0  # when the request was due (open loop) or sent (closed loop)
        self.start = 0.0  # what its latency runs from
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            responses = self.parser.feed(data)
        except ProtocolError as exc:
            self.gen.protocol_errors.append(str(exc))
            assert self.transport is not None
            self.transport.abort()
            return
        for status, location, body, close in responses:
            self.busy = False
            if close:
                self.gen.on_response(self, status, location, body, reusable=False)
                assert self.transport is not None
                self.transport.close()
            else:
                self.gen.on_response(self, status, location, body, reusable=True)

    def connection_lost(self, exc: Exception | None) -> None:
        self.gen.on_lost(self)

    def send(self, counter: int, due: float, data: bytes) -> None:
        self.counter = counter
        self.due = due
        self.start = min(due, time.monotonic())
        self.busy = True
        assert self.transport is not None
        self.transport.write(data)


class Generator:
    """Runs one LoadPlan in the current event loop; `report(message)` receives progress dicts."""

    def __init__(self, plan: LoadPlan, report: Callable[[dict[str, Any]], None]) -> None:
        self.plan = plan
        self.report = report
        self.render = plan.template.render
        self.t0 = 0.0
        self.window_start = 0.0
        self.window_end = 0.0
        self.wall0 = 0.0
        self.stopping = False
        self.next_counter = plan.first_counter
        self.idle: list[_Connection] = []
        self.connections: set[_Connection] = set()
        self.connecting = 0
        self.queued: collections.deque[tuple[int, float]] = collections.deque()  # open loop: (counter, due)
        # figures
        self.sent = 0
        self.answered = 0
        self.not_ok = 0  # answers other than ok_status, whole run
        self.ok_in_window = 0  # ok answers received inside the measured window
        self.window_requests = 0  # requests due (open) or sent (closed) inside the window
        self.window_outcomes: collections.Counter[str] = collections.Counter()  # status or failure -> n
        self.latency_s = array("d")  # ok answers to requests due/sent inside the window
        self.bodies: list[tuple[int, str]] = []
        self.protocol_errors: list[str] = []
        self.connect_errors: list[str] = []
        self.connect_failures = 0
        self._locations: list[bytes] = []
        self._accepted_at = array("d")
        self._done = asyncio.Event()

    # --- time -------------------------------------------------------------------------------
    def wall(self, t: float) -> float:
        return self.wall0 + (t - self.t0)

    def in_window(self, t: float) -> bool:
        return self.window_start <= t < self.window_end

    # --- connections ------------------------------------------------------------------------
    async def _connect(self) -> _Connection | None:
        loop = asyncio.get_running_loop()
        self.connecting += 1
        try:
            _, conn = await loop.create_connection(lambda: _Connection(self), self.plan.host, self.plan.port)
        except OSError as exc:
            if len(self.connect_errors) < 5:
                self.connect_errors.append(f"{type(exc).__name__}: {exc}")
            return None
        finally:
            self.connecting -= 1
        self.connections.add(conn)
        return conn

    def _spawn_connection(self) -> None:
        async def open_and_serve() -> None:
            conn = await self._connect()
            if conn is None:
                self.connect_failures += 1
                await asyncio.sleep(0.1)  # refused: try again, but do not spin
                if self._wants_connection():
                    self._spawn_connection()
                return
            self._next(conn)

        asyncio.get_running_loop().create_task(open_and_serve())

    def _wants_connection(self) -> bool:
        if self.plan.rate is None:
            return not self.stopping
        return bool(self.queued) and not self.idle

    # --- requests ---------------------------------------------------------------------------
    def _send(self, conn: _Connection, counter: int, due: float) -> None:
        self.sent += 1
        if self.in_window(due):
            self.window_requests += 1
        conn.send(counter, due, self.render(counter))

    def _next(self, conn: _Connection) -> None:
        """A connection is free: give it the next request, or park it."""
        if self.plan.rate is not None:
            if self.queued:
                counter, due = self.queued.popleft()
                self._send(conn, counter, due)
            else:
                self.idle.append(conn)
                self._maybe_done()
        elif not self.stopping:
            counter = self.next_counter
            self.next_counter += 1
            self._send(conn, counter, time.monotonic())
        else:
            self.idle.append(conn)
            self._maybe_done()

    def dispatch(self, counter: int, due: float) -> None:
        """Open loop: request `counter` is due now (or was, at `due`)."""
        if self.idle:
            self._send(self.idle.pop(), counter, due)
            return
        self.queued.append((counter, due))
        if len(self.connections) + self.connecting < self.plan.connections_max and self.connecting < len(self.queued):
            self._spawn_connection()

    def on_response(
        self, conn: _Connection, status: int, location: bytes | None, body: bytes, *, reusable: bool
    ) -> None:
        now = time.monotonic()
        self.answered += 1
        due = conn.due
        measured = self.in_window(due)
        if status == self.plan.ok_status:
            if measured:
                self.latency_s.append(now - conn.start)
            if self.window_start <= now < self.window_end:
                self.ok_in_window += 1
            if location is not None:
                self._locations.append(location)
                self._accepted_at.append(self.wall(now))
        else:
            self.not_ok += 1
            if len(self.bodies) < self.plan.bodies_kept:
                self.bodies.append((status, body[:600].decode("utf-8", "replace")))
        if measured:
            self.window_outcomes[str(status)] += 1
        if reusable:
            self._next(conn)
        else:
            self.connections.discard(conn)
            if self._wants_connection():
                self._spawn_connection()
            self._maybe_done()

    def on_lost(self, conn: _Connection) -> None:
        if conn not in self.connections:
            return
        self.connections.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        if conn.busy:
            conn.busy = False
            if self.in_window(conn.due):
                self.window_outcomes[CONNECTION_ERROR] += 1
        if self._wants_connection():
            self._spawn_connection()
        self._maybe_done()

    def _maybe_done(self) -> None:
        if self.stopping and not self.queued and not any(c.busy for c in self.connections):
            self._done.set()

    # --- reporting --------------------------------------------------------------------------
    def progress(self) -> dict[str, Any]:
        message = {
            "type": "progress",
            "sent": self.sent,
            "answered": self.answered,
            "not_ok": self.not_ok,
            "in_flight": sum(1 for c in self.connections if c.busy),
            "queued": len(self.queued),
            "connections": len(self.connections),
            "locations": self._locations,
            "accepted_at": self._accepted_at.tobytes(),
        }
        self._locations = []
        self._accepted_at = array("d")
        return message

    async def _reporter(self) -> None:
        while True:
            await asyncio.sleep(self.plan.report_every_s)
            self.report(self.progress())

    # --- the run ----------------------------------------------------------------------------
    async def _open_loop(self) -> None:
        rate = self.plan.rate
        assert rate is not None
        n = 0
        last = self.plan.warmup_s + self.plan.duration_s
        total = int(last * rate)
        while n < total:
            # Timers fire with millisecond resolution: sleeping less would spin, so what is due
            # within the next millisecond goes now. Sent early, a request's latency runs from its
            # send; sent late (no free connection), from when it was due.
            horizon = time.monotonic() + _TICK_S
            due_by_horizon = min(total, int((horizon - self.t0) * rate) + 1)
            while n < due_by_horizon:
                self.dispatch(self.next_counter, self.t0 + n / rate)
                self.next_counter += 1
                n += 1
            if n < total:
                await asyncio.sleep(max(_TICK_S, self.t0 + n / rate - time.monotonic()))

    async def run(self) -> dict[str, Any]:
        plan = self.plan
        # connect before the clock starts: connection set-up is not what is measured
        first = plan.concurrency if plan.rate is None else min(plan.connections_max, max(8, int(plan.rate * 0.02)))
        opened = await asyncio.gather(*(self._connect() for _ in range(first)))
        if not any(opened):
            raise ConnectionError(
                f"cannot connect to {plan.host}:{plan.port}: {'; '.join(self.connect_errors) or 'refused'}"
            )
        ready = [c for c in opened if c is not None]
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        self.t0 = time.monotonic()
        self.wall0 = time.time()
        self.window_start = self.t0 + plan.warmup_s
        self.window_end = self.window_start + plan.duration_s
        self.report(
            {
                "type": "started",
                "wall0": self.wall0,
                "window_start": self.wall(self.window_start),
                "window_end": self.wall(self.window_end),
            }
        )
        reporter = asyncio.get_running_loop().create_task(self._reporter())
        try:
            if plan.rate is None:
                for conn in ready:
                    self._next(conn)
                await asyncio.sleep(max(0.0, self.window_end - time.monotonic()))
            else:
                self.idle.extend(ready)
                await self._open_loop()
                await asyncio.sleep(max(0.0, self.window_end - time.monotonic()))
            self.stopping = True
            stopped = time.monotonic()
            self._maybe_done()
            with contextlib.suppress(TimeoutError):  # what is left counts as timed out below
                await asyncio.wait_for(self._done.wait(), timeout=plan.response_timeout_s)
            drained_s = time.monotonic() - stopped
        finally:
            reporter.cancel()
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        active_s = time.monotonic() - self.t0
        # whatever is still unanswered, or never got a connection, timed out
        unanswered = [c.due for c in self.connections if c.busy] + [due for _, due in self.queued]
        self.window_outcomes[TIMEOUT] += sum(1 for due in unanswered if self.in_window(due))
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        last = self.progress()
        cpu_s = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
        return last | {
            "type": "done",
            "window_requests": self.window_requests,
            "window_outcomes": {k: v for k, v in self.window_outcomes.items() if v},
            "ok_in_window": self.ok_in_window,
            "latency_s": self.latency_s.tobytes(),
            "bodies": self.bodies,
            "protocol_errors": self.protocol_errors[:5],
            "connect_errors": self.connect_errors[:5],
            "connect_failures": self.connect_failures,
            "cpu_s": cpu_s,
            "active_s": active_s,
            "drained_s": drained_s,
            "connections_max_used": len(self.connections),
        }


def run_child(plan: LoadPlan, pipe: Any) -> None:
    """Process entry point: run the plan under uvloop, send progress and the final dict."""
    import signal

    import uvloop

    # Ctrl-C reaches the whole process group: the parent decides when the load stops
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def report(message: dict[str, Any]) -> None:
        try:
            pipe.send(message)
        except OSError:
            os._exit(3)  # the parent is gone: there is nobody to load for

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            result = runner.run(Generator(plan, report).run())
        pipe.send(result)
    except Exception as exc:  # noqa: BLE001 - the parent reports it; a traceback helps nobody here
        pipe.send({"type": "error", "error": f"{type(exc).__name__}: {exc}"})
    finally:
        pipe.close()


def percentile_ms(latency_s: array, p: float) -> float | None:
    values = sorted(latency_s)
    if not values:
        return None
    rank = max(1, -(-len(values) * p // 100))
    return round(values[int(rank) - 1] * 1000, 3)


def main(argv: list[str] | None = None) -> int:
    """Load a URL with GETs and say what the generator pushed and what CPU it used."""
    import uvloop

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("url", help="e.g. http://127.0.0.1:8000/health/live")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--rate", type=float, help="open loop, requests/s")
    p.add_argument("--status", type=int, default=200, help="the answer that counts as success (default 200)")
    args = p.parse_args(argv)
    url = urlsplit(args.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    plan = LoadPlan(
        host=host,
        port=port,
        template=RequestTemplate.build("GET", url.path or "/", f"{host}:{port}"),
        warmup_s=args.warmup,
        duration_s=args.duration,
        rate=args.rate,
        concurrency=args.concurrency,
        ok_status=args.status,
    )
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(Generator(plan, lambda _: None).run())
    latency = array("d")
    latency.frombytes(result["latency_s"])
    ok = result["window_outcomes"].get(str(args.status), 0)
    print(
        f"{ok / args.duration:.0f} requests/s answered {args.status} in the measured {args.duration:g} s "
        f"(outcomes {result['window_outcomes']}); latency p50 {percentile_ms(latency, 50)} ms "
        f"p99 {percentile_ms(latency, 99)} ms; generator CPU {result['cpu_s']:.2f} s over "
        f"{result['active_s']:.1f} s = {100 * result['cpu_s'] / result['active_s']:.0f} % of one core, "
        f"{1e6 * result['cpu_s'] / max(1, result['sent']):.1f} µs per request"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
