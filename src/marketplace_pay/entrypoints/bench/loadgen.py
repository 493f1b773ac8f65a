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

It runs in a process of its own (bench/child.py) and reports to its parent through a pipe, so
its CPU time is its own and the parent's bookkeeping does not delay it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import resource
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from marketplace_pay.entrypoints.bench.wire import (
    ProtocolError,
    RequestTemplate,
    ResponseParser,
)

# a failure that is not an HTTP status: counted under these names next to the statuses
CONNECTION_ERROR = "connection_error"
TIMEOUT = "timeout"


_TICK_S = 0.001


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
    __slots__ = ("busy", "counter", "due", "gen", "parser", "start", "transport")

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
