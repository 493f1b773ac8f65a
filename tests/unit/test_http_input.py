"""What the HTTP edge accepts from a client, as tables: identifiers, JSON bodies, traceparent."""

from __future__ import annotations

import re

import msgspec
import pytest

from marketplace_pay.entrypoints.http import incoming_traceparent
from marketplace_pay.infra.codec import JSON_DEPTH_MAX, decode_body, nested_too_deep
from marketplace_pay.ledger.domain.accounts import ACCOUNT_CODE_PATTERN, is_account_code
from marketplace_pay.shared.client_ids import ID_PATTERN, SELLER_ID_PATTERN, is_client_id, is_seller_id
from marketplace_pay.shared.errors import ValidationError

#   value                      client id  seller id
IDS = [
    ("BUYER-1", True, True),
    ("SELLER-Ωμέγα", True, True),
    ("a b", True, False),  # blanks inside: fine for buyers and orders only
    ("a/b", True, False),  # a seller id is one path segment
    ("x" * 128, True, True),
    ("x" * 129, False, False),
    ("", False, False),
    ("   ", False, False),
    ("\u3000\u00a0", False, False),  # ideographic and no-break spaces are blank
    ("\ufeff", False, False),  # so is a lone BOM
    ("a\x00b", False, False),  # PostgreSQL text cannot hold NUL
    ("a\x1fb", False, False),
    ("a\x7fb", False, False),
    ("a\x85b", False, False),  # C1 controls too
    ("ORDER-1\n", False, False),  # Python's `$` would let this one through
    ("\t", False, False),
    ("a\ud800", False, False),  # unpaired surrogate: not encodable as UTF-8
    ("\udc00b", False, False),
    ("😀", True, True),  # a pair is one character, not a surrogate
]


@pytest.mark.parametrize(("value", "client", "seller"), IDS)
def test_identifiers(value: str, client: bool, seller: bool) -> None:
    assert is_client_id(value) is client
    assert is_seller_id(value) is seller
    # the published patterns say the same (surrogates aside: no JSON text can carry them)
    if not any("\ud800" <= c <= "\udfff" for c in value) and len(value) <= 128:
        assert (re.fullmatch(ID_PATTERN, value) is not None) is client
        assert (re.fullmatch(SELLER_ID_PATTERN, value) is not None) is seller


@pytest.mark.parametrize(
    ("code", "valid"),
    [
        ("MERCHANT_PAYABLE.SELLER-111.EUR", True),
        ("PSP_RECEIVABLES.GLOBAL.GBP", True),
        ("MERCHANT_PAYABLE.a.b.EUR", True),
        ("MERCHANT_PAYABLE..EUR", False),
        ("MERCHANT_PAYABLE.a/b.EUR", False),
        ("MERCHANT_PAYABLE.a\x00.EUR", False),
        ("MERCHANT_PAYABLE.a.XYZ", False),
        ("NOPE.a.EUR", False),
        ("MERCHANT_PAYABLE.\ud800.EUR", False),
    ],
)
def test_account_codes(code: str, valid: bool) -> None:
    assert is_account_code(code) is valid
    if "\ud800" not in code:
        assert (re.fullmatch(ACCOUNT_CODE_PATTERN, code) is not None) is valid


class Amount(msgspec.Struct):
    quantity: int


class Body(msgspec.Struct):
    name: str
    amounts: list[Amount]


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"[" * 3000 + b"]" * 3000, "body"),
        (b'{"x": ' + b"[" * 3000 + b"]" * 3000 + b', "name": "n", "amounts": []}', "body"),
        (b'{"name": "\xff", "amounts": []}', "body"),
        (b'{"name": "\xed\xa0\x80", "amounts": []}', "body"),
        (b'{"name": "\\ud800", "amounts": []}', "body"),
        (b"4\x18\xffX", "body"),
        (b'{"name": "n", "amounts": [{"quantity": 1.5}]}', "amounts[0].quantity"),
        (b'{"name": "n", "amounts": [{"quantity": 1e400}]}', "amounts[0].quantity"),
        (b'{"name": "n", "amounts": [{"quantity": "1"}]}', "amounts[0].quantity"),
        (b'{"name": "n"}', "amounts"),
    ],
)
def test_bodies_that_are_refused(raw: bytes, field: str) -> None:
    with pytest.raises(ValidationError) as refused:
        decode_body(raw, Body)
    assert [e.field for e in refused.value.errors] == [field]


def test_whole_numbers_written_as_floats_are_integers() -> None:
    body = decode_body(b'{"name": "n", "amounts": [{"quantity": 3000.0}, {"quantity": 2e3}]}', Body)
    assert [a.quantity for a in body.amounts] == [3000, 2000]
    assert all(type(a.quantity) is int for a in body.amounts)


def test_nesting_up_to_the_limit_is_read_and_beyond_it_is_not() -> None:
    def nested(depth: int) -> bytes:
        return b"[" * depth + b"]" * depth

    assert not nested_too_deep(nested(JSON_DEPTH_MAX))
    assert nested_too_deep(nested(JSON_DEPTH_MAX + 1))
    assert not nested_too_deep(b'["' + b"[" * 100 + b'"]')  # brackets inside strings do not nest
    assert not nested_too_deep(b"[" + b'{"a": [1, 2]}, ' * 50 + b"1]")  # wide is not deep
    assert not nested_too_deep(b"[" * 100)  # unbalanced: the decoder reports it as malformed


@pytest.mark.parametrize(
    ("header", "parent"),
    [
        (
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        (
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future",
        ),
        (b"\xff\xfe", None),
        (b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", None),  # upper case is invalid
        (b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None),
        (b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7", None),
        (b"00-" + b"a" * 600, None),
        (b"", None),
    ],
)
def test_traceparent(header: bytes, parent: str | None) -> None:
    assert incoming_traceparent([(b"host", b"x"), (b"traceparent", header)]) == parent


def test_two_traceparents_are_none() -> None:
    tp = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert incoming_traceparent([(b"traceparent", tp), (b"traceparent", tp)]) is None
    assert incoming_traceparent(None) is None
