"""The one error map: every error is RFC 9457 application/problem+json (SPEC §3.2).

    {"type", "title", "status", "detail", "instance", "traceId", "errors": [{"field", "message"}]}

Client mistakes are 4xx, never 500; an unavailable database or Redis is 503 with Retry-After;
anything unexpected is a 500 whose body says nothing about internals.
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
import msgspec
import redis.exceptions
from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    MethodNotAllowedException,
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
    ValidationException,
)

from marketplace_pay.infra.locks import IdsUnavailable
from marketplace_pay.infra.telemetry import current_ids
from marketplace_pay.shared.errors import (
    ConflictError,
    DomainError,
    FieldError,
    NotFoundError,
    UnprocessableError,
    ValidationError,
)

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "https://marketplace-pay.dev/problems/"


class Problem(msgspec.Struct, omit_defaults=True):
    type: str
    title: str
    status: int
    detail: str
    instance: str
    traceId: str  # noqa: N815 - wire name
    errors: list[FieldError] | None = None


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
        title=title,
        status=status,
        detail=detail,
        instance=request.url.path,
        traceId=current_ids()[0],
        errors=errors,
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
        return problem(request, status, f"http-{status}", exc.detail or "Client error", exc.detail, headers=headers)
    return _unexpected(request, exc)


def _unavailable(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.warning("dependency unavailable", extra={"error": repr(exc), "path": request.url.path})
    return problem(
        request,
        503,
        "unavailable",
        "Service unavailable",
        "A backing service is unavailable; retry shortly",
        headers={"Retry-After": "1"},
    )


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    log.error("unhandled error", exc_info=exc, extra={"path": request.url.path})
    return problem(request, 500, "internal", "Internal error", "An unexpected error occurred")


def _any(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    if isinstance(exc, UNAVAILABLE):
        return _unavailable(request, exc)
    return _unexpected(request, exc)


UNAVAILABLE: tuple[type[Exception], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.TooManyConnectionsError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.QueryCanceledError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    ConnectionError,
    OSError,
    TimeoutError,
    IdsUnavailable,
)

EXCEPTION_HANDLERS: dict[type[Exception], Any] = {
    DomainError: _domain,
    HTTPException: _http,
    Exception: _any,
}
