"""What the OpenAPI document says about each operation beyond what Litestar infers from the
handler's signature: the request body (we decode bodies ourselves, strictly: Litestar's own
parsing coerces "5" to 5), the constraints of path, query and header parameters, every error
status an operation can answer with its problem+json body, response headers, links between
operations, and which operations need no token.

The document must say exactly what the server enforces: a client (or a fuzzer) that follows it
is never refused, and one that breaks it is never accepted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
from litestar.openapi.spec import Operation

from marketplace_pay.shared.client_ids import ID_LENGTH_MAX, SELLER_ID_PATTERN
from marketplace_pay.shared.errors import Problem
from marketplace_pay.shared.ids import public_id_pattern

REF = "#/components/schemas/{name}"
PROBLEM_JSON = "application/problem+json"
_components: dict[str, Any] = {}


def _register(type_: type) -> dict[str, Any]:
    (schema,), components = msgspec.json.schema_components([type_], ref_template=REF)
    _components.update(components)
    return schema


_PROBLEM = _register(Problem)

ERROR_DESCRIPTIONS = {
    400: "Invalid request: malformed JSON, a wrong type or a broken constraint (`errors` names the fields)",
    401: "No bearer token, or an invalid or expired one",
    403: "The token lacks the role",
    404: "No such resource",
    409: "Conflict",
    413: "Request body larger than 1 MB",
    415: "Content-Type is not JSON",
    422: "Well-formed, but refers to state that makes it impossible",
    503: "The database or Redis is unavailable; retry after Retry-After seconds",
}
_ERROR_HEADERS = {
    401: {"WWW-Authenticate": {"description": "Bearer challenge", "schema": {"type": "string"}}},
    503: {"Retry-After": {"description": "Seconds to wait", "required": True, "schema": {"type": "string"}}},
}
LOCATION = {"Location": {"description": "The resource's URL", "required": True, "schema": {"type": "string"}}}


def problems(*statuses: int, **descriptions: str) -> dict[int, str]:
    """The error responses of an operation; `descriptions` (`s409="..."`) replace the defaults."""
    return {s: descriptions.get(f"s{s}", ERROR_DESCRIPTIONS[s]) for s in statuses}


def string_schema(pattern: str, *, max_length: int, description: str, min_length: int = 1) -> dict[str, Any]:
    return {
        "type": "string",
        "minLength": min_length,
        "maxLength": max_length,
        "pattern": pattern,
        "description": description,
    }


def seller_id_schema() -> dict[str, Any]:
    """A seller id in a path. The reserved names are not excluded here: they are valid path
    segments (`/sellers/me/balance` is the caller's own balance), they just name no seller."""
    return string_schema(SELLER_ID_PATTERN, max_length=ID_LENGTH_MAX, description="A seller id")


def public_id_schema(prefix: str, description: str) -> dict[str, Any]:
    """A public id in a path: anything else cannot name a resource (404)."""
    length = len(prefix) + 11
    return string_schema(public_id_pattern(prefix), min_length=length, max_length=length, description=description)


def documented(
    *,
    body: type | None = None,
    body_example: Any = None,
    body_required: bool = True,
    path: Mapping[str, dict[str, Any]] | None = None,
    query: Sequence[dict[str, Any]] = (),
    headers: Sequence[dict[str, Any]] = (),
    errors: Mapping[int, str] | None = None,
    response_headers: Mapping[int, Mapping[str, dict[str, Any]]] | None = None,
    links: Mapping[int, Mapping[str, dict[str, Any]]] | None = None,
    public: bool = False,
) -> type[Operation]:
    """An Operation class (for a route's `operation_class=`) that completes Litestar's document.

    body_required: False when the body may be left out;
    path: parameter name → its schema (Litestar documents path parameters as any string);
    query/headers: whole Parameter objects; errors: status → description (problem+json);
    response_headers/links: per status; public: no token needed (`security: []`)."""
    body_schema = _register(body) if body is not None else None

    class _Documented(Operation):
        def to_schema(self) -> dict[str, Any]:
            result = super().to_schema()
            if body_schema is not None:
                media: dict[str, Any] = {"schema": body_schema}
                if body_example is not None:
                    media["examples"] = {"example": {"value": body_example}}
                result["requestBody"] = {"required": body_required, "content": {"application/json": media}}
            parameters = [dict(p) for p in result.get("parameters") or ()]
            for parameter in parameters:
                if parameter.get("in") == "path" and path and parameter["name"] in path:
                    schema = dict(path[parameter["name"]])
                    parameter["description"] = schema.pop("description", parameter.get("description"))
                    parameter["schema"] = schema
            parameters += [dict(p) for p in (*query, *headers)]
            if parameters:
                result["parameters"] = parameters
            responses = result.setdefault("responses", {})
            # Litestar adds a generic 400 in its own (non-problem) shape to handlers with parameters
            responses.pop("400", None)
            for status, description in (errors or {}).items():
                responses[str(status)] = {
                    "description": description,
                    "content": {PROBLEM_JSON: {"schema": _PROBLEM}},
                    **({"headers": _ERROR_HEADERS[status]} if status in _ERROR_HEADERS else {}),
                }
            for status, extra in (response_headers or {}).items():
                responses[str(status)].setdefault("headers", {}).update(extra)
            for status, named in (links or {}).items():
                responses[str(status)].setdefault("links", {}).update(named)
            if public:
                result["security"] = []
            return result

    return _Documented


def component_schemas() -> dict[str, Any]:
    return dict(_components)


# Visible ASCII, spaces inside only (HTTP strips them at the ends): a header value is bytes, and
# anything else arrives as whatever the server's decoder made of it.
IDEMPOTENCY_KEY_PATTERN = "^[!-~](?:[ -~]{0,253}[!-~])?$"
IDEMPOTENCY_KEY_HEADER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Replays the first response for the same key and body; scoped to the calling client",
    "schema": string_schema(IDEMPOTENCY_KEY_PATTERN, max_length=255, description="visible ASCII, spaces only inside"),
}
REPLAYED = {
    "Idempotent-Replayed": {"description": "true when this is a replay", "schema": {"type": "string", "enum": ["true"]}}
}
