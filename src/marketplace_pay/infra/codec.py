"""msgspec encoding and decoding, with decoders cached per type."""

from __future__ import annotations

import re
from typing import Any, TypeVar, cast

import msgspec

from marketplace_pay.shared.envelope import Envelope, Event
from marketplace_pay.shared.errors import FieldError, ValidationError

T = TypeVar("T")
E = TypeVar("E", bound=Event)

_encoder = msgspec.json.Encoder()


def encode(value: Any) -> bytes:
    return _encoder.encode(value)


_DECODERS: dict[Any, msgspec.json.Decoder[Any]] = {}


def _decoder(type_: Any) -> msgspec.json.Decoder[Any]:
    """One decoder per type, built once."""
    decoder = _DECODERS.get(type_)
    if decoder is None:
        decoder = _DECODERS[type_] = msgspec.json.Decoder(type_)
    return decoder


def decode(raw: bytes | str, type_: type[T]) -> T:
    return cast(T, _decoder(type_).decode(raw))


def decode_envelope(raw: bytes, event: type[E]) -> Envelope[E]:
    return cast("Envelope[E]", _decoder(Envelope[event]).decode(raw))  # type: ignore[valid-type]


_MSGSPEC_PATH = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]+)`$")
# what a request struct's __post_init__ raises (see shared/client_ids.py): "<field>: <rule>"
_FIELD_RULE = re.compile(r"^(?P<field>[A-Za-z][A-Za-z0-9]*): (?P<message>.+)$", re.S)


def decode_error(exc: msgspec.DecodeError | msgspec.ValidationError) -> ValidationError:
    """A client-facing 400 from msgspec's error ("Expected `int` >= 1 - at `$.a[0].b`")."""
    if not isinstance(exc, msgspec.ValidationError):
        return ValidationError("Request body is not valid JSON", errors=[FieldError("body", str(exc))])
    match = _MSGSPEC_PATH.match(str(exc))
    message = match.group("message") if match else str(exc)
    path = (match.group("path") or "") if match else ""
    path = path.lstrip(".")
    missing = _MISSING.match(message)
    rule = _FIELD_RULE.match(message)
    if missing:
        path = f"{path}.{missing.group('field')}" if path else missing.group("field")
        message = "is required"
    elif rule:
        path = f"{path}.{rule.group('field')}" if path else rule.group("field")
        message = rule.group("message")
    return ValidationError(
        f"Invalid request body: {path or 'body'}: {message}", errors=[FieldError(path or "body", message)]
    )


JSON_DEPTH_MAX = 32  # our request bodies nest 4 levels; nothing a client sends needs 32
_JSON_STRING = re.compile(rb'"[^"\\]*+(?:\\.[^"\\]*+)*+"', re.S)
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")


def nested_too_deep(raw: bytes, depth_max: int = JSON_DEPTH_MAX) -> bool:
    """Whether a JSON text nests arrays/objects deeper than `depth_max`. Decoders recurse per
    level (msgspec too, even through fields it skips), so depth must be bounded before decoding.
    Cheap for ordinary bodies: fewer brackets than the limit cannot nest deeper than it."""
    if raw.count(b"[") + raw.count(b"{") <= depth_max:
        return False
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKET)
    for _ in range(depth_max):  # each pass removes the innermost level
        shorter = brackets.replace(b"[]", b"").replace(b"{}", b"")
        if len(shorter) == len(brackets):
            return False  # unbalanced: malformed, which the decoder reports
        brackets = shorter
    return len(brackets.replace(b"[]", b"").replace(b"{}", b"")) < len(brackets)


def _whole_numbers_as_int(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_whole_numbers_as_int(v) for v in value]
    if isinstance(value, dict):
        return {k: _whole_numbers_as_int(v) for k, v in value.items()}
    return value


def decode_body(raw: bytes, type_: type[T]) -> T:
    """A request body decoded strictly into `type_`, or a 400 ValidationError: malformed JSON,
    invalid UTF-8, nesting deeper than JSON_DEPTH_MAX, a wrong type ("5" is not a number) or a
    broken constraint. JSON has one number type, so `3000.0` is the integer 3000, as JSON Schema
    says too; `30.5` is no integer."""
    if nested_too_deep(raw):
        raise ValidationError(
            "Request body is nested too deeply",
            errors=[FieldError("body", f"arrays and objects may nest at most {JSON_DEPTH_MAX} levels")],
        )
    try:
        return cast(T, _decoder(type_).decode(raw))
    except msgspec.ValidationError as exc:
        # Perhaps a whole number spelled as a float; only refused bodies pay for this second look.
        # It also tells a malformed text the typed decoder stopped reading early ("4,x") from a
        # well-formed one of the wrong shape.
        try:
            loose = _decode_loose(raw)
            return msgspec.convert(_whole_numbers_as_int(loose), type_)
        except msgspec.ValidationError:
            raise decode_error(exc) from None
    except msgspec.DecodeError as exc:
        raise decode_error(exc) from None
    except UnicodeDecodeError:
        raise _not_utf8() from None


def _not_utf8() -> ValidationError:
    return ValidationError(
        "Request body is not valid JSON", errors=[FieldError("body", "a string holds bytes that are not UTF-8")]
    )


def _decode_loose(raw: bytes) -> Any:
    try:
        return msgspec.json.decode(raw)
    except msgspec.ValidationError:  # a DecodeError too ("Number out of range"): the caller's
        raise
    except msgspec.DecodeError as exc:
        raise decode_error(exc) from None
    except UnicodeDecodeError:  # msgspec lets this one through
        raise _not_utf8() from None
