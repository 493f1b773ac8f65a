"""The OpenAPI document tells the truth: Schemathesis runs every check (examples, coverage,
fuzzing and the stateful phase, which follows the document's links: POST payment → GET payment,
POST seller → GET seller, POST payout → GET payout, …) against the service started as a user starts it, and finds nothing.

Fixed seed and a bounded number of examples, so a run is repeatable and takes well under a minute.
A failure prints Schemathesis' report with a curl command that reproduces each case.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from marketplace_pay.infra.auth import issue_token
from tests.harness import ServiceProcess, payment_body

ROOT = Path(__file__).resolve().parents[2]
SEED = 20261125
EXAMPLES_PER_OPERATION = 150


def fund_seeded_sellers(service: ServiceProcess, secret: str) -> None:
    """Money for the payouts the run makes (the hooks keep them small and on these sellers)."""
    headers = {"Authorization": f"Bearer {issue_token(secret, roles=['payment:write'], ttl_s=600)}"}
    lines = [(s, 10_000_000) for s in ("SELLER-111", "SELLER-222", "SELLER-333")]
    with httpx.Client(timeout=10) as client:
        r = client.post(f"{service.url}/api/v1/payments", json=payment_body("FUNDS", "FUNDS", lines), headers=headers)
        assert r.status_code == 202, r.text
        deadline = time.monotonic() + 30
        while client.get(service.url + r.headers["location"], headers=headers).json()["status"] != "CAPTURED":
            assert time.monotonic() < deadline, "the funding payment was not captured"
            time.sleep(0.1)


def test_schemathesis_finds_no_failure(fresh_database: str, settings_for: Any, tmp_path: Path) -> None:
    settings = settings_for(fresh_database, psp_scenario="BEST_PSP_EVER")
    service = ServiceProcess(settings).start()
    try:
        assert settings.jwt.secret
        fund_seeded_sellers(service, settings.jwt.secret)
        # ADMIN may call every operation; the seller claim lets it read /sellers/me/balance too
        token = issue_token(settings.jwt.secret, roles=["ADMIN"], seller_id="SELLER-111", ttl_s=3600)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "schemathesis.cli",
                "--config-file",
                str(ROOT / "tests" / "schemathesis.toml"),
                "run",
                f"{service.url}/schema/openapi.json",
                "--checks",
                "all",
                "--phases",
                "examples,coverage,fuzzing,stateful",
                "--seed",
                str(SEED),
                "--max-examples",
                str(EXAMPLES_PER_OPERATION),
                "--workers",
                "1",
                "--generation-database",
                "none",
                "--header",
                f"Authorization: Bearer {token}",
                "--request-timeout",
                "10",
                "--no-color",
            ],
            cwd=tmp_path,  # Schemathesis keeps its state in the working directory
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        report = run.stdout + run.stderr
        assert run.returncode == 0, report[-20_000:]
        assert "No issues found" in report, report[-20_000:]
    finally:
        service.stop()
    assert "Traceback" not in service.log(), service.log()[-5_000:]
