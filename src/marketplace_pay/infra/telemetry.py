"""OpenTelemetry: one trace per payment, from the HTTP request through the outbox, the bus and
every handler. The envelope carries the trace id and the W3C traceparent."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.trace import Link, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_propagator = TraceContextTextMapPropagator()
_configured = False


def setup_tracing(service_name: str = "marketplace-pay") -> None:
    """Install the SDK tracer provider once per process. Spans are exported only when
    MP_TRACE_EXPORT=console (OTLP export needs an exporter package this image does not ship)."""
    global _configured
    if _configured:
        return
    from opentelemetry.sdk.resources import Resource

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if os.environ.get("MP_TRACE_EXPORT", "").lower() == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)
    _configured = True


def tracer() -> trace.Tracer:
    return trace.get_tracer("marketplace_pay")


def current_ids() -> tuple[str, str | None]:
    """(trace id as 32 hex chars, traceparent) of the current span; a fresh trace id if none."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return os.urandom(16).hex(), None
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return format(ctx.trace_id, "032x"), carrier.get("traceparent")


def context_from(traceparent: str | None):  # noqa: ANN201 - an opentelemetry Context
    return _propagator.extract({"traceparent": traceparent}) if traceparent else None


_MAX_LINKS = 128  # the SDK's default span limit: links beyond it would be dropped anyway


def _remote_span(traceparent: str) -> SpanContext | None:
    """The span a W3C traceparent (`00-<trace id>-<span id>-<flags>`) names. For batch links:
    cheaper than the propagator, which builds a whole Context per event."""
    parts = traceparent.split("-")
    if len(parts) < 4 or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None
    try:
        ctx = SpanContext(int(parts[1], 16), int(parts[2], 16), is_remote=True, trace_flags=TraceFlags(int(parts[3][:2], 16)))
    except ValueError:
        return None
    return ctx if ctx.is_valid else None


@contextmanager
def server_span(name: str, traceparent: str | None) -> Iterator[trace.Span]:
    with tracer().start_as_current_span(name, context=context_from(traceparent), kind=SpanKind.SERVER) as span:
        yield span


@contextmanager
def consume_span(consumer: str, event_type: str, traceparents: Sequence[str | None]) -> Iterator[None]:
    """A batch of one joins its event's trace; a larger batch links to every event's span."""
    if len(traceparents) == 1:
        with tracer().start_as_current_span(
            f"handle {event_type}",
            context=context_from(traceparents[0]),
            kind=SpanKind.CONSUMER,
            attributes={"messaging.consumer.group.name": consumer},
        ):
            yield
        return
    links = []
    for tp in dict.fromkeys(traceparents):
        ctx = _remote_span(tp) if tp else None
        if ctx is not None:
            links.append(Link(ctx))
            if len(links) == _MAX_LINKS:
                break
    with tracer().start_as_current_span(
        f"handle {event_type} batch",
        kind=SpanKind.CONSUMER,
        links=links,
        attributes={"messaging.consumer.group.name": consumer, "messaging.batch.message_count": len(traceparents)},
    ):
        yield
