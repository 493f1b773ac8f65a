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
from array import array
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import uvloop

from marketplace_pay.entrypoints.bench import figures as fig
from marketplace_pay.entrypoints.bench.loadgen import LoadPlan, RequestTemplate, run_child
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
    wait_ready,
    wal_bytes_between,
)
from marketplace_pay.entrypoints.bench.settle import SettleTracker, payment_id_from_location

SEEDED_SELLERS = ("SELLER-111", "SELLER-222", "SELLER-333")
DEFAULT_CONCURRENCY = 64
DEFAULT_SCENARIO = "BEST_PSP_EVER"
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


def _redacted(dsn: str) -> str:
    parts = urlsplit(dsn)
    if parts.password:
        host = parts.hostname or ""
        netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return dsn


def _token_refused(r: httpx.Response) -> BenchError:
    return BenchError(
        f"the service refused the bench's token ({r.status_code}): the bench signs it with MP_JWT_SECRET (or the "
        f"data directory's generated secret), so give the bench the service's secret. Answer: {r.text[:300]}"
    )


@dataclass
class LoadState:
    """What the generator has reported so far."""

    started: dict[str, float] = field(default_factory=dict)
    sent: int = 0
    answered: int = 0
    not_ok: int = 0
    in_flight: int = 0
    queued: int = 0
    result: dict[str, Any] | None = None
    error: str | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)


