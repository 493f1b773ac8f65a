"""PostgreSQL: the connection pool and the migration runner."""

from __future__ import annotations

import contextlib
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


_SQL_COMMENT = re.compile(r"--[^\n]*")

# (checksum of the whole file text, checksum of its statements) of the migrations as they were
# when checksums still covered comments: a database migrated then is recognised — if the
# statements are still the same — and its checksums are brought up to date.
_TEXT_CHECKSUMS = {
    1: (
        "e7032f5fc7705f2f3b4491b918916b5efd132f9c18f875c37ffcb6bfc5d3b9af",
        "3047b8c7767fe7c875fa77b2c6fac95dc27e6e0fe2abcd4b9c965e185eae4dbb",
    ),
    2: (
        "e7d1d5092a18952c13b1dda228b805829164bb5228d765adb9ed5ea653e57b77",
        "41644150f5d2083a1d951e699bed0bf2a8d3838395bf0b23d8fd1ac00653af95",
    ),
    3: (
        "91383e0aae84725470ee1ca44aab03d8813b57d9f2762012eb25af4426381cec",
        "17cd362f58f52afe7c205bae02f316998b5cd4faf809ba6aefb74ad2baef4e38",
    ),
    4: (
        "3cb1fc643f53713b731fd7f77f7e2cfa16393d9011cc9d7094d83a10f578f2f3",
        "2d84bece953af30d50657c664b9dafeeec3a8ed19da2cf490d74e9dca8c2cf77",
    ),
    5: (
        "24f9f08fb602e8594807f4e5ab790451ee8223fbfb6c9e101dd0b339bc48d8de",
        "0e5cea049f7fd81c94b1b09f6858b7cf86fe7c5481b5573de614f6d92bcef2eb",
    ),
    6: (
        "573b84da6ac381ea7f548fbbe44331f8bd6eb611f98525aa22852c8a009218a4",
        "b7cd88ad48b98f99f39828bc1646971db5ae26c8bf3541d4d6933a9e538eb306",
    ),
    7: (
        "5b5c955697d3245bc06522901673214e8924ce3c5a8545836c0b3bbaab251fa8",
        "4c405413f582f5d11faa7e645ca4824e39df5ae61977f17dafa6e4383f7e454d",
    ),
    8: (
        "84a65ec950190b5ee2a9267971d51f4173b7f782f6f4d1157395cc517644b1ce",
        "47ee5dc438547837263612c0744a4046e4732d258bdd9e590c6bb5daa2a8d852",
    ),
    9: (
        "01f817f303ce855fa7433f3d0a9b8bfb2e7d72a2f41aeff4c1d63f9d5ca0f902",
        "10f72c2f286475736f0b6d3c42e12ead21f1a20f3e56740a31c746d1406b054b",
    ),
    10: (
        "ae353d397d45e0f90bc2f7d3bbb8b7c0424e00916fad499d3c2dd992b141f177",
        "aba70a886d8537123a1e410974a93768e5d670f4b27472a569a31ad816632eeb",
    ),
}


class Migration(msgspec.Struct, frozen=True):
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """Of the statements only: rewording a comment does not change a migration."""
        return _digest(without_comments(self.sql))

    def applied_as(self, recorded: str) -> bool:
        text, statements = _TEXT_CHECKSUMS.get(self.version, ("", ""))
        # (the old statement checksums were taken with a simpler comment rule, kept for them)
        return recorded == self.checksum or (recorded == text and _digest(_SQL_COMMENT.sub("", self.sql)) == statements)


def _digest(code: str) -> str:
    lines = [line.rstrip() for line in code.splitlines() if line.strip()]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


_SQL_TOKEN = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|(\$[A-Za-z_0-9]*\$).*?\1|--[^\n]*|/\*.*?\*/", re.S)


