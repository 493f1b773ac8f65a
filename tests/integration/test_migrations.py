"""Migrations: applied once, and an applied migration whose statements changed is refused —
while rewording one of its comments is not a change."""

from __future__ import annotations

import asyncpg
import pytest

from marketplace_pay.infra.db import Migration, MigrationError, load_migrations, migrate


async def test_comments_may_be_reworded_but_statements_may_not_change(fresh_database: str) -> None:
    conn = await asyncpg.connect(fresh_database)
    try:
        migrations = load_migrations()
        assert await migrate(conn, migrations) == []  # the template applied them all
        first = migrations[0]
        reworded = Migration(first.version, first.name, "-- said differently now\n" + first.sql.replace("--", "-- so"))
        assert await migrate(conn, [reworded, *migrations[1:]]) == []
        changed = Migration(first.version, first.name, first.sql + "\nSELECT 1;\n")
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await migrate(conn, [changed, *migrations[1:]])
    finally:
        await conn.close()


async def test_a_database_migrated_when_comments_counted_is_recognised_and_brought_up_to_date(
    fresh_database: str,
) -> None:
    from marketplace_pay.infra.db import _TEXT_CHECKSUMS

    conn = await asyncpg.connect(fresh_database)
    try:
        text_checksum, _ = _TEXT_CHECKSUMS[1]
        await conn.execute("UPDATE schema_migrations SET checksum = $1 WHERE version = 1", text_checksum)
        assert await migrate(conn) == []
        first = load_migrations()[0]
        assert await conn.fetchval("SELECT checksum FROM schema_migrations WHERE version = 1") == first.checksum
        # the old text checksum vouches only for the old statements
        await conn.execute("UPDATE schema_migrations SET checksum = $1 WHERE version = 1", text_checksum)
        with pytest.raises(MigrationError):
            await migrate(conn, [Migration(1, first.name, first.sql + "\nSELECT 1;\n"), *load_migrations()[1:]])
    finally:
        await conn.close()


async def test_a_dash_dash_inside_a_string_is_not_a_comment(fresh_database: str) -> None:
    applied = "CREATE TABLE fee_rules (pattern text, bps int);\nINSERT INTO fee_rules VALUES ('--', 30);\n"
    changed = applied.replace("30)", "3000)")
    conn = await asyncpg.connect(fresh_database)
    try:
        await migrate(conn, [Migration(999, "fee_rules", applied)])
        with pytest.raises(MigrationError, match="changed after it was applied"):
            await migrate(conn, [Migration(999, "fee_rules", changed)])
    finally:
        await conn.close()
