"""The platform, live: purchases at a steady rate that obey the exporter's pause, breaker and rate
controls, buy due retries again, and survive a lost database connection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Final

import asyncpg

from exporter.config import RetryConfig
from exporter.controls import retry_queue
from exporter.database.pool import DATABASE_UNAVAILABLE

from .database import CALL_COLUMNS, Controls, call_rows, create_tenants, read_controls
from .exchange import ExchangeWatch
from .generator import Purchase, Simulator, Summary

log = logging.getLogger("liquid_abt_drill.simulate")

Connect = Callable[[], Awaitable[asyncpg.Connection]]


# Errors after which a new connection may work (the database restarted, the network blinked):
# the exporter's own definition of "the database is not answering".
_CONNECTION_ERRORS: Final = DATABASE_UNAVAILABLE


class Live:
    """The platform at `rate` purchases a minute: each is `pending` until its calls finish.

    A lost database connection is reopened with backoff; purchases due meanwhile are lost, as
    they would be on a platform without its database, and settlements wait for the connection.
    """

    def __init__(
        self,
        connect: Connect,
        simulator: Simulator,
        *,
        rate_per_minute: float,
        exchange: str,
        honour_controls: bool = True,
        retry_config: RetryConfig | None = None,
        watch: ExchangeWatch | None = None,
    ) -> None:
        self.connect = connect
        self.conn: asyncpg.Connection | None = None
        self.simulator = simulator
        self.rate = rate_per_minute
        self.exchange = exchange
        self.honour_controls = honour_controls
        self.summary = Summary()
        self.controls = Controls()
        self.lost = 0  # purchases that arrived while the database was unreachable
        self.retry_config = retry_config or RetryConfig()
        self.watch = watch  # the exchange as it is now; None: the failure mix alone decides
        self._in_flight: list[tuple[float, int, datetime, Purchase]] = []

    async def run(self, stop: asyncio.Event, duration: float | None = None) -> Summary:
        if self.watch is None:
            return await self._run(stop, duration)
        watching = asyncio.Event()
        watch = asyncio.create_task(self.watch.run(watching))
        try:
            # No purchase before the exchange was looked at; a watch that crashed says why.
            observed = asyncio.create_task(self.watch.observed.wait())
            await asyncio.wait([observed, watch], return_when=asyncio.FIRST_COMPLETED)
            if watch.done():
                observed.cancel()
                watch.result()
            return await self._run(stop, duration)
        finally:
            watching.set()
            await watch

    async def _run(self, stop: asyncio.Event, duration: float | None) -> Summary:
        loop = asyncio.get_running_loop()
        end = math.inf if duration is None else loop.time() + duration
        next_purchase = loop.time() + self.simulator.interval(self.rate)
        next_controls = next_retry = loop.time()
        backoff = 0.5
        try:
            while not stop.is_set() and loop.time() < end:
                now = loop.time()
                try:
                    if self.conn is None and now >= next_retry:
                        self.conn = await self.connect()
                        await create_tenants(self.conn, self.simulator)
                        backoff = 0.5
                    if self.conn is not None:
                        if self.honour_controls and now >= next_controls:
                            await self._refresh_controls(self.conn)
                            await self._process_retries(self.conn)
                            next_controls = now + 1.0
                        await self._settle(self.conn, now)
                    if now >= next_purchase:
                        next_purchase += self.simulator.interval(self.rate)
                        await self._start_purchase(now)
                except _CONNECTION_ERRORS as exc:
                    log.warning(
                        "database connection lost: reconnecting",
                        extra={"error": str(exc) or type(exc).__name__, "retry_in": backoff},
                    )
                    await self._drop_connection()
                    next_retry, backoff = loop.time() + backoff, min(backoff * 2, 10.0)
                # Settlements wait for a connection: without one, their due times are no alarm.
                settling = (due for due, *_ in self._in_flight) if self.conn else ()
                wake = min(
                    next_purchase, end, next_controls if self.conn else next_retry, *settling
                )
                await _sleep_until(stop, wake - loop.time())
            if self.conn is not None:
                await self._settle(self.conn, math.inf)  # nothing stays pending for ever
        finally:
            await self._drop_connection()
        if self._in_flight:
            log.warning(
                "purchases left pending: the database was unreachable at the end",
                extra={"pending": len(self._in_flight)},
            )
        return self.summary

    async def _drop_connection(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.terminate()

    async def _refresh_controls(self, conn: asyncpg.Connection) -> None:
        try:
            controls = await read_controls(conn, self.exchange)
        except asyncpg.UndefinedTableError:
            log.warning("no exporter schema: controls are not honoured (run `migrate`)")
            self.honour_controls = False
            return
        if controls != self.controls:
            log.info(
                "controls changed",
                extra={
                    "paused": controls.paused,
                    "breaker_open": controls.breaker_open,
                    "rate_multiplier": controls.rate_multiplier,
                },
            )
        self.controls = controls

    async def _process_retries(self, conn: asyncpg.Connection) -> None:
        """As the platform does: claim due retries (the claim itself skips paused exchanges and
        open breakers) and buy again; the outcome follows the current scenario."""
        if self.controls.paused or self.controls.breaker_open:
            return
        for entry in await retry_queue.claim_due(conn, limit=10):
            attempt = self.simulator.purchase(**self._conditions())
            async with conn.transaction():
                await conn.execute(
                    "UPDATE bitcoin_purchases SET retry_count = retry_count + 1, status = $2, "
                    "failure_reason = $3 WHERE id::text = $1",
                    entry.purchase_id, attempt.status, attempt.failure_reason,
                )  # fmt: skip
                if attempt.status == "completed":
                    await retry_queue.complete(conn, entry.id)
                else:
                    await retry_queue.fail(
                        conn, entry.id, attempt.failure_reason or "failed", self.retry_config
                    )
            self.summary.retried[attempt.status] += 1

    async def _start_purchase(self, now: float) -> None:
        if self.controls.paused:
            self.summary.skipped_paused += 1
            return
        if self.conn is None:
            self.lost += 1
            return
        purchase = self.simulator.purchase(
            breaker_open=self.controls.breaker_open, **self._conditions()
        )
        row = await self.conn.fetchrow(
            "INSERT INTO bitcoin_purchases (tenant_id, amount_aud, status, exchange_provider) "
            "VALUES ($1, $2, 'pending', $3) RETURNING id, created_at",
            purchase.tenant_id,
            purchase.amount_aud,
            self.exchange,
        )
        self._in_flight.append((now + purchase.duration_s, row["id"], row["created_at"], purchase))

    def _conditions(self) -> dict[str, Any]:
        """What a purchase placed now meets: the API rate, and the exchange when watched."""
        conditions: dict[str, Any] = {"rate_multiplier": self.controls.rate_multiplier}
        if self.watch is not None:
            conditions |= {"exchange_failure": self.watch.failure, "delay_ms": self.watch.delay_ms}
        return conditions

    async def _settle(self, conn: asyncpg.Connection, now: float) -> None:
        """Write the outcome of every purchase whose calls have finished (all or none)."""
        due = [p for p in self._in_flight if p[0] <= now]
        if not due:
            return
        async with conn.transaction():
            await conn.executemany(
                "UPDATE bitcoin_purchases SET status = $2, failure_reason = $3, retry_count = $4 "
                "WHERE id = $1",
                [(pid, p.status, p.failure_reason, p.retry_count) for _, pid, _, p in due],
            )
            calls = [
                row for _, _, created, p in due for row in call_rows(self.exchange, p, created)
            ]
            if calls:
                await conn.executemany(
                    f"INSERT INTO api_call_logs ({', '.join(CALL_COLUMNS)}) "
                    "VALUES ($1, $2, $3, $4, $5, $6)",
                    calls,
                )
        self._in_flight = [p for p in self._in_flight if p[0] > now]
        for *_, purchase in due:
            self.summary.add(purchase)


async def _sleep_until(stop: asyncio.Event, seconds: float) -> None:
    if seconds > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)
