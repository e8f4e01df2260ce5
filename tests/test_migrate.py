"""Migrations are versioned and idempotent; the audit log is append-only."""

from __future__ import annotations

import asyncpg
import pytest

from exporter.database.migrate import available_migrations, migrate
from exporter.database.pool import Connection


async def test_applying_twice_changes_nothing(database: Connection, db: asyncpg.Connection) -> None:
    # The template was migrated once already; two more runs apply nothing.
    assert await migrate(db, with_platform_schema=True) == []
    assert await migrate(db, with_platform_schema=True) == []
    versions = await db.fetch("SELECT version FROM liquid_abt.schema_migrations ORDER BY version")
    assert [r["version"] for r in versions] == [m.version for m in available_migrations()]


async def test_a_fresh_database_gets_every_migration(pg_server_dsn: str) -> None:
    from tests.conftest import with_database

    admin = await asyncpg.connect(pg_server_dsn)
    await admin.execute("DROP DATABASE IF EXISTS migrate_fresh")
    await admin.execute("CREATE DATABASE migrate_fresh")
    conn = await asyncpg.connect(with_database(pg_server_dsn, "migrate_fresh"))
    try:
        applied = await migrate(conn)
        assert applied == [f"{m.version:04d}_{m.name}" for m in available_migrations()]
        platform = await conn.fetchval("SELECT to_regclass('public.bitcoin_purchases')")
        assert platform is None, "platform tables only on request"
    finally:
        await conn.close()
        await admin.execute("DROP DATABASE migrate_fresh WITH (FORCE)")
        await admin.close()


async def test_the_audit_log_is_append_only(db: asyncpg.Connection) -> None:
    await db.execute(
        "INSERT INTO liquid_abt.audit_log (actor, action, result) VALUES ('test', 'x', 'success')"
    )
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await db.execute("UPDATE liquid_abt.audit_log SET result = 'failure'")
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await db.execute("DELETE FROM liquid_abt.audit_log")
