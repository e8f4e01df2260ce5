"""Versioned, idempotent migrations of the exporter's own schema (`liquid_abt`).

Each `NNNN_name.sql` file in `migrations/` is applied once, in order, in its own transaction,
under an advisory lock so that replicas starting together do not race.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources

import asyncpg

log = logging.getLogger(__name__)

SCHEMA = "liquid_abt"
# Any constant works; it only has to be the same for every replica.
_ADVISORY_LOCK_KEY = 0x11AB7E


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available_migrations() -> list[Migration]:
    folder = resources.files("exporter.database") / "migrations"
    found = []
    for entry in folder.iterdir():
        match = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text()))
    return sorted(found, key=lambda m: m.version)


def platform_schema_sql() -> str:
    return (resources.files("exporter.database") / "migrations" / "platform_schema.sql").read_text()


async def migrate(connection: asyncpg.Connection, with_platform_schema: bool = False) -> list[str]:
    """Apply what is missing; returns the names of the migrations applied by this call."""
    applied_now: list[str] = []
    await connection.execute("SELECT pg_advisory_lock($1)", _ADVISORY_LOCK_KEY)
    try:
        await connection.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
        await connection.execute(
            f"""CREATE TABLE IF NOT EXISTS {SCHEMA}.schema_migrations (
                version integer PRIMARY KEY,
                name text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        done = {
            r["version"]
            for r in await connection.fetch(f"SELECT version FROM {SCHEMA}.schema_migrations")
        }
        for migration in available_migrations():
            if migration.version in done:
                continue
            async with connection.transaction():
                await connection.execute(migration.sql)
                await connection.execute(
                    f"INSERT INTO {SCHEMA}.schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
            log.info(
                "migration applied",
                extra={"version": migration.version, "migration": migration.name},
            )
            applied_now.append(f"{migration.version:04d}_{migration.name}")
        if with_platform_schema:
            async with connection.transaction():
                await connection.execute(platform_schema_sql())
    finally:
        await connection.execute("SELECT pg_advisory_unlock($1)", _ADVISORY_LOCK_KEY)
    return applied_now
