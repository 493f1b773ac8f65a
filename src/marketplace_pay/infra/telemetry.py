"""OpenTelemetry: one trace per payment, from the HTTP request through the outbox, the bus and
every handler and PSP call. The envelope carries the trace id and the W3C traceparent; so do
Kafka records (a `traceparent` header).

The spans of one payment:

    POST /api/v1/payments                      server    the request
      psp authorize                            client    the synchronous authorization
      publish payment_authorized               producer  relay: read from the outbox → durable on the bus
        payments-capture-authorized payment_authorized   consumer  the handler's transaction(s)
          psp capture                          client    one per payment order
        ledger-record-authorizations payment_authorized
      publish payment_order_finalized          producer
        ledger-record-finalizations payment_order_finalized
      publish ledger_entries_recorded          producer
        balances-apply-ledger-entries ledger_entries_recorded

A handler called with a batch of events from several payments runs under the first sampled
event's span and links to the others; a PSP call made for one payment order in such a batch
still belongs to that order's trace (and links to the batch). Jobs acting for one payment (the
PENDING_AUTH resolver) join its trace as well.

**Configuration**: the standard `OTEL_*` variables, read by infra/tracing_config.py.

**Cost.** Spans cost CPU on every request and every handler batch even when nobody collects
them, so none is built unless an exporter is configured. Without one, trace ids still flow — a
request gets (or keeps) a trace id, its events carry it and a traceparent, logs show it. With
one, work whose trace is not sampled takes the same cheap path: when the sampler follows the
parent (the `parentbased_*` samplers, the default) the sampled flag of the event's traceparent
is read first, and an unsampled event builds no span object at all.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, NamedTuple

import msgspec
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from marketplace_pay.infra.tracing_config import SERVICE_NAME, TracingConfig, tracing_config
from marketplace_pay.shared.bus import Message

log = logging.getLogger(__name__)

_propagator = TraceContextTextMapPropagator()
_configured = False
_recording = False  # an exporter is configured: spans are built for sampled work
_follow_parent = True  # the sampler keeps the parent's decision: an unsampled parent means no span
_provider: TracerProvider | None = None
_tracer: trace.Tracer | None = None


def _exporter(name: str, config: TracingConfig) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    if config.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter()


def setup_tracing(instance_name: str | None = None) -> TracingConfig:
    """Install the SDK tracer provider once per process, with the exporters the environment asks
    for. Without any, no span is ever built (see the module docstring)."""
    global _configured, _recording, _follow_parent, _provider, _tracer
    config = tracing_config()
    if _configured:
        return config
    _configured = True
    if not config.enabled:
        return config
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace.sampling import _get_from_env_or_default

    attributes: dict[str, str] = {"service.version": _version()}
    if instance_name:
        attributes["service.instance.id"] = instance_name
    if not os.environ.get("OTEL_SERVICE_NAME") and "service.name=" not in os.environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    ):
        attributes["service.name"] = SERVICE_NAME
    provider = TracerProvider(resource=Resource.create(attributes), sampler=_get_from_env_or_default())
    for name in config.exporters:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name, config)))
    trace.set_tracer_provider(provider)
    _provider = provider
    _tracer = None
    _recording = True
    _follow_parent = config.sampler.startswith("parentbased_")
    return config


def flush_tracing(timeout_s: float = 5.0) -> None:
    """Export what is buffered (at shutdown: the batch processor exports every few seconds)."""
    if _provider is not None:
        _provider.force_flush(int(timeout_s * 1000))


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("marketplace-pay")
    except Exception:  # noqa: BLE001 - not installed as a distribution (a source checkout)
        return "unknown"


def tracer() -> trace.Tracer:
    global _tracer
    if _tracer is None:
        _tracer = trace.get_tracer("marketplace_pay")
    return _tracer


# -- trace ids without spans ----------------------------------------------------------------------


class TraceIds(NamedTuple):
    trace_id: str  # 32 hex characters
    traceparent: str  # what the work done under it propagates (its children's parent)


_quiet: ContextVar[TraceIds | None] = ContextVar("mp_trace_ids", default=None)


def _unrecorded(parent: str | None) -> TraceIds:
    """Ids for work that is traced but not recorded: the parent's trace id (or a new one) and a
    new span id, flagged not sampled."""
    trace_id = parent[3:35] if parent else os.urandom(16).hex()
    return TraceIds(trace_id, f"00-{trace_id}-{os.urandom(8).hex()}-00")


class QuietSpan:
    """What the span helpers yield when no span is built."""

    __slots__ = ("trace_id",)

    def __init__(self, trace_id: str) -> None:
        self.trace_id = trace_id

    def update_name(self, name: str) -> None:
        return None

    def set_attribute(self, key: str, value: Any) -> None:
        return None


_NO_SPAN = QuietSpan("")


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
    """The span a W3C traceparent (`00-<trace id>-<span id>-<flags>`) names. Cheaper than the
    propagator, which builds a whole Context per event."""
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


def sampled(traceparent: str | None) -> bool:
    """Whether a traceparent's sampled flag is set (its flags are the last field of version 00)."""
    if not traceparent or len(traceparent) < 55:
        return False
    try:
        return bool(int(traceparent[53:55], 16) & 1)
    except ValueError:
        return False


def _wanted(traceparent: str | None) -> bool:
    """Whether work under `traceparent` gets a span: the sampler decides, and when it follows the
    parent, an unsampled parent settles it here, before any span object is built."""
    return not _follow_parent or sampled(traceparent)


def _parent_context(traceparent: str | None) -> Context | None:
    remote = _remote_span(traceparent) if traceparent else None
    return trace.set_span_in_context(NonRecordingSpan(remote)) if remote is not None else None


