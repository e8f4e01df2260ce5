"""The one way to run a transaction, with the database's own time limits.

Every pool connection carries `statement_timeout` and `lock_timeout` (set in pool.py from the
configuration), so no statement waits without a limit: a replica that lost its connection
mid-transaction cannot stall the others for longer than the lock timeout. A caller that needs a
different statement limit (a metric query over a large table) asks for it here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from typing import Literal, TypeAlias

import asyncpg

from exporter.database.pool import milliseconds

# A pool (each call on a connection of its own) or a connection (calls join its transaction).
Executor: TypeAlias = asyncpg.Connection | asyncpg.Pool
IsolationLevel: TypeAlias = Literal["read_committed", "repeatable_read", "serializable"]


# Callbacks waiting for the commit of the outermost transaction this task opened.
_AFTER_COMMIT: ContextVar[list[Callable[[], None]] | None] = ContextVar(
    "after_commit", default=None
)


def after_commit(callback: Callable[[], None]) -> None:
    """Run `callback` once the enclosing transaction has committed (never if it rolls back):
    metrics, log lines and wake-ups must not announce what may still be undone. Outside a
    transaction opened by `transaction()`, it runs at once."""
    pending = _AFTER_COMMIT.get()
    if pending is None:
        callback()
    else:
        pending.append(callback)


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
        outermost = _AFTER_COMMIT.get() is None
        pending: list[Callable[[], None]] = []
        token = _AFTER_COMMIT.set(pending) if outermost else None
        try:
            async with (
                db.acquire() as connection,
                connection.transaction(isolation=isolation, readonly=readonly),
            ):
                if statement_timeout is not None:
                    await set_statement_timeout(connection, statement_timeout)
                yield connection
        finally:
            if token is not None:
                _AFTER_COMMIT.reset(token)
        for callback in pending:  # reached only after the commit
            callback()
    else:
        async with db.transaction():
            yield db


async def set_statement_timeout(connection: asyncpg.Connection, seconds: float) -> None:
    """Until the end of the current transaction."""
    await connection.execute(
        "SELECT set_config('statement_timeout', $1, true)", milliseconds(seconds)
    )
