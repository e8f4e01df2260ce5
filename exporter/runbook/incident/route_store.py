"""Failover's rows: the route of the primary's purchases (liquid_abt.purchase_routes), and the
evidence a routing decision reads at one instant (exchange_verifications, the secondaries'
controls, the AUD waiting)."""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg

from exporter.controls.gate import GATE_SQL
from exporter.database.transactions import Executor
from exporter.runbook.incident.routing import Market, Secondary
from exporter.runbook.incident.state import Route

_COLUMNS = """exchange, routed_to, since, valid_until, reason, blocked_guard, override, failovers,
              reference_mid, reference_at"""

_WRITE_SQL = """
INSERT INTO liquid_abt.purchase_routes
    (exchange, routed_to, since, valid_until, reason, blocked_guard, override, failovers,
     reference_mid, reference_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (exchange) DO UPDATE
SET routed_to = excluded.routed_to, since = excluded.since, valid_until = excluded.valid_until,
    reason = excluded.reason, blocked_guard = excluded.blocked_guard,
    failovers = excluded.failovers, reference_mid = excluded.reference_mid,
    reference_at = excluded.reference_at, updated_at = now()
"""

_MARKETS_SQL = """
SELECT exchange, checked_at, ok, verified_at, best_bid, best_ask, asks, balance_aud
FROM liquid_abt.exchange_verifications WHERE exchange = ANY($1::text[])
"""

# A secondary's own incident, pause or open breaker stops it.
_STOPPED_SQL = """
SELECT x.exchange
FROM unnest($1::text[]) AS x(exchange)
WHERE EXISTS (SELECT 1 FROM liquid_abt.incidents i
              WHERE i.exchange = x.exchange AND i.phase <> 'normal')
   OR EXISTS (SELECT 1 FROM liquid_abt.exchange_controls c
              WHERE c.exchange = x.exchange AND c.purchases_paused)
   OR EXISTS (SELECT 1 FROM liquid_abt.circuit_breakers b
              WHERE b.exchange = x.exchange AND b.state = 'open')
"""

# The AUD waiting on the stopped exchange: its pending purchases of the retry window, and its
# queued (or claimed) retries. A routed purchase must fit in the secondary's balance and book.
WAITING_SQL = """
SELECT coalesce((SELECT sum(p.amount_aud) FROM bitcoin_purchases p
                 WHERE p.status = 'pending' AND lower(p.exchange_provider) = $1
                   AND p.created_at > now() - make_interval(secs => $2::float8)), 0)
     + coalesce((SELECT sum(q.amount_aud) FROM liquid_abt.retry_queue q
                 WHERE q.exchange = $1 AND q.status IN ('queued', 'in_progress')), 0)
"""


async def lock(connection: asyncpg.Connection, exchange: str) -> Route:
    """The route row, created on first use, locked until the transaction ends."""
    await connection.execute(
        "INSERT INTO liquid_abt.purchase_routes (exchange) VALUES ($1) ON CONFLICT DO NOTHING",
        exchange,
    )
    row = await connection.fetchrow(
        f"SELECT {_COLUMNS} FROM liquid_abt.purchase_routes WHERE exchange = $1 FOR UPDATE",
        exchange,
    )
    return Route(**dict(row))


async def peek(db: Executor, exchange: str) -> Route:
    row = await db.fetchrow(
        f"SELECT {_COLUMNS} FROM liquid_abt.purchase_routes WHERE exchange = $1", exchange
    )
    return Route(**dict(row)) if row else Route(exchange)


async def save(connection: asyncpg.Connection, route: Route) -> None:
    await connection.execute(
        _WRITE_SQL, route.exchange, route.routed_to, route.since, route.valid_until, route.reason,
        route.blocked_guard, route.override, route.failovers, route.reference_mid,
        route.reference_at,
    )  # fmt: skip


async def set_override(
    connection: asyncpg.Connection, exchange: str, override: str | None, actor: str
) -> Route:
    """An admin's route: a secondary's name, `none`, or None (automatic); the row is locked."""
    current = await lock(connection, exchange)
    await connection.execute(
        """UPDATE liquid_abt.purchase_routes
           SET override = $2, override_by = $3, override_at = now(), updated_at = now()
           WHERE exchange = $1""",
        exchange, override, actor,
    )  # fmt: skip
    return Route(**{**current.__dict__, "override": override})


def market_of(row: asyncpg.Record) -> Market:
    asks = json.loads(row["asks"]) if isinstance(row["asks"], str) else (row["asks"] or [])
    return Market(
        row["exchange"], row["checked_at"], row["ok"], row["verified_at"], row["best_bid"],
        row["best_ask"], tuple((Decimal(str(p)), Decimal(str(v))) for p, v in asks),
        row["balance_aud"],
    )  # fmt: skip


async def markets(db: Executor, exchanges: list[str]) -> dict[str, Market]:
    return {row["exchange"]: market_of(row) for row in await db.fetch(_MARKETS_SQL, exchanges)}


async def secondaries(db: Executor, names: list[str]) -> tuple[Secondary, ...]:
    """Each secondary's latest check and whether its own controls stop it, by preference."""
    found = await markets(db, names)
    stopped = {row["exchange"] for row in await db.fetch(_STOPPED_SQL, names)}
    return tuple(Secondary(n, found.get(n), n in stopped) for n in names)


async def waiting_aud(db: Executor, exchange: str, window: float) -> Decimal:
    return Decimal(await db.fetchval(WAITING_SQL, exchange, window))


async def routed_to(db: Executor, exchange: str) -> str | None:
    """The secondary the exchange's purchases go to now, as the platform's gate says (`buy_on`
    naming another exchange); None while they go to the exchange itself or wait."""
    buy_on = (await db.fetchrow(GATE_SQL, exchange))["buy_on"]
    return buy_on if buy_on is not None and buy_on != exchange else None


async def read_routes(db: Executor, exchanges: list[str]) -> dict[str, dict[str, Any]]:
    """Each exchange's route with the gate's answer, for the admin status and the landing page."""
    shown: dict[str, dict[str, Any]] = {}
    for exchange in exchanges:
        gate = await db.fetchrow(GATE_SQL, exchange)
        row = await db.fetchrow(
            f"SELECT {_COLUMNS}, override_by FROM liquid_abt.purchase_routes WHERE exchange = $1",
            exchange,
        )
        buy_on = gate["buy_on"]
        shown[exchange] = {
            # The route as liquid_abt_purchase_route names it: primary, a secondary, none.
            "to": "none" if buy_on is None else "primary" if buy_on == exchange else buy_on,
            "buyOn": buy_on,
            "routedTo": row["routed_to"] if row else None,
            "since": _iso(row["since"]) if row else None,
            "validUntil": _iso(row["valid_until"]) if row else None,
            "reason": row["reason"] if row else None,
            "blockedGuard": row["blocked_guard"] if row else None,
            "override": row["override"] if row else None,
            "overrideBy": row["override_by"] if row else None,
            "failovers": row["failovers"] if row else 0,
        }
    return shown


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None
