"""`marketplace-pay bench` as a user runs it: it starts its own service on a fresh database,
loads it for a few seconds and reports every figure. Never a speed: only that the figures
exist and that payments were accepted, settled and reconciled."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import asyncpg

from marketplace_pay.entrypoints.bench.figures import JSON_KEYS
from tests.harness import ServiceProcess


def test_bench_serve_reports_every_figure_and_a_clean_ledger(fresh_database: str, settings_for: Any) -> None:
    env = ServiceProcess(settings_for(fresh_database)).env()  # the environment `serve` would get
    env["MP_PSP_SCENARIO"] = "NORMAL"  # the bench picks BEST_PSP_EVER itself unless told otherwise
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "marketplace_pay.entrypoints.cli",
            "bench",
            "--serve",
            "--duration",
            "3",
            "--warmup",
            "1",
            "--rate",
            "50",
            "--stats-wait",
            "0",
            "--drain-timeout",
            "60",
            "--json",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    assert set(JSON_KEYS) <= set(figures), set(JSON_KEYS) - set(figures)
    assert figures["accepted_per_s"] > 0
    assert figures["settled_per_s"] > 0
    assert figures["reconcile_clean"] is True
    assert figures["scenario"] == "BEST_PSP_EVER"
    assert figures["serve_exit_code"] == 0
    assert figures["unsettled_after_drain"] == 0
    assert figures["latency_p50_ms"] is not None and figures["settle_lag_p99_ms"] is not None
    assert figures["pgbench_tps"] is None and figures["accepted_ratio"] is None  # no --baseline
    # every figure is also a row of the table printed before it
    assert all(key in run.stdout for key in JSON_KEYS)


async def test_bench_url_that_does_not_answer_is_a_clear_error(fresh_database: str, settings_for: Any) -> None:
    env = ServiceProcess(settings_for(fresh_database)).env()
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "marketplace_pay.entrypoints.cli",
            "bench",
            "--url",
            "http://127.0.0.1:9",
            "--duration",
            "1",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert "not reachable" in run.stderr
    assert "Traceback" not in run.stderr
    conn = await asyncpg.connect(fresh_database)
    try:
        assert await conn.fetchval("SELECT count(*) FROM payments") == 0
    finally:
        await conn.close()
