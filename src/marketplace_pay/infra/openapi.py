"""OpenAPI for endpoints that decode their body themselves (strictly: Litestar's own body
parsing coerces "5" to 5). The request schema comes from msgspec and is added to the spec."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar.openapi.spec import Operation

REF = "#/components/schemas/{name}"
_components: dict[str, Any] = {}


def json_body(type_: type) -> type[Operation]:
    """An Operation class whose requestBody is `type_` (registered in `component_schemas()`)."""
    (schema,), components = msgspec.json.schema_components([type_], ref_template=REF)
    _components.update(components)

    class _WithBody(Operation):
        def to_schema(self) -> dict[str, Any]:
            result = super().to_schema()
            result["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
            return result

    return _WithBody


def component_schemas() -> dict[str, Any]:
    return dict(_components)
