"""`serve --workers 2`: one API worker on the port, one pipeline worker leading every outbox shard
and running the jobs. The pipeline worker killed (SIGKILL) under load is replaced in its role:
the API keeps answering, every payment settles, nothing is captured twice, reconcile is clean."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from marketplace_pay.infra.locks import NS_RELAY
from tests.e2e.test_balances_process import reconcile_cli
from tests.e2e.test_capture_process import assert_consistent, create, wait_settled
from tests.harness import ServiceProcess, rows_of


async def roles(dsn: str) -> dict[bool, int]:
    """Live workers by whether they lead outbox shards → pid (the lease holder is
    `<hostname>-<pid>#…` when no instance name is set)."""
    rows = await rows_of(
        dsn, "SELECT holder, relays FROM instance_leases WHERE heartbeat_at > now() - interval '3 seconds'"
    )
    return {r["relays"]: int(r["holder"].split("#")[0].rsplit("-", 1)[1]) for r in rows}


async def shard_leaders(dsn: str) -> dict[str, int]:
    """application_name → how many outbox shards its session holds the lock of."""
    rows = await rows_of(
        dsn,
        """SELECT a.application_name, count(*) AS n FROM pg_locks l JOIN pg_stat_activity a USING (pid)
           WHERE l.locktype = 'advisory' AND l.classid::bigint = $1 AND l.granted AND l.database =
                 (SELECT oid FROM pg_database WHERE datname = current_database())
           GROUP BY 1""",
        NS_RELAY,
    )
    return {r["application_name"]: r["n"] for r in rows}


async def until(check: Any, *, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.2)


async def test_one_api_worker_and_one_pipeline_worker_which_survives_a_kill(
    fresh_database: str, settings_for: Any, tmp_path: Path, processes: list[ServiceProcess]
) -> None:
    log = tmp_path / "psp.jsonl"
    settings = settings_for(fresh_database, psp_scenario="NORMAL", psp_call_log=log, retry_base_ms=50, retry_cap_ms=200)
    service = ServiceProcess(settings, workers=2)
    processes.append(service)
    service.start(timeout=60)

    async def both() -> dict[bool, int] | None:
        found = await roles(fresh_database)
        return found if set(found) == {True, False} else None

    first = await until(both)
    api_pid, pipeline_pid = first[False], first[True]
    await until(lambda: _all_shards_led_by(fresh_database, pipeline_pid))

    # payments keep coming while the pipeline worker is killed
    accepted: list[int] = []
    sender = threading.Thread(
        target=lambda: accepted.append(create(service, 60, amount=lambda rng: rng.randint(100, 9000))), daemon=True
    )
    sender.start()
    await asyncio.sleep(1.0)
    os.kill(pipeline_pid, signal.SIGKILL)

    async def replaced() -> dict[bool, int] | None:
        found = await roles(fresh_database)
        return found if found.get(True) not in (None, pipeline_pid) else None

    second = await until(replaced)
    sender.join(60)
    assert accepted == [60], "the API did not answer every payment while the pipeline worker was replaced"
    assert second[False] == api_pid, "the API worker was not touched"
    await until(lambda: _all_shards_led_by(fresh_database, second[True]))

    await wait_settled(fresh_database)
    await assert_consistent(fresh_database, log)  # every order terminal, nothing captured twice
    code, report = reconcile_cli(service)
    assert code == 0, report
    assert service.terminate() == 0


async def _all_shards_led_by(dsn: str, pid: int) -> bool:
    leaders = await shard_leaders(dsn)
    return sum(leaders.values()) == 32 and all(f"-{pid}:" in name for name in leaders)


def test_workers_start_when_serve_is_pid_1(fresh_database: str, settings_for: Any, tmp_path: Path) -> None:
    """In a container `serve` is pid 1: its workers must not take that for their parent's death."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "--pid", "--fork", "true"]).returncode != 0:
        pytest.skip("cannot start a process in a new pid namespace here")
    service = ServiceProcess(settings_for(fresh_database), workers=2)
    log = open(tmp_path / "serve.log", "ab")  # noqa: SIM115 - kept open for the child
    command = ["unshare", "--pid", "--fork", "--kill-child", sys.executable, "-m", "marketplace_pay.entrypoints.cli"]
    proc = subprocess.Popen(
        [*command, "serve", "--port", str(service.port), "--workers", "2"],
        env=service.env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(f"{service.url}/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "never ready: " + (tmp_path / "serve.log").read_text()[-2000:]
            time.sleep(0.2)
        time.sleep(2)  # still serving: no worker died and was replaced meanwhile
        assert httpx.get(f"{service.url}/health/ready", timeout=2).status_code == 200
        assert "worker died" not in (tmp_path / "serve.log").read_text()
    finally:
        proc.kill()
        proc.wait(10)
