"""Domain errors. The HTTP edge maps each subclass to one problem+json status (one error map)."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec


class FieldError(msgspec.Struct, frozen=True):
    field: str
    message: str


class Problem(msgspec.Struct, omit_defaults=True):
    """How the HTTP edge reports every error (RFC 9457 application/problem+json)."""

    type: str
    title: str
    status: int
    detail: str
    instance: str
    traceId: str  # noqa: N815 - wire name
    errors: list[FieldError] | None = None


class DomainError(Exception):
    """Base class. `detail` is safe to show to the client."""

    title = "Request failed"

    def __init__(self, detail: str, *, errors: Sequence[FieldError] = ()) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = list(errors)


class ValidationError(DomainError):
    """The request is malformed or breaks a rule that needs no stored state (400)."""

    title = "Invalid request"


class UnprocessableError(DomainError):
    """The request is well-formed but refers to state that makes it impossible (422)."""

    title = "Unprocessable request"


class NotFoundError(DomainError):
    title = "Not found"


class ConflictError(DomainError):
    """The same thing is already being done (409)."""

    title = "Conflict"


class InvariantViolation(DomainError):
    """A state transition the domain refuses. Reaching the edge means a bug, not a client mistake."""

    title = "Invariant violated"
