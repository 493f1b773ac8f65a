"""The load generator's pure parts: request templating and the response parser."""

from __future__ import annotations

import json

import pytest

from marketplace_pay.entrypoints.bench.wire import ProtocolError, RequestTemplate, ResponseParser

# --- request templating ---------------------------------------------------------------------


def test_template_renders_the_counter_at_every_mark_with_a_constant_content_length() -> None:
    body = b'{"buyerId":"B-@N@","orderId":"O-@N@","amount":3000}'
    t = RequestTemplate.build("POST", "/api/v1/payments", "h:1", {"Authorization": "Bearer x"}, body)
    one, big = t.render(1), t.render(987_654_321)
    assert len(one) == len(big)
    head, _, raw = one.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /api/v1/payments HTTP/1.1\r\nHost: h:1\r\nAuthorization: Bearer x\r\n")
    assert f"Content-Length: {len(raw)}".encode() in head
    assert json.loads(raw) == {"buyerId": "B-000000000001", "orderId": "O-000000000001", "amount": 3000}
    assert json.loads(big.partition(b"\r\n\r\n")[2])["orderId"] == "O-000987654321"


def test_template_without_a_mark_is_the_same_bytes_every_time() -> None:
    t = RequestTemplate.build("GET", "/health/live", "h")
    assert t.render(1) == t.render(2) == b"GET /health/live HTTP/1.1\r\nHost: h\r\n\r\n"


def test_a_counter_too_wide_for_the_template_is_refused() -> None:
    t = RequestTemplate.build("POST", "/x", "h", body=b'{"n":"@N@"}', width=3)
    assert t.render(999).endswith(b'{"n":"999"}')
    with pytest.raises(OverflowError):
        t.render(1000)


# --- the response parser --------------------------------------------------------------------

ACCEPTED = (
    b"HTTP/1.1 202 Accepted\r\ndate: x\r\nserver: uvicorn\r\nlocation: /api/v1/payments/pay_A30ce1-gUAA\r\n"
    b'content-type: application/json\r\ncontent-length: 5\r\n\r\n{"a"}'
)


def test_parser_reads_status_location_and_body() -> None:
    assert ResponseParser().feed(ACCEPTED) == [(202, b"/api/v1/payments/pay_A30ce1-gUAA", b'{"a"}', False)]


def test_parser_waits_for_the_whole_response_whatever_the_split() -> None:
    for cut in range(1, len(ACCEPTED)):
        parser = ResponseParser()
        assert parser.feed(ACCEPTED[:cut]) == []
        assert parser.feed(ACCEPTED[cut:])[0][0] == 202


def test_parser_returns_back_to_back_responses_in_order_and_keeps_the_rest() -> None:
    problem = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
    parser = ResponseParser()
    assert parser.feed(ACCEPTED + problem + ACCEPTED[:20]) == [
        (202, b"/api/v1/payments/pay_A30ce1-gUAA", b'{"a"}', False),
        (503, None, b"{}", True),
    ]
    assert parser.feed(ACCEPTED[20:])[0][0] == 202


def test_parser_header_names_are_case_insensitive_and_values_keep_their_case() -> None:
    raw = b"HTTP/1.1 202 Accepted\r\nLOCATION:  /api/v1/payments/pay_AbC\r\nContent-Length: 0\r\n\r\n"
    assert ResponseParser().feed(raw) == [(202, b"/api/v1/payments/pay_AbC", b"", False)]


def test_parser_decodes_chunked_bodies() -> None:
    raw = b"HTTP/1.1 500 Internal Server Error\r\nTransfer-Encoding: chunked\r\n\r\n"
    raw += b"4\r\nabcd\r\n2;x=y\r\nef\r\n0\r\n\r\n"
    parser = ResponseParser()
    assert parser.feed(raw[:-3]) == []
    assert parser.feed(raw[-3:]) == [(500, None, b"abcdef", False)]


@pytest.mark.parametrize(
    "raw",
    [
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 2x2 What\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: many\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\nuntil close",
    ],
)
def test_parser_refuses_what_it_cannot_frame(raw: bytes) -> None:
    with pytest.raises(ProtocolError):
        ResponseParser().feed(raw)
