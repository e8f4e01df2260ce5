"""Shared fixtures: a real PostgreSQL (throwaway, or DATABASE_URL), a fresh database per test.

The session migrates one template database; each test gets its own copy of it, so tests never
see each other's rows and need no cleanup of their own.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from prometheus_client import disable_created_metrics

from exporter.database.migrate import migrate
from exporter.database.pool import Connection
from liquid_abt_drill.kraken_server.server import FakeKraken
from liquid_abt_drill.stack import searchable_tmp_dir, start_postgres

# The `stack` fixture and the other pytest plumbing over liquid_abt_drill.stack.
pytest_plugins = ["tests.harness"]

TEMPLATE_DB = "liquid_abt_test_template"

# As the CLI does: keeps the samples the tests read free of `_created` series.
disable_created_metrics()


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def create_database(server_dsn: str, template: str, prefix: str = "t") -> str:
    """A copy of `template` under a new name (returned): each test's own database."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
    finally:
        await admin.close()
    return name


async def drop_database(server_dsn: str, name: str) -> None:
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()


@pytest.fixture(scope="session")
def pg_server_dsn() -> Iterator[str]:
    """The admin DSN of the server the tests use."""
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    folder = searchable_tmp_dir("liquid-abt-test-pg-")
    with start_postgres(folder) as server:
        yield server.dsn
    shutil.rmtree(folder, ignore_errors=True)


async def _create_template(server_dsn: str) -> None:
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {TEMPLATE_DB}")
        await admin.execute(f"CREATE DATABASE {TEMPLATE_DB}")
    finally:
        await admin.close()
    conn = await asyncpg.connect(with_database(server_dsn, TEMPLATE_DB))
    try:
        await migrate(conn, with_platform_schema=True)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def template_db(pg_server_dsn: str) -> str:
    asyncio.run(_create_template(pg_server_dsn))
    return TEMPLATE_DB


@pytest.fixture
async def database(pg_server_dsn: str, template_db: str) -> AsyncIterator[Connection]:
    """A fresh, migrated database with the platform tables, dropped after the test."""
    name = await create_database(pg_server_dsn, template_db)
    yield Connection(with_database(pg_server_dsn, name))
    await drop_database(pg_server_dsn, name)


@pytest.fixture
async def db(database: Connection) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection to the test's database, for arranging rows and reading results."""
    conn = await asyncpg.connect(database.dsn)
    yield conn
    await conn.close()


@pytest.fixture
async def kraken() -> AsyncIterator[FakeKraken]:
    """The Kraken-compatible server, in this process, healthy until a test switches its mode."""
    server = FakeKraken()
    await server.start()
    yield server
    await server.stop()
