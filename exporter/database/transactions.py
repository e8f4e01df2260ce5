"""The one way to run a transaction, with the database's own time limits.

Every pool connection carries `statement_timeout` and `lock_timeout` (set in pool.py from the
configuration), so no statement waits without a limit: a replica that lost its connection
mid-transaction cannot stall the others for longer than the lock timeout. A caller that needs a
different statement limit (a metric query over a large table) asks for it here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TypeAlias

import asyncpg

# A pool (each call on a connection of its own) or a connection (calls join its transaction).
Executor: TypeAlias = asyncpg.Connection | asyncpg.Pool


@asynccontextmanager
async def transaction(
    db: Executor, *, statement_timeout: float | None = None
) -> AsyncIterator[asyncpg.Connection]:
    """A transaction on a pool connection, or a savepoint of the caller's transaction, so that
    several controls compose: a caller holding a connection makes them commit together."""
    if isinstance(db, asyncpg.Pool):
        async with db.acquire() as connection, connection.transaction():
            if statement_timeout is not None:
                await set_statement_timeout(connection, statement_timeout)
            yield connection
    else:
        async with db.transaction():
            yield db


async def set_statement_timeout(connection: asyncpg.Connection, seconds: float) -> None:
    """Until the end of the current transaction."""
    await connection.execute(
        "SELECT set_config('statement_timeout', $1, true)", f"{max(1, round(seconds * 1000))}ms"
    )
