"""The fast traceparent parser used for batch links agrees with OpenTelemetry's propagator."""

from __future__ import annotations

import pytest
from opentelemetry import trace

from marketplace_pay.infra.telemetry import _remote_span, context_from


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