def _traceparent_of(span: trace.Span) -> str:
    ctx = span.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


@contextmanager
def _quietly(traceparent: str | None) -> Iterator[QuietSpan]:
    ids = _unrecorded(traceparent)
    token = _quiet.set(ids)
    try:
        yield QuietSpan(ids.trace_id)
    finally:
        _quiet.reset(token)


@contextmanager
def _recorded(
    name: str, context: Any, kind: SpanKind, links: Sequence[Link] = (), attributes: Mapping[str, Any] | None = None
) -> Iterator[Any]:
    """An SDK span as the current one (and no quiet trace ids over it)."""
    token = _quiet.set(None) if _quiet.get() is not None else None
    try:
        with tracer().start_as_current_span(
            name, context=context, kind=kind, links=links, attributes=attributes
        ) as span:
            yield span
    finally:
        if token is not None:
            _quiet.reset(token)


# -- the spans ------------------------------------------------------------------------------------


@contextmanager
def server_span(name: str, traceparent: str | None) -> Iterator[Any]:
    """The HTTP request's span, joining the caller's trace when it sent a traceparent."""
    if not _recording or (traceparent is not None and not _wanted(traceparent)):
        with _quietly(traceparent) as quiet:
            yield quiet
        return
    with _recorded(name, _parent_context(traceparent), SpanKind.SERVER) as span:
        yield span


@contextmanager
def span_for(
    name: str,
    traceparent: str | None,
    attributes: Mapping[str, Any] | None = None,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
) -> Iterator[Any]:
    """Work done for the event or payment `traceparent` names (a job acting for one payment):
    a span in its trace, or — not recorded — at least its trace id in the logs."""
    if not _recording or not _wanted(traceparent):
        with _quietly(traceparent) as quiet:
            yield quiet
        return
    with _recorded(name, _parent_context(traceparent), kind, attributes=attributes) as span:
        yield span


@contextmanager
def consume_span(consumer: str, event_type: str, traceparents: Sequence[str | None]) -> Iterator[None]:
    """A handler's call on a batch: a batch of one joins its event's trace; a larger batch runs
    under its first sampled event's span and links to the others."""
    name = f"{consumer} {event_type}"
    if len(traceparents) == 1:
        with span_for(name, traceparents[0], {"messaging.consumer.group.name": consumer}, kind=SpanKind.CONSUMER):
            yield
        return
    chosen = [tp for tp in dict.fromkeys(traceparents) if tp and _wanted(tp)] if _recording else []
    if not chosen:
        token = _quiet.set(None)  # a batch of several traces has no one trace id
        try:
            yield
        finally:
            _quiet.reset(token)
        return
    links = []
    for tp in chosen[1:]:
        ctx = _remote_span(tp)
        if ctx is not None:
            links.append(Link(ctx))
            if len(links) == _MAX_LINKS:
                break
    attributes = {"messaging.consumer.group.name": consumer, "messaging.batch.message_count": len(traceparents)}
    with _recorded(name, _parent_context(chosen[0]), SpanKind.CONSUMER, links, attributes):
        yield


@contextmanager
def client_span(
    name: str, traceparent: str | None = None, attributes: Mapping[str, Any] | None = None
) -> Iterator[Any]:
    """A call to another system (the PSP) made for the work `traceparent` names — a payment
    order in a batch — or, without one, for the current work. Inside a batch that belongs to
    another trace, the span joins `traceparent`'s trace and links to the batch."""
    if not _recording:
        yield _NO_SPAN
        return
    current = trace.get_current_span().get_span_context()
    links: tuple[Link, ...] = ()
    if traceparent is None:
        quiet = _quiet.get()
        if quiet is not None or (current.is_valid and _follow_parent and not current.trace_flags.sampled):
            yield _NO_SPAN  # the current work is not recorded: neither is this call
            return
        context = None
    else:
        remote = _remote_span(traceparent)
        if not _wanted(traceparent) or remote is None:
            yield _NO_SPAN
            return
        if current.is_valid and current.trace_id == remote.trace_id:
            context = None  # already in that trace: a child of the current span
        else:
            context = trace.set_span_in_context(NonRecordingSpan(remote))
            links = (Link(current),) if current.is_valid and current.trace_flags.sampled else ()
    with _recorded(name, context, SpanKind.CLIENT, links, attributes) as span:
        yield span


def publish_spans(messages: list[Message]) -> tuple[list[Message], Callable[[BaseException | None], None] | None]:
    """Producer spans for the relay: one per sampled event, from its read until the bus says it is
    durable. Returns the messages to publish — a sampled one now carries its publish span as the
    consumers' parent — and the function that ends the spans (None when there are none)."""
    if not _recording:
        return messages, None
    out: list[Message] | None = None
    spans: list[trace.Span] = []
    for i, m in enumerate(messages):
        if not m.traceparent or not _wanted(m.traceparent):
            continue
        span = tracer().start_span(
            f"publish {m.event_type}",
            context=_parent_context(m.traceparent),
            kind=SpanKind.PRODUCER,
            attributes={"messaging.destination.name": m.topic, "messaging.message.id": m.event_id},
        )
        if not span.get_span_context().trace_flags.sampled:
            continue  # the sampler said no (a ratio sampler on a root): nothing to end
        if out is None:
            out = list(messages)
        out[i] = msgspec.structs.replace(m, traceparent=_traceparent_of(span))
        spans.append(span)
    if out is None:
        return messages, None

    def end(error: BaseException | None) -> None:
        for span in spans:
            if error is not None:
                span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            span.end()

    return out, end
