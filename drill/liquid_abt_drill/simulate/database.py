"""Writes simulated purchases and call logs into the platform tables, and reads the exporter's
controls the platform obeys."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Final

import asyncpg

from .generator import TENANT_PREFIX, Purchase, Simulator, Summary
from .scenarios import SimulateError

log = logging.getLogger("liquid_abt_drill.simulate")

_PURCHASE_COLUMNS: Final = (
    "tenant_id",
    "amount_aud",
    "status",
    "failure_reason",
    "exchange_provider",
    "retry_count",
    "created_at",
)
CALL_COLUMNS: Final = (
    "provider",
    "endpoint",
    "success",
    "response_time",
    "error_message",
    "created_at",
)


async def check_database(conn: asyncpg.Connection, *, force: bool = False) -> None:
    """The platform tables exist, and hold no purchases of tenants the simulator did not create."""
    missing = [
        t
        for t in ("bitcoin_purchases", "api_call_logs", "tenant_accounts")
        if await conn.fetchval("SELECT to_regclass($1)", t) is None
    ]
    if missing:
        raise SimulateError(
            f"table(s) {', '.join(missing)} missing: create them with "
            "`liquid-abt-exporter migrate --with-platform-schema` (development databases only)"
        )
    real = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM bitcoin_purchases WHERE tenant_id NOT LIKE $1)",
        f"{TENANT_PREFIX}%",
    )
    if real and not force:
        raise SimulateError(
            "the database holds purchases of tenants the simulator did not create: it looks like "
            "a real platform database, so nothing was written (--force writes anyway)"
        )


async def create_tenants(conn: asyncpg.Connection, simulator: Simulator) -> None:
    await conn.executemany(
        "INSERT INTO tenant_accounts (tenant_id, balance_aud) VALUES ($1, $2) "
        "ON CONFLICT (tenant_id) DO NOTHING",
        [(t, Decimal("25000.00")) for t in simulator.tenants],
    )


def call_rows(exchange: str, purchase: Purchase, created: datetime) -> list[tuple]:
    return [
        (
            exchange,
            c.endpoint,
            c.success,
            c.response_ms,
            c.error,
            created + timedelta(seconds=c.offset_s),
        )
        for c in purchase.calls
    ]


async def backfill(
    conn: asyncpg.Connection,
    simulator: Simulator,
    *,
    seconds: float,
    rate_per_minute: float,
    exchange: str = "kraken",
    batch: int = 5000,
) -> Summary:
    """Write `seconds` of history ending at the database's now(), in batches (COPY).

    A period that already holds purchases is left alone (returns an empty summary): restarting
    `--backfill 1h --follow` must not write the last hour twice.
    """
    summary = Summary()
    now: datetime = await conn.fetchval("SELECT now()")
    if await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM bitcoin_purchases WHERE created_at > $1)",
        now - timedelta(seconds=seconds),
    ):
        log.info("backfill skipped: the period already holds purchases")
        return summary
    await create_tenants(conn, simulator)
    at = now - timedelta(seconds=seconds)
    purchases: list[tuple] = []
    calls: list[tuple] = []
    while True:
        at += timedelta(seconds=simulator.interval(rate_per_minute))
        if at >= now:
            break
        purchase = simulator.purchase()
        summary.add(purchase)
        purchases.append(
            (
                purchase.tenant_id,
                purchase.amount_aud,
                purchase.status,
                purchase.failure_reason,
                exchange,
                purchase.retry_count,
                at,
            )
        )
        calls += call_rows(exchange, purchase, at)
        if len(purchases) >= batch:
            await _copy(conn, purchases, calls)
            purchases, calls = [], []
    await _copy(conn, purchases, calls)
    return summary


async def _copy(conn: asyncpg.Connection, purchases: list[tuple], calls: list[tuple]) -> None:
    async with conn.transaction():
        if purchases:
            await conn.copy_records_to_table(
                "bitcoin_purchases", records=purchases, columns=_PURCHASE_COLUMNS
            )
        if calls:
            await conn.copy_records_to_table("api_call_logs", records=calls, columns=CALL_COLUMNS)


@dataclass(frozen=True)
class Controls:
    paused: bool = False
    breaker_open: bool = False
    rate_multiplier: float = 1.0


_CONTROLS_SQL: Final = """
SELECT coalesce(c.purchases_paused, false), coalesce(b.state, 'closed'),
       coalesce(c.api_rate_multiplier, 1)::float8
FROM (SELECT $1::text AS exchange) x
LEFT JOIN liquid_abt.exchange_controls c ON c.exchange = x.exchange
LEFT JOIN liquid_abt.circuit_breakers b ON b.exchange = x.exchange
"""


async def read_controls(conn: asyncpg.Connection, exchange: str) -> Controls:
    """What the platform obeys: the pause flag, the breaker state, the API rate multiplier."""
    paused, state, multiplier = await conn.fetchrow(_CONTROLS_SQL, exchange)
    return Controls(bool(paused), state == "open", float(multiplier))
