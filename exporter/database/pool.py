"""The asyncpg pool and the database health monitor that drives `liquid_abt_db_up` and `/-/ready`."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass, field

import asyncpg

from exporter.config import Config, ConfigError, DatabaseConfig, dsn_problem, mask_dsn
from exporter.secrets import read_secret

log = logging.getLogger(__name__)

# Everything a query can raise when the database is away, restarting or the connection broke:
# a retry (next refresh, next ping, Alertmanager's retry) may succeed. InternalClientError is
# asyncpg's word for a connection left mid-operation when the server killed it.
DATABASE_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)

# The subset that means "the database is not answering in time" (not "this query is wrong"):
# HTTP 503, and one log line per outage in the background loops. A statement cut off by
# `statement_timeout` (QueryCanceledError) or a lock not granted within `lock_timeout`
# (LockNotAvailableError) is the database being slow or a row held elsewhere: a retry may pass.
DATABASE_UNAVAILABLE = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.QueryCanceledError,
    asyncpg.exceptions.LockNotAvailableError,
)


@dataclass(frozen=True)
class Connection:
    """Where the database is: the DSN (maybe without password) and the password kept apart."""

    dsn: str
    password: str | None = field(default=None, repr=False)

    @property
    def masked(self) -> str:
        return mask_dsn(self.dsn)


def database_connection(config: Config) -> Connection | None:
    """The database the configuration and the environment name; None when neither does.

    DATABASE_URL wins over `database.dsn`; the password comes from DATABASE_PASSWORD[_FILE].
    A DATABASE_URL that is not PostgreSQL, or holds a password, is refused like the config file's."""
    url = os.environ.get("DATABASE_URL")
    if url and (problem := dsn_problem(url)):
        raise ConfigError(f"DATABASE_URL: {problem}")
    dsn = url or config.database.dsn
    if not dsn:
        return None
    return Connection(dsn, read_secret("DATABASE_PASSWORD"))


def milliseconds(seconds: float) -> str:
    """A PostgreSQL duration setting."""
    return f"{max(1, round(seconds * 1000))}ms"


async def create_pool(
    conn: Connection, config: DatabaseConfig, *, longest_statement: float | None = None
) -> asyncpg.Pool:
    """A lazy pool: it opens connections on demand, so the exporter starts while the DB is down.

    The server enforces `statement_timeout` and `lock_timeout` on every statement; the client's
    `command_timeout` (the longest statement a caller may ask for, plus a second) also covers a
    server that stopped answering altogether. `longest_statement` is that longest limit.
    """
    longest = max(config.statement_timeout, longest_statement or 0.0)
    pool = await asyncpg.create_pool(
        conn.dsn,
        password=conn.password,
        min_size=config.pool_min_size,
        max_size=config.pool_max_size,
        timeout=config.connect_timeout,
        command_timeout=longest + 1.0,
        reset=_reset,
        # Connections that outlived a database restart are dropped instead of kept forever.
        max_inactive_connection_lifetime=60.0,
        server_settings={
            "application_name": "liquid-abt-exporter",
            # The window bounds are parameters: a generic plan would not know they select a
            # few recent rows and could fall back to scanning whole tables.
            "plan_cache_mode": "force_custom_plan",
            "statement_timeout": milliseconds(config.statement_timeout),
            "lock_timeout": milliseconds(config.lock_timeout),
        },
    )
    assert pool is not None
    return pool


async def close_pool(pool: asyncpg.Pool, grace: float) -> None:
    """Close gracefully, but bounded: a graceful close waits for every connection to come back,
    and one that never does (a query on a server that went away, a task that never let go) must
    not hold shutdown forever; after `grace` seconds the remaining connections are terminated."""
    closing = asyncio.ensure_future(pool.close())
    await asyncio.wait({closing}, timeout=grace)
    if closing.done():
        closing.result()
        return
    log.warning("database connections not released at shutdown; closed by force",
                extra={"grace_seconds": grace})  # fmt: skip
    pool.terminate()
    closing.cancel()
    await asyncio.gather(closing, return_exceptions=True)


async def _reset(connection: asyncpg.Connection) -> None:
    """What a released connection needs, and no more: the exporter keeps no session state
    (settings are transaction-local, advisory locks transaction-scoped, LISTEN on a connection
    of its own), so asyncpg's default RESET ALL / UNLISTEN query, a transaction of its own on
    every release, would only double the load an idle replica puts on the database."""
    if connection.is_in_transaction():
        await connection.execute("ROLLBACK")


async def ping(pool: asyncpg.Pool, timeout: float) -> None:
    """Raise unless the database answers `SELECT 1` within the timeout."""
    async with asyncio.timeout(timeout):
        async with pool.acquire() as connection:
            await connection.fetchval("SELECT 1")


class DatabaseMonitor:
    """Pings the database in the background; scrapes and readiness read the latest answer.

    A statement another loop saw answered (`answered()`, the platform watch's every few
    seconds) counts as a ping: an idle replica then sends no `SELECT 1` of its own. The price: a
    database that goes away just after such an answer is found by the ping after next, two
    intervals (10 s) later at most instead of one (LiquidAbtDatabaseDown waits 2 minutes)."""

    def __init__(self, pool: asyncpg.Pool, interval: float, timeout: float) -> None:
        self._pool = pool
        self._interval = interval
        self._timeout = timeout
        self.up = False
        self.last_check: float = 0.0
        self.last_error: str | None = None
        self._checked = asyncio.Event()
        self._answered_at = float("-inf")  # time.monotonic() of the latest answer seen elsewhere

    def answered(self) -> None:
        """Another statement on the pool was just answered."""
        self._answered_at = time.monotonic()

    async def check(self) -> bool:
        try:
            await ping(self._pool, self._timeout)
        except DATABASE_ERRORS as exc:
            if self.up or self.last_error is None:
                log.warning("database unreachable", extra={"error": str(exc) or type(exc).__name__})
            self.up, self.last_error = False, str(exc) or type(exc).__name__
        else:
            if not self.up:
                log.info("database reachable")
            self.up, self.last_error = True, None
        self.last_check = time.time()
        self._checked.set()
        return self.up

    async def iteration(self) -> float:
        if self.up and time.monotonic() - self._answered_at < self._interval:
            self.last_check = time.time()
            return self._interval
        try:
            await self.check()
        except Exception:  # report the database as down while the check itself is broken
            self.up, self.last_error = False, "health check crashed"
            raise
        return self._interval
