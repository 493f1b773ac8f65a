"""The Prometheus config, the alert rules and the Grafana dashboard that ship in ops/: they load
(promtool), the alerts fire when they should (promtool's rule tests), every metric they name is
one the service exports, and every alert is explained in the README."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from marketplace_pay.infra import metrics
from tests.ops.promql import metric_names

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"
RULES = OPS / "prometheus" / "rules" / "marketplace-pay.yml"
DASHBOARD = OPS / "grafana" / "dashboards" / "marketplace-pay.json"
SYNTHETIC = {"up"}  # written by Prometheus itself for every target

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (Debian package `prometheus`; .ci/run installs it)"
)

_SAMPLE_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "summary": ("_sum", "_count", ""),
}


def exported() -> set[str]:
    """Every series name /metrics can carry, from the exposition itself."""
    metrics.setup_metrics()
    body, _ = metrics.exposition()
    return {
        family.name + suffix
        for family in text_string_to_metric_families(body.decode())
        for suffix in _SAMPLE_SUFFIXES.get(family.type, ("",))
    }


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def alerts() -> list[str]:
    return [r["alert"] for r in rules() if "alert" in r]


def dashboard_queries() -> list[tuple[str, str]]:
    board = json.loads(DASHBOARD.read_text())
    queries = [(p["title"], t["expr"]) for p in board["panels"] for t in p.get("targets", [])]
    queries += [
        (f"variable {v['name']}", v["definition"].removeprefix("label_values(").split(",")[0])
        for v in board["templating"]["list"]
        if v["type"] == "query"
    ]
    return queries


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_every_metric_the_rules_read_is_exported_or_recorded() -> None:
    names = exported()
    recorded = {r["record"] for r in rules() if "record" in r}
    for rule in rules():
        used = metric_names(rule["expr"])
        assert used, f"{rule.get('alert') or rule.get('record')} reads no metric"
        assert used <= names | recorded | SYNTHETIC, (
            f"{rule.get('alert') or rule.get('record')}: {used - names - recorded}"
        )


def test_every_dashboard_query_names_exported_metrics() -> None:
    names = exported()
    queries = dashboard_queries()
    assert len(queries) > 20
    for title, expr in queries:
        used = metric_names(expr)
        assert used, f"panel {title!r} names no metric: {expr}"
        assert used <= names | SYNTHETIC, f"panel {title!r} names what the service does not export: {used - names}"


def test_the_dashboard_covers_what_an_operator_asks() -> None:
    used = set().union(*(metric_names(expr) for _, expr in dashboard_queries()))
    for family in (
        "marketplace_pay_payments_created_total",  # accepted per second
        "marketplace_pay_payment_orders_settled_total",  # settled per second
        "marketplace_pay_http_request_duration_seconds_bucket",  # API latency
        "marketplace_pay_settle_lag_seconds_bucket",
        "marketplace_pay_outbox_backlog_events",
        "marketplace_pay_retry_queue_items",
        "marketplace_pay_psp_calls_total",
        "marketplace_pay_consumer_lag_records",
        "marketplace_pay_dead_letters_waiting",
        "marketplace_pay_stuck_payment_orders",
        "marketplace_pay_balance_drift_accounts",
        "marketplace_pay_refund_outcomes_total",
        "marketplace_pay_payout_outcomes_total",
    ):
        assert family in used, family


def test_the_dashboard_reads_the_provisioned_prometheus() -> None:
    board = json.loads(DASHBOARD.read_text())
    sources = yaml.safe_load((OPS / "grafana" / "provisioning" / "datasources" / "datasources.yml").read_text())
    prometheus = [d for d in sources["datasources"] if d["type"] == "prometheus"]
    assert [d["uid"] for d in prometheus] == ["prometheus"]
    datasource = next(v for v in board["templating"]["list"] if v["name"] == "datasource")
    assert datasource["current"]["value"] == "prometheus"
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))


def test_every_alert_is_explained_in_the_readme_and_tested() -> None:
    readme = (ROOT / "README.md").read_text()
    operations = readme[readme.index("\n## Operations") :]
    tested = {
        case["alertname"]
        for test in yaml.safe_load((OPS / "prometheus" / "tests" / "alerts_test.yml").read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    }
    for name in alerts():
        section = re.search(rf"^#### {name}\n(.*?)(?=^#|\Z)", operations, re.MULTILINE | re.DOTALL)
        assert section, f"README, Operations: no '#### {name}' section"
        assert "**Means**" in section.group(1) and "**Do**" in section.group(1), f"README: {name} lacks Means/Do"
        assert name in tested, f"no promtool test for {name}"
    for rule in rules():
        if "alert" in rule:
            assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
            assert rule["annotations"]["runbook"].endswith(rule["alert"]), rule["alert"]


@needs_promtool
def test_promtool_accepts_the_prometheus_config_and_its_rules() -> None:
    result = promtool("check", "config", "ops/prometheus/prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr


@needs_promtool
def test_promtool_accepts_the_rules() -> None:
    result = promtool("check", "rules", str(RULES.relative_to(ROOT)))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_the_alerts_fire_when_they_should_and_only_then() -> None:
    result = promtool("test", "rules", "ops/prometheus/tests/alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_would_catch_a_broken_rule(tmp_path: Path) -> None:
    """The checks above can fail: a rule with a syntax error is refused."""
    broken = tmp_path / "broken.yml"
    broken.write_text(
        RULES.read_text().replace(
            "max(marketplace_pay_balance_drift_accounts) > 0", "max(marketplace_pay_balance_drift_accounts > 0"
        )
    )
    assert promtool("check", "rules", str(broken)).returncode != 0
