"""One bench run: find the database and the service, load it from a child process, watch the
pipeline settle, drain, reconcile, and report.

The service is a black box: it is reached over HTTP only, and the database is read (payments,
their orders, the ledger's journals, PostgreSQL's statistics), never written.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import resource
import secrets
import signal
import sys
import time
from collections.abc import Coroutine
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import uvloop

from marketplace_pay.entrypoints.bench import figures as fig
from marketplace_pay.entrypoints.bench.child import run_child
from marketplace_pay.entrypoints.bench.loadgen import LoadPlan
from marketplace_pay.entrypoints.bench.prepare import Setup
from marketplace_pay.entrypoints.bench.probes import (
    BenchError,
    ProcessTreeSampler,
    ServeProcess,
    db_clock_offset_s,
    db_counters,
    is_local,
    listening_pids,
    pgbench_baseline,
    reconcile,
    say,
    wal_bytes_between,
)
from marketplace_pay.entrypoints.bench.report import DEFAULT_CONCURRENCY, LoadState, Reporting, doubles
from marketplace_pay.entrypoints.bench.settle import SettleTracker
from marketplace_pay.entrypoints.bench.wire import RequestTemplate

POLL_DURING_LOAD_S = 1.0
POLL_DURING_DRAIN_S = 0.5


def main(args: argparse.Namespace) -> int:
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(_cancelled_by_sigterm(Bench(args).run()))
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("bench: interrupted", file=sys.stderr, flush=True)
        return 130


async def _cancelled_by_sigterm(run: Coroutine[Any, Any, int]) -> int:
    """SIGTERM stops the bench as Ctrl-C does: the run is cancelled, so the load generator and
    a service the bench started are stopped rather than left behind."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await run
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


