"""The one error map: every error is RFC 9457 application/problem+json.

    {"type", "title", "status", "detail", "instance", "traceId", "errors": [{"field", "message"}]}

Client mistakes are 4xx, never 500; an unavailable database or Redis is 503 with Retry-After;
anything unexpected is a 500 whose body says nothing about internals.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any
from urllib.parse import quote_from_bytes

import msgspec
from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
    ValidationException,
)

from marketplace_pay.infra.failures import UNAVAILABLE
from marketplace_pay.infra.telemetry import current_ids
from marketplace_pay.shared.errors import (
    ConflictError,
    DomainError,
    FieldError,
    NotFoundError,
    Problem,
    UnprocessableError,
    ValidationError,
)

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "https://marketplace-pay.dev/problems/"


def _text(text: str) -> str:
    """Text that can be encoded as UTF-8 whatever a client smuggled into it (a lone surrogate
    would make the encoder fail inside the error handler)."""
    return text if text.isascii() else text.encode("utf-8", "backslashreplace").decode("utf-8")


def instance_of(request: Request[Any, Any, Any]) -> str:
    """The request's path as the client sent it (percent-encoded), a URI reference as RFC 9457
    wants; the decoded path may hold anything."""
    raw = request.scope.get("raw_path") or request.scope["path"].encode("utf-8", "surrogatepass")
    return quote_from_bytes(raw.split(b"?", 1)[0], safe="/%:@!$&'()*+,;=-._~")


def problem(
    request: Request[Any, Any, Any],
    status: int,
    slug: str,
    title: str,
    detail: str,
    *,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
) -> Response[bytes]:
    body = Problem(
        type=PROBLEM_BASE + slug,
        title=_text(title),
        status=status,
        detail=_text(detail),
        instance=instance_of(request),
        traceId=current_ids()[0],
        errors=[FieldError(_text(e.field), _text(e.message)) for e in errors] if errors else None,
    )
    return Response(
        content=msgspec.json.encode(body),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


_DOMAIN = {
    ValidationError: (400, "validation-error"),
    UnprocessableError: (422, "unprocessable"),
    NotFoundError: (404, "not-found"),
    ConflictError: (409, "conflict"),
}


def _domain(request: Request[Any, Any, Any], exc: DomainError) -> Response[bytes]:
    for cls, (status, slug) in _DOMAIN.items():
        if isinstance(exc, cls):
            return problem(request, status, slug, exc.title, exc.detail, errors=exc.errors or None)
    return _unexpected(request, exc)


def _http(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    status = exc.status_code
    headers = dict(exc.headers or {})
    if isinstance(exc, NotAuthorizedException):
        headers["WWW-Authenticate"] = 'Bearer realm="marketplace-pay"'
        return problem(request, 401, "unauthorized", "Unauthorized", exc.detail, headers=headers)
    if isinstance(exc, PermissionDeniedException):
        return problem(request, 403, "forbidden", "Forbidden", exc.detail)
    if isinstance(exc, NotFoundException):
        return problem(request, 404, "not-found", "Not found", "No such resource")
    if isinstance(exc, MethodNotAllowedException):
        return problem(request, 405, "method-not-allowed", "Method not allowed", exc.detail, headers=headers)
    if isinstance(exc, ValidationException):
        errors = [
            FieldError(str(e.get("key") or "request"), str(e.get("message")))
            for e in (exc.extra or [])
            if isinstance(e, dict)
        ]
        return problem(request, 400, "validation-error", "Invalid request", exc.detail, errors=errors or None)
    if 400 <= status < 500:
        title = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Client error"
        return problem(request, status, f"http-{status}", title, exc.detail or title, headers=headers)
    return _unexpected(request, exc)


def _unavailable(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.warning("dependency unavailable", extra={"error": repr(exc), "path": instance_of(request)})
    return problem(
        request,
        503,
        "unavailable",
        "Service unavailable",
        "A backing service is unavailable; retry shortly",
        headers={"Retry-After": "1"},
    )


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.error("unhandled error", exc_info=exc, extra={"path": instance_of(request)})
    return problem(request, 500, "internal", "Internal error", "An unexpected error occurred")


def _any(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    if isinstance(exc, UNAVAILABLE):
        return _unavailable(request, exc)
    return _unexpected(request, exc)


EXCEPTION_HANDLERS: dict[type[Exception], Any] = {
    DomainError: _domain,
    HTTPException: _http,
    Exception: _any,
}
