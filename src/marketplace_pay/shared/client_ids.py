"""Identifiers that clients choose (buyer, order and seller ids) and every id that reaches us in
a URL path. One rule for all of them, written once as a pattern that the OpenAPI document
publishes and the server enforces as it reads it (the whole value must match):

- 1–128 characters, not all blank;
- no control characters (C0, DEL, C1): PostgreSQL text cannot hold NUL, and the others only
  arrive by mistake or malice;
- no unpaired UTF-16 surrogates: they cannot be encoded as UTF-8, so they could be neither
  stored nor logged. Valid JSON cannot carry them, but a path or header decoder might.

A seller id is also a URL path segment and the middle of its account code
(`MERCHANT_PAYABLE.<sellerId>.<CCY>`), so it has no blanks at all and no `/`, and it is none of
the names the routes and the ledger reserve.

The character classes are spelled out instead of using `\\s`, which means different things in
Python and in JSON Schema's (ECMA-262) regex dialect.
"""

from __future__ import annotations

import re
from typing import Annotated

import msgspec

ID_LENGTH_MAX = 128
_CONTROL = r"\x00-\x1f\x7f-\x9f"
# What Python or ECMA-262 call whitespace, controls aside.
_BLANK = r" \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
ID_PATTERN = f"^[{_BLANK}]*[^{_CONTROL}{_BLANK}][^{_CONTROL}]*$"
SELLER_ID_CHAR = f"[^{_CONTROL}{_BLANK}/]"
SELLER_ID_PATTERN = f"^{SELLER_ID_CHAR}+$"
# GLOBAL owns the platform accounts, `me` is /sellers/me; `.` and `..` are path segments that
# clients rewrite before sending, so such a seller could never be read back.
RESERVED_SELLER_IDS = ("GLOBAL", "me", ".", "..")

ID_RULE = "must be 1-128 characters, not blank, without control characters"
SELLER_ID_RULE = "must be 1-128 characters without whitespace, control characters or '/'"

_ID = re.compile(ID_PATTERN)
_SELLER_ID = re.compile(SELLER_ID_PATTERN)
_SURROGATE = re.compile("[\ud800-\udfff]")

ClientId = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=ID_LENGTH_MAX,
        # documented here, enforced by `is_client_id` (a `pattern=` would be checked with
        # Python's `$`, which also matches before a trailing newline)
        extra_json_schema={"pattern": ID_PATTERN},
        description="1-128 characters, not blank, no control characters",
    ),
]
SellerId = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=ID_LENGTH_MAX,
        extra_json_schema={"pattern": SELLER_ID_PATTERN, "not": {"enum": list(RESERVED_SELLER_IDS)}},
        description="1-128 characters without whitespace, control characters or '/'; not GLOBAL or me",
    ),
]


def encodable(text: str) -> bool:
    """No unpaired surrogate: the text can be written as UTF-8."""
    return text.isascii() or _SURROGATE.search(text) is None


def is_client_id(text: str) -> bool:
    return len(text) <= ID_LENGTH_MAX and _ID.fullmatch(text) is not None and encodable(text)


def is_seller_id(text: str) -> bool:
    """A seller id that could exist (reserved names included: they may be asked for, never created)."""
    return len(text) <= ID_LENGTH_MAX and _SELLER_ID.fullmatch(text) is not None and encodable(text)


def check_client_id(field: str, text: str) -> None:
    """For a request struct's `__post_init__`: msgspec turns the ValueError into a 400 whose
    message starts with the field name."""
    if not is_client_id(text):
        raise ValueError(f"{field}: {ID_RULE}")


def check_seller_id(field: str, text: str) -> None:
    if not is_seller_id(text):
        raise ValueError(f"{field}: {SELLER_ID_RULE}")
