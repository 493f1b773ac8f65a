"""Reading what a client puts in a request besides its body: query parameters and headers.
Hostile values are 4xx, never 500: every check here refuses before anything converts."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from litestar import Request, Response, route
from litestar.enums import HttpMethod
from litestar.exceptions import HTTPException
from litestar.handlers import HTTPRouteHandler

from marketplace_pay.infra.openapi import IDEMPOTENCY_KEY_PATTERN
from marketplace_pay.shared.errors import FieldError, NotFoundError, ValidationError
from marketplace_pay.shared.ids import InvalidPublicId, decode_public_id


def path_id(value: str, valid: Callable[[str], bool], what: str) -> str:
    """An id from the URL path. One that no resource can have is a 404, like an unknown one; it is
    not echoed, since it may hold anything."""
    if not valid(value):
        raise NotFoundError(f"No such {what}")
    return value


def path_public_id(prefix: str, value: str, what: str) -> int:
    """The internal id a public id (`pay_…`, `po_…`) in the URL path names; 404 when it cannot
    name one (not echoed: it may be anything)."""
    try:
        return decode_public_id(prefix, value)
    except (InvalidPublicId, UnicodeEncodeError):
        raise NotFoundError(f"No such {what}") from None


def query_int(
    request: Request[Any, Any, Any], name: str, *, default: int | None, minimum: int, maximum: int
) -> int | None:
    """An integer query parameter: ASCII digits only (`str.isdigit` also takes "²", which
    `int` refuses, and `int` takes " 5", "+5" and "5_0"), within [minimum, maximum]."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or len(raw) > len(str(maximum)) or not minimum <= int(raw) <= maximum:
        raise ValidationError(
            f"Invalid query parameter {name}",
            errors=[FieldError(name, f"must be an integer from {minimum} to {maximum}")],
        )
    return int(raw)


def query_int_schema(
    name: str, *, minimum: int, maximum: int, description: str, default: int | None = None
) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "integer", "minimum": minimum, "maximum": maximum}
    if default is not None:
        schema["default"] = default
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


def require_json(request: Request[Any, Any, Any]) -> None:
    """A body must be JSON (`application/json` or `application/*+json`; no header means JSON)."""
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if content_type != "application/json" and not (
        content_type.startswith("application/") and content_type.endswith("+json")
    ):
        raise HTTPException(status_code=415, detail="Content-Type must be application/json")


def allow_options(path: str, *methods: str) -> HTTPRouteHandler:
    """The OPTIONS answer for a path served by several handlers. Litestar's automatic one lists
    only the methods of the handler registered first on the path (it keeps the method set of the
    route as it was then), so such a path declares its own; register it before the handlers."""
    allow = ", ".join(sorted({*methods, "OPTIONS"}))

    def options() -> Response[None]:
        return Response(content=None, status_code=204, headers={"Allow": allow})

    return route(path, http_method=[HttpMethod.OPTIONS], include_in_schema=False, sync_to_thread=False)(options)


_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)


def idempotency_key_of(request: Request[Any, Any, Any]) -> str | None:
    """The request's Idempotency-Key header, None without one; 400 when it is malformed."""
    key = request.headers.get("idempotency-key")
    if key is not None and _IDEMPOTENCY_KEY.fullmatch(key) is None:
        raise ValidationError(
            "Invalid Idempotency-Key header",
            errors=[FieldError("Idempotency-Key", "must be 1-255 visible ASCII characters (spaces only inside)")],
        )
    return key


def keyed_response(content: bytes, status: int, location: str, *, replayed: bool) -> Response[Any]:
    """The answer to a request that created a resource (or found it under its Idempotency-Key:
    `replayed`), with its Location."""
    headers = {"Location": location}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return Response(content=content, status_code=status, media_type="application/json", headers=headers)
