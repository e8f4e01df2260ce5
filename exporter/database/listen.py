"""LISTEN on a PostgreSQL channel and call back on each notification: how one replica's write
wakes the others without their polling the table.

The listening connection is a connection of its own (a pool connection cannot hold a LISTEN);
when it is lost the loop reconnects (one log line each way, as every loop) and calls back once,
since a notification sent meanwhile was missed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import asyncpg

from exporter.database.background import run_forever
from exporter.database.pool import Connection

RECONNECT_AFTER = 5.0


async def listen(connection: Connection, channel: str, callback: Callable[[], None]) -> None:
    """Until cancelled: call `callback` for each notification on `channel`."""

    async def session() -> float:
        conn = await asyncpg.connect(
            connection.dsn, password=connection.password, timeout=RECONNECT_AFTER
        )
        lost = asyncio.Event()

        def on_notification(*_: Any) -> None:
            callback()

        conn.add_termination_listener(lambda _: lost.set())
        try:
            await conn.add_listener(channel, on_notification)
            callback()  # anything recorded before we listened
            await lost.wait()
        finally:
            if not conn.is_closed():
                await conn.close()
        raise ConnectionResetError(f"LISTEN {channel}: the connection was lost")

    await run_forever(f"listen-{channel}", session, retry_after=RECONNECT_AFTER)
