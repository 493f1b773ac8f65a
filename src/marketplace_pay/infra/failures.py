"""Which failures are the world's and not ours: a backing service that is down or busy.

`UNAVAILABLE`: PostgreSQL or Redis cannot be reached, or this process lost its id lease — an
HTTP request gets 503 with Retry-After. `TRANSIENT`: those, plus what a database says when two
transactions collided (serialization failure, deadlock, lock timeout) — a handler or a job
simply tries again, without counting an attempt towards dead-lettering."""

from __future__ import annotations

import asyncpg
import redis.exceptions

from marketplace_pay.infra.locks import IdsUnavailable

UNAVAILABLE: tuple[type[Exception], ...] = (
    OSError,  # ConnectionError and TimeoutError are OSErrors
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.TooManyConnectionsError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.QueryCanceledError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    IdsUnavailable,
)

TRANSIENT: tuple[type[Exception], ...] = (
    *UNAVAILABLE,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    asyncpg.LockNotAvailableError,
    redis.exceptions.BusyLoadingError,
)


class TransientError(Exception):
    """Raise from a handler to ask for a retry without counting an attempt."""


def is_transient(exc: BaseException) -> bool:
    return isinstance(exc, (TransientError, *TRANSIENT))
