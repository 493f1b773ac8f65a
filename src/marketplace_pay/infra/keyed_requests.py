"""Requests made under an Idempotency-Key, as the tables that keep them store them: the key is
held for the length of a transaction while the request is decided, and the first response is kept
with the row it created (`response_status`, `response_body`) to be replayed."""

from __future__ import annotations

import asyncpg


async def hold_key(conn: asyncpg.Connection, kind: str, client_id: str, idempotency_key: str) -> bool:
    """Hold (`kind`, client, key) until the transaction ends; False when another transaction
    holds it — the same request is running (409)."""
    return bool(
        await conn.fetchval(
            "SELECT pg_try_advisory_xact_lock(hashtextextended($1 || chr(31) || $2 || chr(31) || $3, 0))",
            kind,
            client_id,
            idempotency_key,
        )
    )


def kept_response(row: asyncpg.Record) -> tuple[int, bytes] | None:
    """The first response kept with a row, if one was."""
    if row["response_status"] is None:
        return None
    return int(row["response_status"]), bytes(row["response_body"])
