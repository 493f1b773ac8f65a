"""OpenTelemetry: one trace per payment, from the HTTP request through the outbox, the bus and
every handler. The envelope carries the trace id and the W3C traceparent.

Spans cost CPU on every request and every handler batch even when nobody collects them, so
they are created only while an exporter is configured. Without one, trace ids still flow — a
request gets (or keeps) a trace id, its events carry it and a traceparent, logs show it — but
no span object is built."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, NamedTuple

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.trace import Link, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_propagator = TraceContextTextMapPropagator()
_configured = False
_recording = False
_tracer: trace.Tracer | None = None


class TraceIds(NamedTuple):
    trace_id: str  # 32 hex characters
    traceparent: str  # what the work done under it propagates (its children's parent)


_quiet: ContextVar[TraceIds | None] = ContextVar("mp_trace_ids", default=None)


def setup_tracing(service_name: str = "marketplace-pay") -> None:
    """Install the SDK tracer provider once per process. Spans are recorded and exported only
    when MP_TRACE_EXPORT=console."""
    global _configured, _recording
    if _configured:
        return
    from opentelemetry.sdk.resources import Resource

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if os.environ.get("MP_TRACE_EXPORT", "").lower() == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        _recording = True
    trace.set_tracer_provider(provider)
    _configured = True


def tracer() -> trace.Tracer:
    global _tracer
    if _tracer is None:
        _tracer = trace.get_tracer("marketplace_pay")
    return _tracer


def _unrecorded(parent: str | None) -> TraceIds:
    """Ids for work that is traced but not recorded: the parent's trace id (or a new one) and a
    new span id, flagged not sampled."""
    trace_id = parent[3:35] if parent else os.urandom(16).hex()
    return TraceIds(trace_id, f"00-{trace_id}-{os.urandom(8).hex()}-00")


class QuietSpan:
    """What `server_span` yields when spans are not recorded."""

    __slots__ = ("trace_id",)

    def __init__(self, trace_id: str) -> None:
        self.trace_id = trace_id

    def update_name(self, name: str) -> None:
        return None

    def set_attribute(self, key: str, value: Any) -> None:
        return None


def trace_id_of(span: Any) -> str:
    if isinstance(span, QuietSpan):
        return span.trace_id
    return format(span.get_span_context().trace_id, "032x")


def current_trace_id() -> str | None:
    """The trace id the current work runs under, if any (for logs)."""
    quiet = _quiet.get()
    if quiet is not None:
        return quiet.trace_id
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


def current_ids() -> tuple[str, str | None]:
    """(trace id as 32 hex chars, traceparent) of the current span; a fresh trace id if none."""
    quiet = _quiet.get()
    if quiet is not None:
        return quiet.trace_id, quiet.traceparent
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return os.urandom(16).hex(), None
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return format(ctx.trace_id, "032x"), carrier.get("traceparent")


def context_from(traceparent: str | None) -> Context | None:
    return _propagator.extract({"traceparent": traceparent}) if traceparent else None


_MAX_LINKS = 128  # the SDK's default span limit: links beyond it would be dropped anyway


def _remote_span(traceparent: str) -> SpanContext | None:
    """The span a W3C traceparent (`00-<trace id>-<span id>-<flags>`) names. For batch links:
    cheaper than the propagator, which builds a whole Context per event."""
    parts = traceparent.split("-")
    if len(parts) < 4 or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None
    try:
        ctx = SpanContext(
            int(parts[1], 16), int(parts[2], 16), is_remote=True, trace_flags=TraceFlags(int(parts[3][:2], 16))
        )
    except ValueError:
        return None
    return ctx if ctx.is_valid else None


@contextmanager
def server_span(name: str, traceparent: str | None) -> Iterator[Any]:
    if not _recording:
        ids = _unrecorded(traceparent)
        token = _quiet.set(ids)
        try:
            yield QuietSpan(ids.trace_id)
        finally:
            _quiet.reset(token)
        return
    with tracer().start_as_current_span(name, context=context_from(traceparent), kind=SpanKind.SERVER) as span:
        yield span


@contextmanager
def consume_span(consumer: str, event_type: str, traceparents: Sequence[str | None]) -> Iterator[None]:
    """A batch of one joins its event's trace; a larger batch links to every event's span."""
    if not _recording:
        token = _quiet.set(_unrecorded(traceparents[0]) if len(traceparents) == 1 and traceparents[0] else None)
        try:
            yield
        finally:
            _quiet.reset(token)
        return
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
