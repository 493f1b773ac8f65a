"""PostgreSQL: the connection pool and the migration runner."""

from __future__ import annotations

import hashlib
import logging
import re
from importlib import resources
from pathlib import Path

import asyncpg
import msgspec

log = logging.getLogger(__name__)

MIGRATIONS_LOCK = 0x4D50_4D49  # "MPMI"
_MIGRATION_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda value: msgspec.json.encode(value).decode(),
        decoder=msgspec.json.decode,
        schema="pg_catalog",
        format="text",
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Released connections skip asyncpg's default reset (`pg_advisory_unlock_all(); CLOSE ALL;
    UNLISTEN *; RESET ALL`, one more round trip per transaction). Pooled connections keep no
    session state: settings are `SET LOCAL`, LISTEN lives on `SessionLocks`' own connection, and
    the one session lock taken on pooled connections (`pooled_session_lock`) terminates its
    connection if it cannot confirm the unlock. asyncpg still rolls back an open transaction."""


async def create_pool(dsn: str, *, min_size: int, max_size: int, application_name: str) -> asyncpg.Pool:
    server_settings = {"application_name": application_name}
    return await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        reset=_keep_session,
        command_timeout=30,
        server_settings=server_settings,
    )


def migrations_dir() -> Path:
    """`db/` of the source tree (editable installs), else the copy packaged in the wheel."""
    source = Path(__file__).resolve().parents[3] / "db"
    if source.is_dir():
        return source
    packaged = resources.files("marketplace_pay") / "_migrations"
    return Path(str(packaged))


class Migration(msgspec.Struct, frozen=True):
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(directory: Path | None = None) -> list[Migration]:
    directory = directory or migrations_dir()
    found = []
    for path in sorted(directory.iterdir()):
        match = _MIGRATION_NAME.match(path.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), path.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration numbers in {directory}")
    return found


class MigrationError(RuntimeError):
    pass


async def migrate(conn: asyncpg.Connection, migrations: list[Migration] | None = None) -> list[str]:
    """Apply pending migrations, each in its own transaction, under an advisory lock so that
    several processes starting together apply each migration once. Returns the names applied.
    Refuses to run if an applied migration's file was changed since."""
    migrations = load_migrations() if migrations is None else migrations
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATIONS_LOCK)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        applied = {r["version"]: r["checksum"] for r in await conn.fetch("SELECT version, checksum FROM schema_migrations")}
        done = []
        for migration in migrations:
            if migration.version in applied:
                if applied[migration.version] != migration.checksum:
                    raise MigrationError(
                        f"migration {migration.version:03d}_{migration.name} changed after it was applied"
                    )
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            log.info("applied migration", extra={"migration": f"{migration.version:03d}_{migration.name}"})
            done.append(f"{migration.version:03d}_{migration.name}")
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATIONS_LOCK)


VACUUM_TIMEOUT_S = 1800  # the pool's command timeout (30 s) would cancel it on a bloated table

# Tables rewritten all day (status rows, cursors) and the insert-only ones whose statistics the
# planner needs (without them it guesses, and a guess once hashed the whole ledger).
CHURNING_TABLES = (
    "outbox",
    "outbox_cursors",
    "payments",
    "payment_orders",
    "idempotency_responses",
    "account_balances",
    "balance_horizon",
    "instance_leases",
    "journal_entries",
    "postings",
)


async def vacuum_if_autovacuum_off(conn: asyncpg.Connection, tables: tuple[str, ...] = CHURNING_TABLES) -> list[str]:
    """VACUUM (ANALYZE) the service's tables when the server does not (autovacuum off, as on
    some development and CI machines): otherwise every claim, status change and pruned row
    leaves a dead tuple behind for good, the queue tables bloat, and queries slow down as they
    grow. Returns the tables vacuumed; none when autovacuum is on (migration 008 tunes it for
    the queue tables). Must run outside a transaction."""
    if await conn.fetchval("SELECT current_setting('autovacuum')::boolean"):
        return []
    await conn.execute(f"VACUUM (ANALYZE, SKIP_LOCKED) {', '.join(tables)}", timeout=VACUUM_TIMEOUT_S)
    return list(tables)
