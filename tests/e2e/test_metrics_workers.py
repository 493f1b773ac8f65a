"""`serve --workers 2`: whichever worker takes the scrape answers for both (prometheus-client's
multiprocess mode, in a directory `serve` prepares before the workers start and removes at the
end). Without it, each scrape would count one worker's requests only."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import ServiceProcess


def scrape(service: ServiceProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{service.url}/metrics", timeout=5).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def live_requests(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> float:
    return sum(
        v
        for (name, labels), v in samples.items()
        if name == "marketplace_pay_http_request_duration_seconds_count" and ("route", "/health/live") in labels
    )


def test_any_worker_answers_a_scrape_for_all_workers(
    fresh_database: str, settings_for: Any, processes: list[ServiceProcess], tmp_path: Path
) -> None:
    metrics_dir = tmp_path / "prometheus-multiproc"
    metrics_dir.mkdir()
    (metrics_dir / "counter_1.db").write_bytes(b"left by an earlier run")  # must be cleaned at start
    service = ServiceProcess(
        settings_for(fresh_database), workers=2, extra_env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    )
    processes.append(service)
    service.start(timeout=60)
    workers = ("marketplace_pay_worker_processes", ())
    deadline = time.monotonic() + 30
    while scrape(service).get(workers) != 2:
        assert time.monotonic() < deadline, "both workers never showed up in one scrape"
        time.sleep(0.2)

    before = live_requests(scrape(service))
    for _ in range(40):  # a new connection each: the kernel spreads them over the workers
        assert httpx.get(f"{service.url}/health/live", timeout=5, headers={"Connection": "close"}).status_code == 200
    for _ in range(10):
        samples = scrape(service)
        assert samples[workers] == 2
        assert live_requests(samples) == before + 40

    if shutil.which("promtool") is not None:
        text = httpx.get(f"{service.url}/metrics", timeout=5).text
        checked = subprocess.run(
            ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
    pids = {int(m) for m in re.findall(r"_(\d+)\.db$", "\n".join(os.listdir(metrics_dir)), re.MULTILINE)}
    assert 1 not in pids and len(pids) >= 2
    assert service.terminate() == 0


def test_serve_removes_the_directory_it_made(
    fresh_database: str, settings_for: Any, processes: list[ServiceProcess]
) -> None:
    service = ServiceProcess(settings_for(fresh_database), workers=2)
    processes.append(service)
    service.start(timeout=60)
    made = re.search(r"PROMETHEUS_MULTIPROC_DIR=(\S+)", _ps_environ(service))
    assert made, "serve did not give its workers a metrics directory"
    path = Path(made.group(1))
    assert path.is_dir() and list(path.glob("*.db"))
    assert service.terminate() == 0
    assert not path.exists()


def _ps_environ(service: ServiceProcess) -> str:
    """The environment of one of the service's workers (children of the serve process)."""
    assert service.proc is not None
    children = Path(f"/proc/{service.proc.pid}/task/{service.proc.pid}/children").read_text().split()
    if not children:
        pytest.fail("no worker processes")
    return Path(f"/proc/{children[0]}/environ").read_bytes().replace(b"\0", b"\n").decode(errors="replace")