class Bench:
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

    # --- set-up -----------------------------------------------------------------------------
    def _check_args(self) -> None:
        a = self.args
        if a.duration <= 0 or a.warmup < 0:
            raise BenchError("--duration must be > 0 and --warmup >= 0")
        if a.rate is not None and a.rate <= 0:
            raise BenchError("--rate must be > 0")
        if a.concurrency is not None and a.concurrency < 1:
            raise BenchError("--concurrency must be >= 1")
        if not 1 <= a.sellers_per_payment <= 100:
            raise BenchError("--sellers-per-payment must be 1-100 (a payment has 1-100 orders)")
        if a.url and (a.scenario or a.workers):
            raise BenchError("--scenario and --workers apply to a service the bench starts (--serve)")

    async def _database(self) -> tuple[Any, str]:
        from marketplace_pay.infra.resources import resolve_dsn
        from marketplace_pay.settings import Settings, SettingsError

        try:
            settings = Settings.from_env(self.env)
        except SettingsError as exc:
            raise BenchError(str(exc)) from None
        try:
            dsn = await resolve_dsn(settings)
        except Exception as exc:  # noqa: BLE001 - the embedded server failing has many shapes
            raise BenchError(f"no database: {type(exc).__name__}: {exc}") from None
        try:
            self.conn = await asyncpg.connect(dsn, timeout=10)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            raise BenchError(f"cannot connect to the database {_redacted(dsn)}: {exc}") from None
        return settings, dsn

    async def _check_tables(self, dsn: str) -> None:
        """Once the service runs (it migrates at start): the tables the bench reads exist."""
        assert self.conn is not None
        present = await self.conn.fetchval(
            "SELECT count(*) FROM pg_tables WHERE tablename IN ('payments', 'payment_orders', 'journal_entries')"
        )
        if present != 3:
            raise BenchError(
                f"the database {_redacted(dsn)} has no payments/ledger tables: point the bench at the service's "
                "database (the same DATABASE_URL)"
            )

    async def _service(self) -> str:
        a = self.args
        if a.url:
            url = a.url.rstrip("/")
            if urlsplit(url).scheme != "http":
                raise BenchError("--url must be an http:// URL (the load generator speaks plain HTTP/1.1)")
            try:
                await wait_ready(url, timeout_s=10)
            except BenchError as exc:
                raise BenchError(f"the service is not reachable: {exc}") from None
            return url
        self.scenario = a.scenario or DEFAULT_SCENARIO
        self.workers = a.workers  # None: the service's default (one per core)
        self.serve = ServeProcess(scenario=self.scenario, workers=a.workers, env=self.env)
        say(
            f"starting `marketplace-pay serve` on {self.serve.url} (scenario {self.scenario}, log {self.serve.log_path})"
        )
        await self.serve.start()
        return self.serve.url

    async def _sellers(self, url: str, admin_token: str) -> list[str]:
        k = self.args.sellers_per_payment
        sellers = list(SEEDED_SELLERS[:k]) + [f"BENCH-SELLER-{n}" for n in range(1, k - len(SEEDED_SELLERS) + 1)]
        headers = {"Authorization": f"Bearer {admin_token}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=10) as client:
            for seller in sellers[len(SEEDED_SELLERS) :]:
                r = await client.post(
                    "/api/v1/sellers", json={"sellerId": seller, "currency": "EUR", "commissionBps": 500}
                )
                if r.status_code == 401:
                    raise _token_refused(r)
                if r.status_code not in (201, 409):
                    raise BenchError(f"onboarding {seller} failed: {r.status_code} {r.text[:400]}")
            for seller in sellers:
                r = await client.get(f"/api/v1/sellers/{seller}")
                if r.status_code == 401:
                    raise _token_refused(r)
                if r.status_code != 200:
                    say(f"cannot read seller {seller} ({r.status_code}): its commission journal is not required")
                    continue
                body = r.json()
                if body.get("status") != "ACTIVE" or body.get("currency") != "EUR":
                    raise BenchError(f"seller {seller} must be ACTIVE and settle in EUR, it is {body}")
                self.commission_bps[seller] = int(body["commissionBps"])
        return sellers

    async def _probe(self, url: str, token: str, lines: list[tuple[str, int]]) -> None:
        """One payment before the load: the token is accepted, the sellers are valid, and the
        service writes to the database the bench reads."""
        assert self.conn is not None
        body = json.loads(fig.payment_body(lines, self.run_id).replace(b"@N@", b"probe"))
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            r = await client.post("/api/v1/payments", json=body, headers={"Authorization": f"Bearer {token}"})
        if r.status_code in (401, 403):
            raise _token_refused(r)
        if r.status_code != 202 or "location" not in r.headers:
            raise BenchError(f"a probe payment was not accepted: {r.status_code} {r.text[:600]}")
        payment_id = payment_id_from_location(r.headers["location"].encode())
        deadline = time.monotonic() + 5
        while not await self.conn.fetchval("SELECT true FROM payments WHERE payment_id = $1", payment_id):
            if time.monotonic() > deadline:
                raise BenchError(
                    "the service accepted a payment that the bench cannot find in its database: point the bench "
                    "at the service's database (the same DATABASE_URL)"
                )
            await asyncio.sleep(0.1)

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
                        tracker.add(message["locations"], _doubles(message["accepted_at"]))
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

    def _figures(
        self,
        state: LoadState,
        tracker: SettleTracker,
        *,
        offset_s: float,
        drain_s: float,
        pgbench_tps: float | None,
        rows_written: int,
        wal_bytes: int,
        reconcile_clean: bool,
        serve_exit: int | None,
    ) -> dict[str, Any]:
        a = self.args
        r = state.result
        assert r is not None
        ws, we = state.started["window_start"], state.started["window_end"]
        window_s = we - ws
        latency = sorted(_doubles(r["latency_s"]))
        accepted_per_s = fig.per_s(r["ok_in_window"], window_s)
        settled = fig.settled_in_window(tracker.settled_at.values(), ws, we, offset_s)
        settled_per_s = fig.per_s(settled, window_s)
        lag = fig.lag_figures(
            fig.window_lags(tracker.accepted_at, tracker.settled_at, tracker.declined, ws, we, offset_s), ws, we
        )
        payments = len(tracker.accepted_at)
        outcomes = dict(r["window_outcomes"])
        procs = self.procs
        return {
            "accepted_per_s": accepted_per_s,
            "latency_p50_ms": fig.ms(fig.percentile(latency, 50)),
            "latency_p90_ms": fig.ms(fig.percentile(latency, 90)),
            "latency_p99_ms": fig.ms(fig.percentile(latency, 99)),
            "settled_per_s": settled_per_s,
            "settle_lag_p50_ms": fig.ms(lag.p50_s),
            "settle_lag_p99_ms": fig.ms(lag.p99_s),
            "settle_lag_first_third_p50_ms": fig.ms(lag.first_third_p50_s),
            "settle_lag_last_third_p50_ms": fig.ms(lag.last_third_p50_s),
            "settle_lag_growth": lag.growth,
            "peak_rss_mb": round(procs.peak_bytes / 2**20, 1) if procs is not None and procs.peak_bytes else None,
            "reconcile_clean": reconcile_clean,
            "pgbench_tps": round(pgbench_tps, 1) if pgbench_tps is not None else None,
            "accepted_ratio": fig.ratio(accepted_per_s, pgbench_tps),
            "settled_ratio": fig.ratio(settled_per_s, pgbench_tps),
            "requests": r["window_requests"],
            "errors": {k: v for k, v in sorted(outcomes.items()) if k != "202"},
            "accepted": r["ok_in_window"],
            "settled": settled,
            "unsettled_after_drain": len(tracker.open),
            "declined_after_accept": len(tracker.declined),
            "drain_s": round(drain_s, 1),
            "rows_written_per_payment": round(rows_written / payments, 1) if payments else None,
            "wal_bytes_per_payment": round(wal_bytes / payments) if payments else None,
            "duration_s": round(window_s, 3),
            "warmup_s": a.warmup,
            "mode": "rate" if a.rate else "concurrency",
            "rate": a.rate,
            "concurrency": None if a.rate else (a.concurrency or DEFAULT_CONCURRENCY),
            "sellers_per_payment": a.sellers_per_payment,
            "scenario": self.scenario,
            "workers": self.workers,
            "service_processes": procs.processes_max if procs is not None and procs.processes_max else None,
            "generator_cpu_pct": round(100 * r["cpu_s"] / r["active_s"], 1) if r["active_s"] else None,
            "generator_cpu_us_per_request": round(1e6 * r["cpu_s"] / r["sent"], 1) if r["sent"] else None,
            "service_cpu_pct": self.service_cpu_pct,
            "bench_cpu_pct": self.bench_cpu_pct,
            "settle_poll_ms_mean": round(1000 * tracker.poll_s / tracker.polls, 1) if tracker.polls else None,
            "db_clock_offset_ms": round(offset_s * 1000, 2) + 0.0,  # + 0.0: no "-0.0"
            "serve_exit_code": serve_exit,
        }


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _doubles(raw: bytes) -> array:
    values = array("d")
    values.frombytes(raw)
    return values