def without_comments(sql: str) -> str:
    """`sql` without its `--` and `/* */` comments; quoted strings, quoted identifiers and
    dollar-quoted bodies are kept as they are (a `--` inside them is not a comment)."""

    def keep(match: re.Match[str]) -> str:
        token = match.group(0)
        return "" if token.startswith(("--", "/*")) else token

    return _SQL_TOKEN.sub(keep, sql)


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
        applied = {
            r["version"]: r["checksum"] for r in await conn.fetch("SELECT version, checksum FROM schema_migrations")
        }
        done = []
        for migration in migrations:
            if migration.version in applied:
                if not migration.applied_as(applied[migration.version]):
                    raise MigrationError(
                        f"migration {migration.version:03d}_{migration.name} changed after it was applied"
                    )
                if applied[migration.version] != migration.checksum:
                    await conn.execute(
                        "UPDATE schema_migrations SET checksum = $2 WHERE version = $1",
                        migration.version,
                        migration.checksum,
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

# Tables rewritten all day (status rows, cursors; the outbox's default partition, pruned row by
# row)... The time partitions of the outbox and of idempotency_responses are not among them:
# they are insert-only and dropped whole, so they leave no dead rows, and vacuuming an
# insert-only page only marks it all-visible — a write of every page of a table that is about
# to be dropped (a tenth of the throughput of a 2-minute run at capacity).
REWRITTEN_TABLES = (
    "outbox_default",
    "outbox_cursors",
    "payments",
    "payment_orders",
    "account_balances",
    "balance_horizon",
    "instance_leases",
)
# ...and the insert-only ledger, whose statistics the planner needs (without them it guesses, and
# a guess once hashed the whole ledger) but which leaves no dead rows: vacuumed less often.
LEDGER_TABLES = ("journal_entries", "postings")
CHURNING_TABLES = REWRITTEN_TABLES + LEDGER_TABLES
# The insert-only tables partitioned by time: never vacuumed, but a partition that has doubled
# since its statistics were taken is analyzed (a sample, no page written), so that the planner
# does not guess; doubling keeps the estimates within a factor of two at a cost that grows with
# the logarithm of the partition's size, not with the number of job runs.
INSERT_ONLY_TABLES = ("outbox", "idempotency_responses")


async def vacuum_if_autovacuum_off(conn: asyncpg.Connection, tables: tuple[str, ...] = CHURNING_TABLES) -> list[str]:
    """VACUUM (ANALYZE) the service's tables when the server does not (autovacuum off, as on
    some development and CI machines): otherwise every claim, status change and pruned row
    leaves a dead tuple behind for good, the queue tables bloat, and queries slow down as they
    grow. Returns the tables vacuumed; none when autovacuum is on (migration 008 tunes it for
    the queue tables). The insert-only queue partitions are not vacuumed but analyzed when they
    have doubled (`analyze_changed_partitions`). Must run outside a transaction."""
    if await conn.fetchval("SELECT current_setting('autovacuum')::boolean"):
        return []
    for attempt in range(2):
        # A partitioned table's partitions, not the table itself: vacuuming the parent would hold a
        # lock on it for seconds that creating or dropping a partition must wait for — as
        # autovacuum, which never processes partitioned parents either.
        leaves = await conn.fetchval(
            """SELECT array_agg(coalesce(i.inhrelid, c.oid)::regclass::text ORDER BY t.n)
               FROM unnest($1::text[]) WITH ORDINALITY AS t(name, n)
               JOIN pg_class c ON c.oid = to_regclass(t.name)
               LEFT JOIN pg_inherits i ON i.inhparent = c.oid AND c.relkind = 'p'""",
            list(tables),
        )
        try:
            await conn.execute(f"VACUUM (ANALYZE, SKIP_LOCKED) {', '.join(leaves)}", timeout=VACUUM_TIMEOUT_S)
            break
        except asyncpg.UndefinedTableError:  # a partition was dropped meanwhile: list them again
            if attempt:
                raise
    await analyze_changed_partitions(conn)
    return list(tables)


async def analyze_changed_partitions(
    conn: asyncpg.Connection, tables: tuple[str, ...] = INSERT_ONLY_TABLES
) -> list[str]:
    """ANALYZE the partitions of `tables` of which more than half the rows (and over 1,000) are
    new since their last ANALYZE; returns them."""
    changed: list[str] = await conn.fetchval(
        """SELECT coalesce(array_agg(c.oid::regclass::text), '{}')
           FROM unnest($1::text[]) AS t(name)
           JOIN pg_inherits i ON i.inhparent = to_regclass(t.name)
           JOIN pg_class c ON c.oid = i.inhrelid
           JOIN pg_stat_user_tables s ON s.relid = c.oid
           WHERE s.n_mod_since_analyze > 1000 + 0.5 * s.n_live_tup""",
        list(tables),
    )
    if changed:
        with contextlib.suppress(asyncpg.UndefinedTableError):  # dropped meanwhile: nothing to analyze
            await conn.execute(f"ANALYZE (SKIP_LOCKED) {', '.join(changed)}", timeout=VACUUM_TIMEOUT_S)
    return changed
