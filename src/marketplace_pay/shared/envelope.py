"""The event envelope and the base class of every event.

Event ids are deterministic: the same fact always gets the same id, so a replay
of a handler emits the same events and the outbox (unique event id) and the handlers' state guards absorb them.
Root events are their own parent. `traceparent` carries the W3C trace context so that a
payment's spans, from the HTTP request through every handler, form one trace.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, Generic, TypeVar

import msgspec


class Event(msgspec.Struct, frozen=True, rename="camel"):
    """Payload of an envelope. Subclasses set `event_type` and `topic` and say how their id
    and Kafka key are derived."""

    event_type: ClassVar[str]
    topic: ClassVar[str]

    def event_id(self) -> str:
        raise NotImplementedError

    def partition_key(self) -> str:
        raise NotImplementedError


E = TypeVar("E", bound=Event)


class Envelope(msgspec.Struct, Generic[E], frozen=True, rename="camel", omit_defaults=True):
    event_id: str
    event_type: str
    aggregate_id: str
    data: E
    timestamp: datetime
    trace_id: str
    parent_event_id: str
    traceparent: str | None = None

    @property
    def topic(self) -> str:
        return type(self.data).topic

    @property
    def key(self) -> str:
        return self.data.partition_key()


def envelope(
    data: E,
    *,
    aggregate_id: str,
    timestamp: datetime,
    trace_id: str,
    caused_by: Envelope[Any] | None = None,
    traceparent: str | None = None,
    parent_event_id: str | None = None,
) -> Envelope[E]:
    """Wrap `data`; lineage (trace, parent) comes from the envelope that caused it, or from
    `parent_event_id` when only the cause's (deterministic) id is known."""
    event_id = data.event_id()
    if caused_by is not None:
        trace_id, parent = caused_by.trace_id, caused_by.event_id
        traceparent = traceparent or caused_by.traceparent
    else:
        parent = parent_event_id or event_id  # a root event is its own parent
    return Envelope(
        event_id=event_id,
        event_type=data.event_type,
        aggregate_id=aggregate_id,
        data=data,
        timestamp=timestamp,
        trace_id=trace_id,
        parent_event_id=parent,
        traceparent=traceparent,
    )
