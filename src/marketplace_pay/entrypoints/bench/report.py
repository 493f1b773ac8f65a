"""The figures of a run, from what the load generator, the settle tracker and the probes saw
(their definitions are in figures.py)."""

from __future__ import annotations

import argparse
import asyncio
from array import array
from dataclasses import dataclass, field
from typing import Any

from marketplace_pay.entrypoints.bench import figures as fig
from marketplace_pay.entrypoints.bench.probes import ProcessTreeSampler
from marketplace_pay.entrypoints.bench.settle import SettleTracker

DEFAULT_CONCURRENCY = 64


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


class Reporting:
    args: argparse.Namespace
    procs: ProcessTreeSampler | None
    scenario: str | None
    workers: int | None
    service_cpu_pct: float | None
    bench_cpu_pct: float | None

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
        latency = sorted(doubles(r["latency_s"]))
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


def doubles(raw: bytes) -> array[float]:
    values = array("d")
    values.frombytes(raw)
    return values
