"""Time limits on database work: the pool's statement and lock timeouts, and background loops
that carry on after a statement was cut off."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from exporter.config import parse_config
from exporter.controls.breaker import ACTOR_AUTOMATION, BreakerStore
from exporter.database.background import run_forever
from exporter.database.pool import Connection, close_pool, create_pool
from exporter.database.transactions import transaction

CONFIG = parse_config(
    {"database": {"statement_timeout": "500ms", "lock_timeout": "300ms"},
}
)  # fmt: skip


@pytest.fixture
async def pool(database: Connection) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database, CONFIG.database)
    yield pool
    await pool.close()


async def test_a_slow_statement_is_cut_off_and_the_loop_carries_on(
    pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    outcomes: list[str] = []
    third = asyncio.Event()

    async def iteration() -> float:
        started = time.monotonic()
        try:
            async with transaction(pool) as connection:
                # The first iteration's statement would run 30 s; the later ones are quick.
                await connection.execute(f"SELECT pg_sleep({30 if not outcomes else 0})")
        except Exception:
            outcomes.append(f"cut off after {time.monotonic() - started:.1f}s")
            raise
        outcomes.append("ok")
        if len(outcomes) >= 3:
            third.set()
        return 0.0

    caplog.set_level(logging.INFO, logger="exporter.database.background")
    loop = asyncio.create_task(run_forever("slow", iteration, retry_after=0.05))
    try:
        async with asyncio.timeout(10):
            await third.wait()
    finally:
        loop.cancel()
    assert outcomes[0].startswith("cut off after 0.") and outcomes[1:3] == ["ok", "ok"]
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["database unavailable; loop waits for it", "database back; loop resumed"]
    assert all(r.exc_info is None for r in caplog.records)  # one line each, no traceback


async def test_a_statement_may_ask_for_a_longer_limit(pool: asyncpg.Pool) -> None:
    async with transaction(pool, statement_timeout=3) as connection:
        assert await connection.fetchval("SELECT 1 FROM pg_sleep(0.8)") == 1
    with pytest.raises(asyncpg.exceptions.QueryCanceledError):
        async with transaction(pool) as connection:
            await connection.fetchval("SELECT pg_sleep(0.8)")


async def test_a_held_row_lock_makes_a_breaker_write_fail_fast(
    pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    store = BreakerStore(pool, CONFIG, CollectorRegistry())
    await store.status("kraken")  # the row exists
    # Another replica that lost its network mid-transaction still holds the row lock.
    holder = db.transaction()
    await holder.start()
    await db.execute(
        "SELECT 1 FROM liquid_abt.circuit_breakers WHERE exchange = 'kraken' FOR UPDATE"
    )
    started = time.monotonic()
    try:
        with pytest.raises(asyncpg.exceptions.LockNotAvailableError):
            async with asyncio.timeout(5):  # the test's own bound: the write must not hang
                await store.force_state("kraken", "OPEN", ACTOR_AUTOMATION, "test")
    finally:
        await holder.rollback()
    assert time.monotonic() - started < 2
    # Once the lock is gone the same write goes through.
    assert await store.force_state("kraken", "OPEN", ACTOR_AUTOMATION, "test") is not None


def test_lock_timeout_longer_than_statement_timeout_is_refused() -> None:
    from exporter.config import ConfigError

    with pytest.raises(ConfigError) as error:
        parse_config({"database": {"statement_timeout": "1s", "lock_timeout": "2s"}})
    assert "lock_timeout (2s) is longer than statement_timeout (1s)" in str(error.value)


async def test_shutdown_closes_a_pool_whose_connection_never_comes_back(
    database: Connection, caplog: pytest.LogCaptureFixture
) -> None:
    """A graceful close waits for every connection; one held forever (a task that never let go)
    is terminated after the grace period, so the exporter's shutdown cannot hang on it."""
    pool = await create_pool(database, CONFIG.database)
    held = await pool.acquire()
    async with asyncio.timeout(60):  # a bound for the test run only: without it, a hang
        await close_pool(pool, grace=0.2)
    with pytest.raises(asyncpg.InterfaceError, match="pool is closed"):
        await pool.acquire()
    with pytest.raises(asyncpg.InterfaceError):  # the held connection went with it
        await held.fetchval("SELECT 1")
    assert "closed by force" in caplog.text


async def test_shutdown_closes_a_released_pool_gracefully(
    database: Connection, caplog: pytest.LogCaptureFixture
) -> None:
    pool = await create_pool(database, CONFIG.database)
    async with pool.acquire() as connection:
        assert await connection.fetchval("SELECT 1") == 1
    await close_pool(pool, grace=30)
    assert "closed by force" not in caplog.text
