"""/metrics as Prometheus reads it, after real traffic: the exposition parses, the names follow
Prometheus' conventions (one prefix, units last, `_total` on counters), every label set is
bounded (nothing a client sends becomes a label value), the payment's path shows in the
counters, and `promtool check metrics` accepts it."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from typing import Any

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from marketplace_pay.infra.metrics import HTTP_METHODS
from tests.harness import payment_body, start_service

ALLOWED_LABELS = {
    "method",
    "route",
    "code",
    "status",
    "operation",
    "result",
    "consumer",
    "topic",
    "partition",
    "kind",
    "state",
    "check",
    "currency",  # EUR, USD, GBP (settlements)
}


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_the_exposition_after_a_payment_is_conventional_and_bounded(database: str, settings_for: Any) -> None:
    marker = uuid.uuid4().hex
    counted = {
        "accepted": ("marketplace_pay_payments_created_total", {"status": "AUTHORIZED"}),
        "settled": ("marketplace_pay_payment_orders_settled_total", {"status": "CAPTURED"}),
        "lags": ("marketplace_pay_settle_lag_seconds_count", {}),
        "captures": ("marketplace_pay_psp_calls_total", {"operation": "capture", "result": "CAPTURED"}),
    }
    before = {k: value(n, **labels) for k, (n, labels) in counted.items()}
    async with start_service(settings_for(database)) as svc:
        response = await svc.pay(payment_body(buyer=f"BUYER-{marker}", order=f"ORDER-{marker}"))
        assert response.status_code == 202, response.text

        def after(key: str) -> float:
            name, labels = counted[key]
            return value(name, **labels) - before[key]

        await svc.until(lambda: after("settled") == 2 and after("lags") == 2, timeout=20)
        # what a client controls must not become a label value
        await svc.client.request("BREW", f"/api/v1/payments/{marker}")
        await svc.client.get(f"/no/such/{marker}")
        scrape = await svc.client.get("/metrics")
    assert scrape.status_code == 200
    assert (after("accepted"), after("settled"), after("lags"), after("captures")) == (1, 2, 2, 2)

    families = [f for f in text_string_to_metric_families(scrape.text) if f.name.startswith("marketplace_pay_")]
    assert len(families) >= 25
    methods = set()
    for family in families:
        assert family.documentation, family.name
        assert family.name.islower() and "__" not in family.name, family.name
        if family.type == "counter":
            assert not family.name.endswith("_total")  # the parser drops it: the samples carry it
            assert all(s.name == family.name + "_total" for s in family.samples), family.name
        elif family.type == "histogram":
            assert family.name.endswith("_seconds"), family.name
        else:
            assert family.type == "gauge" and "total" not in family.name, family.name
        for sample in family.samples:
            assert set(sample.labels) - {"le"} <= ALLOWED_LABELS, (family.name, sample.labels)
            assert not any(marker in v for v in sample.labels.values()), (family.name, sample.labels)
            if "route" in sample.labels:
                assert sample.labels["route"].startswith("/") or sample.labels["route"] == "unmatched"
            if "method" in sample.labels:
                methods.add(sample.labels["method"])
    assert "POST" in methods and methods <= HTTP_METHODS | {"OTHER"}

    if shutil.which("promtool") is None:
        pytest.skip("promtool is not installed (Debian package `prometheus`; .ci/run installs it)")
    checked = subprocess.run(
        ["promtool", "check", "metrics"], input=scrape.text, capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
