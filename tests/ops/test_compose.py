"""compose.yaml without a Docker engine: it parses, runs what production runs (two replicas on
Kafka, PostgreSQL, Redis, Prometheus with the rules, Grafana with the dashboard, Jaeger for the
traces), and takes every secret from the uncommitted env file — never a literal."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
_SECRET = re.compile(r"PASSWORD|SECRET|TOKEN|AUTH", re.IGNORECASE)
_REQUIRED = re.compile(r"\$\{(\w+):\?[^}]*\}")


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def test_compose_runs_the_whole_stack() -> None:
    services = compose()["services"]
    assert set(services) == {"postgres", "redis", "kafka", "marketplace-pay", "prometheus", "grafana", "jaeger"}
    app = services["marketplace-pay"]
    assert app["build"] == "." and (ROOT / "Dockerfile").exists()
    assert app["deploy"]["replicas"] == 2
    env = app["environment"]
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert "@postgres:5432/" in env["DATABASE_URL"] and "@redis:6379/" in env["REDIS_URL"]
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://jaeger:4318"
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
    for dependency in ("postgres", "redis", "kafka"):
        assert app["depends_on"][dependency]["condition"] == "service_healthy"
        assert "healthcheck" in services[dependency]


def test_no_secret_is_written_in_the_compose_file() -> None:
    text = (ROOT / "compose.yaml").read_text()
    services = compose()["services"]
    for name, service in services.items():
        for key, value in (service.get("environment") or {}).items():
            if _SECRET.search(key) or ("://" in str(value) and "@" in str(value)):
                assert _REQUIRED.search(str(value)), f"{name}.{key} is not taken from .env: {value!r}"
    for variable in ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "MP_JWT_SECRET", "GRAFANA_ADMIN_PASSWORD"):
        assert f"${{{variable}:?" in text, variable
    assert "change-me" not in text.lower()
    # the env file is ignored by git and by the image build, and the example names every secret
    assert ".env" in (ROOT / ".gitignore").read_text().split()
    assert ".env" in (ROOT / ".dockerignore").read_text().split()
    example = (ROOT / "ops" / "env.example").read_text()
    required = set(_REQUIRED.findall(text))
    assert required <= set(re.findall(r"^(\w+)=$", example, re.MULTILINE)), required
    tracked = subprocess.run(["git", "ls-files", ".env"], cwd=ROOT, capture_output=True, text=True).stdout
    assert tracked == ""


def test_prometheus_scrapes_every_replica_with_the_rules() -> None:
    services = compose()["services"]
    prometheus = services["prometheus"]
    assert "./ops/prometheus:/etc/prometheus:ro" in prometheus["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    config = yaml.safe_load((ROOT / "ops" / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "marketplace-pay")
    # one DNS A record per replica of the compose service
    assert job["dns_sd_configs"] == [
        {"names": ["marketplace-pay"], "type": "A", "port": 8000, "refresh_interval": "15s"}
    ]
    assert config["rule_files"] == ["rules/*.yml"]
    assert list((ROOT / "ops" / "prometheus" / "rules").glob("*.yml"))


def test_grafana_is_provisioned_with_the_dashboard_and_both_data_sources() -> None:
    grafana = compose()["services"]["grafana"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in grafana["volumes"] if v.startswith("./")}
    for local in mounts:
        assert (ROOT / local).exists(), local
    provider = yaml.safe_load((ROOT / "ops/grafana/provisioning/dashboards/dashboards.yml").read_text())["providers"][0]
    assert provider["options"]["path"] == mounts["./ops/grafana/dashboards"]
    assert (ROOT / "ops/grafana/dashboards/marketplace-pay.json").exists()
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"].startswith(
        mounts["./ops/grafana/dashboards"]
    )
    sources = yaml.safe_load((ROOT / "ops/grafana/provisioning/datasources/datasources.yml").read_text())["datasources"]
    services = compose()["services"]
    for source in sources:
        host = source["url"].split("//")[1].split(":")[0]
        assert host in services, source["url"]
    assert {s["type"] for s in sources} == {"prometheus", "jaeger"}
