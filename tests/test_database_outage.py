"""The database goes away and comes back while the exporter runs: scrapes keep answering,
readiness follows the database, and values recover without a restart."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from exporter.config import parse_config
from exporter.database.migrate import migrate
from exporter.database.pool import Connection
from exporter.web.app import create_app
from tests.harness import PostgresServer
from tests.helpers import scrape, wait_until

FAST = {
    "collectors": {"interval": "200ms", "timeout": "200ms"},
    "database": {"health_interval": "200ms", "connect_timeout": "1s"},
    "kraken": {"enabled": False},
}
PURCHASES_1H = (
    "liquid_abt_purchases",
    frozenset({"window": "1h", "exchange": "kraken", "status": "completed"}.items()),
)


@pytest.fixture
async def own_server(searchable_tmp_path: Path) -> AsyncIterator[PostgresServer]:
    """A server of the test's own, since the test stops and starts it."""
    server = PostgresServer(searchable_tmp_path)
    await asyncio.to_thread(server.start)
    conn = await asyncpg.connect(server.dsn)
    await migrate(conn, with_platform_schema=True)
    await conn.close()
    yield server
    await asyncio.to_thread(server.stop)


async def insert_completed(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    await conn.execute(
        "INSERT INTO bitcoin_purchases (tenant_id, amount_aud, status) VALUES ('t', 10, 'completed')"
    )
    await conn.close()


async def timed_scrape(client: TestClient) -> dict:
    # A scrape must not wait on the database: bound it well below the database timeouts.
    return await asyncio.wait_for(scrape(client), timeout=0.5)


async def ready_status(client: TestClient) -> int:
    return (await client.get("/-/ready")).status


async def test_scrapes_answer_and_values_recover_across_a_restart(
    aiohttp_client, own_server: PostgresServer
) -> None:
    client = await aiohttp_client(create_app(parse_config(FAST), Connection(own_server.dsn)))
    await insert_completed(own_server.dsn)

    async def counted(n: float) -> bool:
        return (await timed_scrape(client)).get(PURCHASES_1H) == n

    await wait_until(lambda: counted(1))
    assert await ready_status(client) == 200

    await asyncio.to_thread(own_server.stop)

    async def db_down() -> bool:
        return (await timed_scrape(client))[("liquid_abt_db_up", frozenset())] == 0

    await wait_until(db_down)
    assert await ready_status(client) == 503
    samples = await timed_scrape(client)
    assert samples[PURCHASES_1H] == 1, "the last values are kept while within the expiry"
    errors = ("liquid_abt_collector_errors_total", frozenset({("collector", "purchases")}))
    await wait_until(lambda: _positive(client, errors))

    await asyncio.to_thread(own_server.start)

    async def ready() -> bool:
        return await ready_status(client) == 200

    await wait_until(ready)
    await insert_completed(own_server.dsn)
    await wait_until(lambda: counted(2))
    assert (await timed_scrape(client))[("liquid_abt_db_up", frozenset())] == 1


async def _positive(client: TestClient, key: tuple) -> bool:
    return (await timed_scrape(client)).get(key, 0) > 0


async def test_snapshots_expire_while_the_database_is_away(
    aiohttp_client, own_server: PostgresServer
) -> None:
    config = parse_config({**FAST, "collectors": {**FAST["collectors"], "snapshot_expiry": "1s"}})
    client = await aiohttp_client(create_app(config, Connection(own_server.dsn)))

    async def has_purchases() -> bool:
        return PURCHASES_1H in await timed_scrape(client)

    await wait_until(has_purchases)
    await asyncio.to_thread(own_server.stop)

    async def dropped() -> bool:
        return PURCHASES_1H not in await timed_scrape(client)

    await wait_until(dropped)
    samples = await timed_scrape(client)
    assert samples[("liquid_abt_db_up", frozenset())] == 0
    assert any(name == "liquid_abt_build_info" for name, _ in samples), "self metrics stay"
