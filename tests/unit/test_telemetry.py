"""Tracing: configured by the standard OTEL_* variables; without an exporter no span is built;
with one, a payment is one trace — request, publishes, handlers, PSP calls — batches link the
traces they serve, and unsampled work builds no span. The fast traceparent parser used for links
agrees with OpenTelemetry's propagator."""

from __future__ import annotations

from collections.abc import Iterator

import msgspec
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased

from marketplace_pay.infra import telemetry
from marketplace_pay.infra.telemetry import _remote_span, context_from
from marketplace_pay.infra.tracing_config import TracingConfigError, tracing_config
from marketplace_pay.shared.bus import Message


@pytest.mark.parametrize(
    "traceparent",
    [
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # invalid trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # invalid span id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",  # no flags
        "00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01",  # not hex
        "garbage",
    ],
)
def test_batch_links_parse_traceparents_as_the_propagator_does(traceparent: str) -> None:
    theirs = trace.get_current_span(context_from(traceparent)).get_span_context()
    ours = _remote_span(traceparent)
    if not theirs.is_valid:
        assert ours is None
    else:
        assert ours is not None
        assert (ours.trace_id, ours.span_id, ours.trace_flags, ours.is_remote) == (
            theirs.trace_id,
            theirs.span_id,
            theirs.trace_flags,
            theirs.is_remote,
        )


# -- configuration -----------------------------------------------------------------------------

SAMPLED = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
OTHER_SAMPLED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
UNSAMPLED = "00-11111111111111111111111111111111-2222222222222222-00"


@pytest.mark.parametrize(
    ("env", "described"),
    [
        ({}, "off"),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, "off"),
        ({"OTEL_SDK_DISABLED": "true", "MP_TRACE_EXPORT": "console"}, "off"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"},
            "otlp http/protobuf http://collector:4318/v1/traces; sampler parentbased_always_on",
        ),
        (
            {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/x"},
            "otlp http/protobuf http://c:4318/x; sampler parentbased_always_on",
        ),
        (
            {"OTEL_TRACES_EXPORTER": "otlp"},
            "otlp http/protobuf http://localhost:4318/v1/traces; sampler parentbased_always_on",
        ),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4317",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": "0.05",
            },
            "otlp grpc http://jaeger:4317; sampler parentbased_traceidratio(0.05)",
        ),
        ({"MP_TRACE_EXPORT": "console"}, "console; sampler parentbased_always_on"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp,console", "MP_TRACE_EXPORT": "console"},
            "otlp http/protobuf http://localhost:4318/v1/traces, console; sampler parentbased_always_on",
        ),
        ({"MP_TRACE_EXPORT": "console", "OTEL_TRACES_SAMPLER": "traceidratio"}, "console; sampler traceidratio(1)"),
    ],
)
def test_tracing_is_configured_by_the_standard_variables(env: dict[str, str], described: str) -> None:
    assert tracing_config(env).describe() == described


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_TRACES_EXPORTER": "zipkin"},
        {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
        {"MP_TRACE_EXPORT": "jaeger"},
        {"MP_TRACE_EXPORT": "console", "OTEL_TRACES_SAMPLER": "sometimes"},
        {"MP_TRACE_EXPORT": "console", "OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "half"},
        {"MP_TRACE_EXPORT": "console", "OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.5"},
    ],
)
def test_a_tracing_setting_that_cannot_work_is_refused(env: dict[str, str]) -> None:
    with pytest.raises(TracingConfigError):
        tracing_config(env)


def test_the_sampled_flag_is_read_from_the_traceparent() -> None:
    assert telemetry.sampled(SAMPLED)
    assert not telemetry.sampled(UNSAMPLED)
    assert not telemetry.sampled(None) and not telemetry.sampled("garbage")


# -- spans, with an exporter -----------------------------------------------------------------------


