"""Metric plumbing without a server: what reconciliation reports, the bounded method label, and
the directory several workers share."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from marketplace_pay.balances.application.reconcile import record_drift
from marketplace_pay.balances.domain.balance import Check, Drift
from marketplace_pay.infra import metrics


def test_reconciliation_reports_every_kind_of_difference() -> None:
    record_drift(
        [
            Drift(Check.SNAPSHOT, "MERCHANT_PAYABLE.SELLER-1.EUR", 100, 90),
            Drift(Check.REAL_TIME, "MERCHANT_PAYABLE.SELLER-1.EUR", 100, 105),
            Drift(Check.AUTH_OPEN, "42:AUTH_RECEIVABLE", 0, 7),
            Drift(Check.AUTH_OPEN, "43:AUTH_LIABILITY", 0, -7),
        ]
    )

    def value(name: str, **labels: str) -> float | None:
        return REGISTRY.get_sample_value(name, labels)

    assert value("marketplace_pay_balance_drift_accounts") == 1
    assert value("marketplace_pay_balance_drift_minor_units") == 15
    assert {
        check: value("marketplace_pay_reconciliation_differences", check=check)
        for check in metrics.RECONCILIATION_CHECKS
    } == {
        "snapshot": 1,
        "real-time": 1,
        "trial-balance": 0,
        "auth-open": 2,
        "psp-receivables": 0,
    }
    record_drift([])
    assert value("marketplace_pay_reconciliation_differences", check="auth-open") == 0
    assert value("marketplace_pay_balance_drift_accounts") == 0


def test_an_invented_http_method_is_one_label_value() -> None:
    assert metrics.http_method("POST") == "POST"
    assert metrics.http_method("BREW") == metrics.http_method("PROPFIND") == "OTHER"


def test_serve_makes_a_fresh_directory_or_empties_the_operators(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # empty counts as unset; setenv (unlike delenv of an absent variable) restores it afterwards,
    # so the variable the function sets does not leak into later tests
    monkeypatch.setenv(metrics.MULTIPROC_DIR_ENV, "")
    made, fresh = metrics.prepare_multiprocess_dir(tmp_path)
    assert fresh and made.parent == tmp_path and list(made.iterdir()) == []
    assert os.environ[metrics.MULTIPROC_DIR_ENV] == str(made)
    metrics.remove_multiprocess_dir(made)
    assert not made.exists()

    chosen = tmp_path / "chosen"
    chosen.mkdir()
    (chosen / "counter_999.db").write_bytes(b"an earlier run")
    (chosen / "notes.txt").write_text("not ours")
    monkeypatch.setenv(metrics.MULTIPROC_DIR_ENV, str(chosen))
    path, fresh = metrics.prepare_multiprocess_dir(tmp_path)
    assert (path, fresh) == (chosen, False)
    assert sorted(p.name for p in chosen.iterdir()) == ["notes.txt"]


_FORKED_WORKER = """
import os
from marketplace_pay.infra import metrics
metrics.STUCK_REDRIVEN.inc()
child = os.fork()
if child == 0:
    metrics.STUCK_REDRIVEN.inc()
    os._exit(0)
os.waitpid(child, 0)
print(os.getpid(), child)
"""


def test_with_several_workers_each_process_writes_its_own_file_even_after_a_fork(tmp_path: Path) -> None:
    """The process id is not asked on every update but kept: a forked child must still notice
    that it is another process and write a file of its own (summing the parent's would double)."""
    import subprocess
    import sys

    env = {**os.environ, metrics.MULTIPROC_DIR_ENV: str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", _FORKED_WORKER], env=env, capture_output=True, text=True, check=True)
    parent, child = out.stdout.split()
    counters = {p.name for p in tmp_path.iterdir() if p.name.startswith("counter_")}
    assert counters == {f"counter_{parent}.db", f"counter_{child}.db"}
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))
    assert registry.get_sample_value("marketplace_pay_stuck_payment_orders_redriven_total") == 2
