"""Shared fixtures. Integration tests get real PostgreSQL/Redis (see services.py), a database
made for this run from a migrated template (dropped at the end), and a Redis key prefix of
their own (deleted at the end)."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis.asyncio as aioredis

from marketplace_pay.infra.db import migrate
from marketplace_pay.settings import Settings
from tests import services

RUN = f"{os.getpid()}_{secrets.token_hex(3)}"
JWT_SECRET = secrets.token_urlsafe(48)  # what the service accepts: a guessable one is refused
TEMPLATE = f"mp_tpl_{RUN}"


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    with services.postgres_server() as dsn:
        yield dsn


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with services.redis_server() as url:
        yield url


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    with services.kafka_broker() as address:
        yield address


@pytest.fixture(scope="session")
async def db_template(pg_server: str) -> AsyncIterator[str]:
    admin = await asyncpg.connect(pg_server)
    try:
        await admin.execute(f'CREATE DATABASE "{TEMPLATE}"')
        conn = await asyncpg.connect(with_database(pg_server, TEMPLATE))
        try:
            await migrate(conn)
        finally:
            await conn.close()
        yield TEMPLATE
    finally:
        await _drop(admin, TEMPLATE)
        await admin.close()


async def _drop(admin: asyncpg.Connection, name: str) -> None:
    await admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", name
    )
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')


class DatabaseFactory:
    def __init__(self, server: str, template: str) -> None:
        self.server = server
        self.template = template
        self.created: list[str] = []

    async def create(self) -> str:
        name = f"mp_test_{RUN}_{len(self.created)}"
        admin = await asyncpg.connect(self.server)
        try:
            await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"')
        finally:
            await admin.close()
        self.created.append(name)
        return with_database(self.server, name)

    async def drop_all(self) -> None:
        admin = await asyncpg.connect(self.server)
        try:
            for name in self.created:
                await _drop(admin, name)
        finally:
            await admin.close()


@pytest.fixture(scope="session")
async def databases(pg_server: str, db_template: str) -> AsyncIterator[DatabaseFactory]:
    factory = DatabaseFactory(pg_server, db_template)
    yield factory
    await factory.drop_all()


@pytest.fixture(scope="session")
async def database(databases: DatabaseFactory) -> str:
    """The run's shared database: tests using it keep to their own ids."""
    return await databases.create()


@pytest.fixture
async def fresh_database(databases: DatabaseFactory) -> str:
    """A database of this test's own, for tests that count rows or kill processes."""
    return await databases.create()


@pytest.fixture(scope="session")
async def redis_prefix(redis_url: str) -> AsyncIterator[str]:
    prefix = f"mptest:{RUN}:"
    yield prefix
    client = aioredis.Redis.from_url(redis_url)
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


def make_settings(dsn: str, redis_url: str, redis_prefix: str, data_dir: str, **overrides: object) -> Settings:
    base = Settings().with_(
        database_url=dsn,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        data_dir=Path(data_dir),
        instance_name=f"test-{RUN}-{secrets.token_hex(2)}",
        jwt_secret=JWT_SECRET,
        psp_scenario="BEST_PSP_EVER",
        retry_base_ms=20,
        retry_cap_ms=200,
        retry_poll_ms=20,
        pending_auth_check_after_ms=200,
        pending_auth_poll_ms=50,
        outbox_poll_ms=50,
        log_format="text",
        shutdown_grace_s=5,
    )
    return base.with_(**overrides)


@pytest.fixture
def settings_for(redis_url: str, redis_prefix: str, tmp_path: object):
    """settings_for(dsn, **overrides) -> Settings pointing at the test services."""

    def build(dsn: str, **overrides: object) -> Settings:
        # a Redis namespace per test (each has its own database), under the run's prefix
        prefix = f"{redis_prefix}{secrets.token_hex(3)}:"
        return make_settings(dsn, redis_url, prefix, str(tmp_path), **overrides)

    return build