@pytest.fixture
def exported(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """Tracing on, as with an exporter and the default parent-based sampler; spans kept in memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(telemetry, "_recording", True)
    monkeypatch.setattr(telemetry, "_follow_parent", True)
    monkeypatch.setattr(telemetry, "_tracer", provider.get_tracer("test"))
    yield exporter
    provider.shutdown()


def _hex(n: int, width: int) -> str:
    return format(n, f"0{width}x")


def test_without_an_exporter_no_span_is_built_but_trace_ids_flow() -> None:
    assert not telemetry._recording
    with telemetry.server_span("POST /api/v1/payments", SAMPLED) as span:
        assert isinstance(span, telemetry.QuietSpan)
        assert telemetry.current_ids()[0] == SAMPLED[3:35]
        with telemetry.client_span("psp authorize") as call:
            assert call is telemetry._NO_SPAN
    messages = [Message("t", "k", "e", "x", b"{}", SAMPLED)]
    assert telemetry.publish_spans(messages) == (messages, None)


def test_work_of_an_unsampled_trace_builds_no_span(exported: InMemorySpanExporter) -> None:
    with telemetry.server_span("POST /api/v1/payments", UNSAMPLED) as span:
        assert isinstance(span, telemetry.QuietSpan)
        with telemetry.client_span("psp authorize") as call:
            assert call is telemetry._NO_SPAN
    with telemetry.consume_span("c", "payment_authorized", [UNSAMPLED]):
        assert telemetry.current_trace_id() == UNSAMPLED[3:35]  # logs still name the payment's trace
        with telemetry.client_span("psp capture", UNSAMPLED) as call:
            assert call is telemetry._NO_SPAN
    with telemetry.consume_span("c", "payment_authorized", [UNSAMPLED, UNSAMPLED.replace("1", "3")]):
        pass
    messages = [Message("t", "k", "e", "x", b"{}", UNSAMPLED)]
    assert telemetry.publish_spans(messages) == (messages, None)
    assert exported.get_finished_spans() == ()


def test_a_payment_is_one_trace_through_publish_handler_and_psp(exported: InMemorySpanExporter) -> None:
    with telemetry.server_span("POST /api/v1/payments", SAMPLED) as http:
        with telemetry.client_span("psp authorize", attributes={"payment.id": "pay_AAAAAAAAAAA"}):
            pass
        trace_id, traceparent = telemetry.current_ids()
    published, end = telemetry.publish_spans([Message("topic", "k", "e1", "payment_authorized", b"{}", traceparent)])
    assert end is not None and published[0].traceparent != traceparent
    with (
        telemetry.consume_span("payments-capture-authorized", "payment_authorized", [published[0].traceparent]),
        telemetry.client_span("psp capture", traceparent),  # the event's own traceparent: same trace
    ):
        pass
    end(None)
    spans = {s.name: s for s in exported.get_finished_spans()}
    assert set(spans) == {
        "POST /api/v1/payments",
        "psp authorize",
        "publish payment_authorized",
        "payments-capture-authorized payment_authorized",
        "psp capture",
    }
    assert {_hex(s.context.trace_id, 32) for s in spans.values()} == {trace_id} == {SAMPLED[3:35]}
    parent = {name: s.parent.span_id if s.parent else None for name, s in spans.items()}
    ids = {name: s.context.span_id for name, s in spans.items()}
    assert parent["POST /api/v1/payments"] == int(SAMPLED[36:52], 16)  # the caller's span
    assert parent["psp authorize"] == ids["POST /api/v1/payments"] == parent["publish payment_authorized"]
    assert parent["payments-capture-authorized payment_authorized"] == ids["publish payment_authorized"]
    assert parent["psp capture"] == ids["payments-capture-authorized payment_authorized"]
    assert http.get_span_context().trace_id == spans["psp authorize"].context.trace_id


def test_a_batch_runs_under_its_first_sampled_event_and_links_the_others(exported: InMemorySpanExporter) -> None:
    with (
        telemetry.consume_span(
            "ledger-record-finalizations", "payment_order_finalized", [UNSAMPLED, SAMPLED, OTHER_SAMPLED, SAMPLED]
        ),
        telemetry.client_span("psp capture", OTHER_SAMPLED),
    ):  # an order of the other payment
        pass
    (batch,) = (s for s in exported.get_finished_spans() if s.name.startswith("ledger"))
    (call,) = (s for s in exported.get_finished_spans() if s.name == "psp capture")
    assert _hex(batch.context.trace_id, 32) == SAMPLED[3:35]
    assert [(_hex(link.context.trace_id, 32)) for link in batch.links] == [OTHER_SAMPLED[3:35]]
    assert batch.attributes["messaging.batch.message_count"] == 4
    # the PSP call belongs to its payment's trace, and links to the batch it ran in
    assert _hex(call.context.trace_id, 32) == OTHER_SAMPLED[3:35]
    assert call.parent is not None and call.parent.span_id == int(OTHER_SAMPLED[36:52], 16)
    assert [link.context.span_id for link in call.links] == [batch.context.span_id]


def test_a_publish_span_ends_when_the_bus_answers_and_records_a_failure(exported: InMemorySpanExporter) -> None:
    messages = [
        Message("t", "k", "e1", "payment_authorized", b"{}", SAMPLED),
        Message("t", "k", "e2", "x", b"{}", UNSAMPLED),
    ]
    published, end = telemetry.publish_spans(messages)
    assert published[1] is messages[1] and published[0] == msgspec.structs.replace(
        messages[0], traceparent=published[0].traceparent
    )
    assert exported.get_finished_spans() == ()
    assert end is not None
    end(ConnectionError("broker gone"))
    (span,) = exported.get_finished_spans()
    assert span.status.status_code.name == "ERROR" and span.attributes["messaging.message.id"] == "e1"


def test_a_root_the_sampler_drops_has_no_recorded_children(
    exported: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = TracerProvider(sampler=ParentBased(ALWAYS_OFF))
    monkeypatch.setattr(telemetry, "_tracer", provider.get_tracer("test"))
    with telemetry.server_span("GET /x", None) as span:
        assert not span.get_span_context().trace_flags.sampled  # a root the sampler dropped
        assert telemetry.current_trace_id() == format(span.get_span_context().trace_id, "032x")
        with telemetry.client_span("psp authorize") as call:
            assert call is telemetry._NO_SPAN