class Bench(Setup, Reporting):
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.env = dict(os.environ)
        self.serve: ServeProcess | None = None
        self.procs: ProcessTreeSampler | None = None
        self.workers: int | None = None
        self.scenario: str | None = None
        self.conn: asyncpg.Connection | None = None
        self.run_id = secrets.token_hex(4)
        self.commission_bps: dict[str, int] = {}
        self.bench_cpu_pct: float | None = None
        self.service_cpu_pct: float | None = None

    # --- the run ----------------------------------------------------------------------------
    async def run(self) -> int:
        self._check_args()
        try:
            return await self._run()
        finally:
            if self.serve is not None and self.serve.proc is not None and self.serve.exit_code is None:
                status = self.serve.stop()  # the run failed: the service's log may say why
                say(f"stopped the service (exit status {status}); its log: {self.serve.log_path}")
            if self.conn is not None:
                await self.conn.close()

    async def _run(self) -> int:
        from marketplace_pay.infra.auth import issue_token, resolve_jwt_secret

        a = self.args
        settings, dsn = await self._database()
        assert self.conn is not None
        secret = resolve_jwt_secret(settings.jwt.secret, settings.process.data_dir)
        ttl_s = int(a.warmup + a.duration + a.drain_timeout + 3600)
        token = issue_token(
            secret,
            roles=["payment:write"],
            subject="marketplace-pay-bench",
            ttl_s=ttl_s,
            issuer=settings.jwt.issuer,
            audience=settings.jwt.audience,
        )
        admin = issue_token(
            secret,
            roles=["ADMIN"],
            subject="marketplace-pay-bench",
            ttl_s=600,
            issuer=settings.jwt.issuer,
            audience=settings.jwt.audience,
        )
        url = await self._service()
        await self._check_tables(dsn)
        sellers = await self._sellers(url, admin)
        lines = fig.order_amounts(sellers)
        await self._probe(url, token, lines)

        if self.serve is not None and self.serve.proc is not None:
            self.procs = ProcessTreeSampler([self.serve.proc.pid])
        else:
            host, port = urlsplit(url).hostname or "", urlsplit(url).port or 80
            roots = listening_pids(port) if is_local(host) else []
            self.procs = ProcessTreeSampler(roots) if roots else None
            if not roots:
                say("peak_rss_mb: the service's processes are not visible from here; it stays null")

        pgbench_tps = None
        if a.baseline:
            try:
                pgbench_tps = await pgbench_baseline(dsn)
                say(f"baseline: pgbench {pgbench_tps:.0f} tps")
            except BenchError as exc:
                say(f"baseline: {exc}")

        offset_s = await db_clock_offset_s(self.conn)
        before = await db_counters(self.conn)
        tracker = SettleTracker(expected_orders=len(lines), commission_bps=self.commission_bps)
        split = urlsplit(url)
        plan = LoadPlan(
            host=split.hostname or "127.0.0.1",
            port=split.port or 80,
            template=RequestTemplate.build(
                "POST",
                "/api/v1/payments",
                split.netloc,
                {"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                fig.payment_body(lines, self.run_id),
            ),
            warmup_s=a.warmup,
            duration_s=a.duration,
            rate=a.rate,
            concurrency=a.concurrency or DEFAULT_CONCURRENCY,
            connections_max=a.connections,
        )
        mode = f"open loop at {a.rate:g}/s" if a.rate else f"closed loop, {plan.concurrency} connections"
        say(f"load: {mode}, {len(lines)} orders per payment, warmup {a.warmup:g} s, measured {a.duration:g} s")
        cpu0, service_cpu0, wall0 = _cpu_s(), self.procs.cpu_s() if self.procs else None, time.monotonic()
        state = await self._load(plan, tracker)
        wall_s = time.monotonic() - wall0
        self.bench_cpu_pct = round(100 * (_cpu_s() - cpu0) / wall_s, 1)
        if self.procs is not None and service_cpu0 is not None:
            self.service_cpu_pct = round(100 * (self.procs.cpu_s() - service_cpu0) / wall_s, 1)
        result = state.result
        assert result is not None
        load_end = time.monotonic()

        drain_started = time.monotonic()
        await self._drain(tracker)
        drain_s = time.monotonic() - drain_started

        say("reconcile, and waiting for PostgreSQL's row counters to catch up ...")
        recon = asyncio.get_running_loop().create_task(reconcile(self.env))
        # PostgreSQL backends publish their row counters at most once a second while busy and
        # about ten seconds after they go idle: read them that long after the load, or the last
        # second's writes are missing from rows_written_per_payment
        await self._sampling_sleep(max(0.0, load_end + a.stats_wait - time.monotonic()))
        after = await db_counters(self.conn)
        wal_bytes = await wal_bytes_between(self.conn, before.wal_lsn, after.wal_lsn)
        reconcile_clean, recon_out = await recon
        if not reconcile_clean:
            say(f"reconcile is NOT clean:\n{recon_out[-2000:]}")
        self._sample_processes()

        serve_exit = None
        if self.serve is not None:
            say("stopping the service (SIGTERM) ...")
            serve_exit = await asyncio.to_thread(self.serve.stop)
            if serve_exit != 0:
                say(
                    f"the service did not exit 0 (status {serve_exit}); its log, {self.serve.log_path}, ends with:\n"
                    f"{self.serve.log_tail()}"
                )
            else:
                self.serve.log_path.unlink(missing_ok=True)

        figures = self._figures(
            state,
            tracker,
            offset_s=offset_s,
            drain_s=drain_s,
            pgbench_tps=pgbench_tps,
            rows_written=after.rows_written - before.rows_written,
            wal_bytes=wal_bytes,
            reconcile_clean=reconcile_clean,
            serve_exit=serve_exit,
        )
        for status, body in result["bodies"]:
            say(f"answer {status}: {body}")
        for problem in result["protocol_errors"] + result["connect_errors"] + tracker.bad_locations:
            say(f"problem: {problem}")
        print(fig.table(figures), flush=True)
        if a.json:
            print(json.dumps(figures, separators=(",", ":")), flush=True)
        ok = reconcile_clean and figures["accepted"] > 0 and (self.serve is None or serve_exit == 0)
        return 0 if ok else 1

    def _check_service_alive(self) -> None:
        if self.serve is not None and self.serve.proc is not None and self.serve.proc.poll() is not None:
            self.serve.exit_code = self.serve.proc.returncode
            raise BenchError(
                f"the service exited with status {self.serve.exit_code} during the run; its log, "
                f"{self.serve.log_path}, ends with:\n{self.serve.log_tail()}"
            )

    def _sample_processes(self) -> None:
        if self.procs is not None:
            self.procs.sample()

    async def _sampling_sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self._sample_processes()
            await asyncio.sleep(min(0.5, left))

    async def _load(self, plan: LoadPlan, tracker: SettleTracker) -> LoadState:
        """Run the generator in a process of its own; meanwhile poll settlements, sample memory
        and print progress."""
        assert self.conn is not None
        state = LoadState()
        ctx = multiprocessing.get_context("spawn")
        receiver, sender = ctx.Pipe(duplex=False)
        child = ctx.Process(target=run_child, args=(plan, sender), name="marketplace-pay-bench-load", daemon=True)
        child.start()
        sender.close()

        async def read() -> None:
            # a thread does the blocking reads: the pipe stays in blocking mode (an event loop
            # reader would make it non-blocking, and a large message would then arrive torn)
            try:
                while True:
                    message = await asyncio.to_thread(receiver.recv)
                    kind = message["type"]
                    if kind in ("progress", "done"):
                        tracker.add(message["locations"], doubles(message["accepted_at"]))
                        state.sent, state.answered, state.not_ok = (message[k] for k in ("sent", "answered", "not_ok"))
                        state.in_flight, state.queued = message["in_flight"], message["queued"]
                    if kind == "started":
                        state.started = message
                    elif kind == "done":
                        state.result = message
                        return
                    elif kind == "error":
                        state.error = message["error"]
                        return
            except (EOFError, OSError) as exc:
                state.error = f"the load generator stopped without a result ({type(exc).__name__}: {exc})"
            finally:
                state.finished.set()

        reader = asyncio.get_running_loop().create_task(read())
        t0 = time.monotonic()
        next_poll = next_print = t0
        try:
            while not state.finished.is_set():
                now = time.monotonic()
                self._check_service_alive()
                self._sample_processes()
                if now >= next_poll:
                    await tracker.poll(self.conn)
                    next_poll = time.monotonic() + POLL_DURING_LOAD_S
                if now >= next_print:
                    self._progress("load", now - t0, state, tracker)
                    next_print = max(next_print + 1.0, now + 0.5)  # a slow poll does not bunch lines
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(state.finished.wait(), timeout=0.5)
        finally:
            if not state.finished.is_set():  # interrupted: stop the generator first
                child.terminate()
            await asyncio.to_thread(child.join, 10)
            if child.is_alive():
                child.kill()
                child.join(5)
            await asyncio.gather(reader, return_exceptions=True)
            receiver.close()
        if state.error:
            raise BenchError(f"load generator: {state.error}")
        return state

    def _progress(self, phase: str, elapsed: float, state: LoadState, tracker: SettleTracker) -> None:
        rss = f" | rss {self.procs.peak_bytes / 2**20:.0f} MB" if self.procs is not None else ""
        say(
            f"[{elapsed:5.0f}s {phase}] sent {state.sent} answered {state.answered} (not 202: {state.not_ok})"
            f" in flight {state.in_flight}"
            f" queued {state.queued} | accepted {len(tracker.accepted_at)} settled {len(tracker.settled_at)}"
            f" open {len(tracker.open)}{rss}"
        )

    async def _drain(self, tracker: SettleTracker) -> None:
        assert self.conn is not None
        deadline = time.monotonic() + self.args.drain_timeout
        started = next_print = time.monotonic()
        while tracker.open and time.monotonic() < deadline:
            self._check_service_alive()
            await tracker.poll(self.conn)
            if time.monotonic() >= next_print and tracker.open:
                say(f"[{time.monotonic() - started:5.1f}s drain] {len(tracker.open)} payments not settled yet")
                next_print += 2.0
            if tracker.open:
                await self._sampling_sleep(POLL_DURING_DRAIN_S)
        if tracker.open:
            say(f"drain: {len(tracker.open)} payments still not settled after {self.args.drain_timeout:g} s")
        else:
            say(f"drain: every accepted payment settled ({time.monotonic() - started:.1f} s after the load)")


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
