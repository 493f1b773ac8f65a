"""msgspec encoding and decoding, with decoders cached per type."""

from __future__ import annotations

import re
from functools import cache
from typing import Any, TypeVar

import msgspec

from marketplace_pay.shared.envelope import Envelope, EnvelopeHead, Event
from marketplace_pay.shared.errors import FieldError, ValidationError

T = TypeVar("T")
E = TypeVar("E", bound=Event)

_encoder = msgspec.json.Encoder()


def encode(value: Any) -> bytes:
    return _encoder.encode(value)


@cache
def _decoder(type_: Any) -> msgspec.json.Decoder[Any]:
    return msgspec.json.Decoder(type_)


def decode(raw: bytes | str, type_: type[T]) -> T:
    return _decoder(type_).decode(raw)


def decode_envelope(raw: bytes, event: type[E]) -> Envelope[E]:
    return _decoder(Envelope[event]).decode(raw)  # type: ignore[valid-type]


def decode_head(raw: bytes) -> EnvelopeHead:
    return _decoder(EnvelopeHead).decode(raw)


_MSGSPEC_PATH = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]+)`$")


def decode_error(exc: msgspec.DecodeError | msgspec.ValidationError) -> ValidationError:
    """A client-facing 400 from msgspec's error ("Expected `int` >= 1 - at `$.a[0].b`")."""
    if not isinstance(exc, msgspec.ValidationError):
        return ValidationError("Request body is not valid JSON", errors=[FieldError("body", str(exc))])
    match = _MSGSPEC_PATH.match(str(exc))
    message = match.group("message") if match else str(exc)
    path = (match.group("path") or "") if match else ""
    path = path.lstrip(".")
    missing = _MISSING.match(message)
    if missing:
        path = f"{path}.{missing.group('field')}" if path else missing.group("field")
        message = "is required"
    return ValidationError(f"Invalid request body: {path or 'body'}: {message}", errors=[FieldError(path or "body", message)])
