"""One payment, one trace: `marketplace-pay serve` exporting to an OTLP/HTTP receiver on a local
port. The spans of one payment — the HTTP request, the PSP authorization, the relay's publishes,
every handler and the PSP captures — arrive under the trace id the API returned in X-Trace-Id,
on the in-memory bus and across Kafka (the traceparent travels in a record header), over
OTLP/HTTP and OTLP/gRPC."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from marketplace_pay.balances.application.consumer import APPLY_LEDGER_ENTRIES
from marketplace_pay.ledger.application.recording import RECORD_AUTHORIZATIONS, RECORD_FINALIZATIONS, RECORD_REFUNDS
from marketplace_pay.payments.application.capture import CAPTURE_AUTHORIZED
from marketplace_pay.payments.application.refunds import CALL_REQUESTED_REFUNDS
from tests.harness import ServiceProcess, auth, payment_body
from tests.otlp import OtlpReceiver, ReceivedSpan

PAYMENT_SPANS = {
    "POST /api/v1/payments",
    "psp authorize",
    "publish payment_authorized",
    f"{CAPTURE_AUTHORIZED} payment_authorized",
    "psp capture",
    f"{RECORD_AUTHORIZATIONS} payment_authorized",
    "publish payment_order_finalized",
    f"{RECORD_FINALIZATIONS} payment_order_finalized",
    "publish ledger_entries_recorded",
    f"{APPLY_LEDGER_ENTRIES} ledger_entries_recorded",
}


def _one_payment_one_trace(
    settings: Any, processes: list[ServiceProcess], *, protocol: str = "http/protobuf", start_timeout: float = 30
) -> None:
    with OtlpReceiver(protocol) as otlp:
        service = ServiceProcess(
            settings,
            extra_env={
                "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url,
                "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
                "OTEL_BSP_SCHEDULE_DELAY": "100",  # export every 0.1 s: a quick test
                "OTEL_SERVICE_NAME": "marketplace-pay-under-test",
            },
        )
        processes.append(service)
        service.start(timeout=start_timeout)
        body = payment_body(buyer=f"BUYER-{uuid.uuid4().hex[:8]}", order=f"ORDER-{uuid.uuid4().hex[:8]}")
        response = httpx.post(
            f"{service.url}/api/v1/payments",
            json=body,
            headers=auth(settings.jwt.secret, "payment:write"),
            timeout=10,
        )
        assert response.status_code == 202, response.text
        trace_id = response.headers["x-trace-id"]
        payment_id = response.json()["paymentId"]

        def complete() -> bool:
            spans = otlp.trace(trace_id)
            names = {s.name for s in spans}
            return names >= PAYMENT_SPANS and sum(s.name == "psp capture" for s in spans) == 2

        otlp.wait_for(complete, timeout=30)
        spans = otlp.trace(trace_id)
        by_id = {s.span_id: s for s in spans}

        roots = [s for s in spans if not s.parent_span_id]
        assert [s.name for s in roots] == ["POST /api/v1/payments"]
        assert all(s.parent_span_id in by_id for s in spans if s.parent_span_id), "a span's parent is missing"

        def parent(span: ReceivedSpan) -> str:
            return by_id[span.parent_span_id].name

        # the relay publishes for the request, the handlers run under the publish of their event
        assert {parent(s) for s in spans if s.name.startswith("publish ")} <= {"POST /api/v1/payments"}
        assert parent(_named(spans, f"{CAPTURE_AUTHORIZED} payment_authorized")) == "publish payment_authorized"
        assert (
            parent(_named(spans, f"{APPLY_LEDGER_ENTRIES} ledger_entries_recorded"))
            == "publish ledger_entries_recorded"
        )
        captures = [s for s in spans if s.name == "psp capture"]
        assert {parent(s) for s in captures} == {f"{CAPTURE_AUTHORIZED} payment_authorized"}
        assert {s.attributes["payment.id"] for s in captures} == {payment_id}
        assert {s.attributes["psp.result"] for s in captures} == {"CAPTURED"}
        assert {s.resource["service.name"] for s in spans} == {"marketplace-pay-under-test"}

        # a refund of that payment is a trace of its own, through the PSP and into the ledger
        order_id = response.json()["paymentOrders"][0]["paymentOrderId"]
        refunded = httpx.post(
            f"{service.url}/api/v1/payments/{payment_id}/refunds",
            json={"paymentOrderId": order_id, "amount": {"quantity": 100, "currency": "EUR"}},
            headers=auth(settings.jwt.secret, "payment:write"),
            timeout=10,
        )
        assert refunded.status_code == 202, refunded.text
        refund_trace = refunded.headers["x-trace-id"]
        wanted = {
            "publish refund_requested",
            f"{CALL_REQUESTED_REFUNDS} refund_requested",
            "psp refund",
            "publish refund_succeeded",
            f"{RECORD_REFUNDS} refund_succeeded",
        }
        otlp.wait_for(lambda: {s.name for s in otlp.trace(refund_trace)} >= wanted, timeout=30)
        spans = otlp.trace(refund_trace)
        [root] = [s for s in spans if not s.parent_span_id]
        assert root.name.startswith("POST /api/v1/payments/") and root.name.endswith("/refunds")
        [psp] = [s for s in spans if s.name == "psp refund"]
        assert (psp.attributes["refund.id"], psp.attributes["psp.result"]) == (refunded.json()["refundId"], "DONE")
    assert service.terminate() == 0


def _named(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    found = [s for s in spans if s.name == name]
    assert found, f"no span {name!r}"
    return found[0]


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_one_payment_is_one_trace_from_the_request_to_the_balances(
    protocol: str, fresh_database: str, settings_for: Any, processes: list[ServiceProcess]
) -> None:
    _one_payment_one_trace(settings_for(fresh_database), processes, protocol=protocol)


@pytest.mark.kafka
def test_the_trace_crosses_kafka_in_a_record_header(
    fresh_database: str, settings_for: Any, kafka_bootstrap: str, processes: list[ServiceProcess]
) -> None:
    settings = settings_for(fresh_database, kafka_bootstrap_servers=kafka_bootstrap, kafka_topic_partitions=4)
    _one_payment_one_trace(settings, processes, start_timeout=60)
