"""The one way to run a transaction, with the database's own time limits.

Every pool connection carries `statement_timeout` and `lock_timeout` (set in pool.py from the
configuration), so no statement waits without a limit: a replica that lost its connection
mid-transaction cannot stall the others for longer than the lock timeout. A caller that needs a
different statement limit (a metric query over a large table) asks for it here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal, TypeAlias

import asyncpg

from exporter.database.pool import milliseconds

# A pool (each call on a connection of its own) or a connection (calls join its transaction).
Executor: TypeAlias = asyncpg.Connection | asyncpg.Pool
IsolationLevel: TypeAlias = Literal["read_committed", "repeatable_read", "serializable"]


@asynccontextmanager
async def transaction(
    db: Executor,
    *,
    statement_timeout: float | None = None,
    isolation: IsolationLevel | None = None,
    readonly: bool = False,
) -> AsyncIterator[asyncpg.Connection]:
    """A transaction on a pool connection, or a savepoint of the caller's transaction, so that
    several controls compose: a caller holding a connection makes them commit together.

    A snapshot of several reads that must agree asks for `isolation="repeatable_read"`.
    """
    if isinstance(db, asyncpg.Pool):
        async with (
            db.acquire() as connection,
            connection.transaction(isolation=isolation, readonly=readonly),
        ):
            if statement_timeout is not None:
                await set_statement_timeout(connection, statement_timeout)
            yield connection
    else:
        async with db.transaction():
            yield db


async def set_statement_timeout(connection: asyncpg.Connection, seconds: float) -> None:
    """Until the end of the current transaction."""
    await connection.execute(
        "SELECT set_config('statement_timeout', $1, true)", milliseconds(seconds)
    )
