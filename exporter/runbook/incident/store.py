"""The incident row of each exchange in PostgreSQL: locked and read for a decision, written back,
and read without a lock for the admin status."""

from __future__ import annotations

import json
from typing import Any

import asyncpg

from exporter.database.transactions import Executor
from exporter.runbook.incident.state import Incident

_COLUMNS = """exchange, phase, cause, started_at, healthy_since, relapses, next_attempt_at,
              probation_until, last_closed_at, lease_until, lease_token, rate_lowered_at,
              rate_limited_seen_at"""
_LOCK_SQL = f"SELECT {_COLUMNS} FROM liquid_abt.incidents WHERE exchange = $1 FOR UPDATE"
_PEEK_SQL = f"SELECT {_COLUMNS} FROM liquid_abt.incidents WHERE exchange = $1"
_WRITE_SQL = """
UPDATE liquid_abt.incidents
   SET phase = $2, cause = $3, started_at = $4, healthy_since = $5, relapses = $6,
       next_attempt_at = $7, probation_until = $8, last_closed_at = $9, lease_until = $10,
       lease_token = $11, rate_lowered_at = $12, rate_limited_seen_at = $13, updated_at = now()
 WHERE exchange = $1"""


async def lock(connection: asyncpg.Connection, exchange: str) -> Incident:
    """The row, created on first use, locked until the transaction ends."""
    await connection.execute(
        "INSERT INTO liquid_abt.incidents (exchange) VALUES ($1) ON CONFLICT DO NOTHING", exchange
    )
    return Incident(**dict(await connection.fetchrow(_LOCK_SQL, exchange)))


async def peek(db: Executor, exchange: str) -> Incident:
    """The row as it is, without creating or locking it (normal when there is none)."""
    row = await db.fetchrow(_PEEK_SQL, exchange)
    return Incident(**dict(row)) if row else Incident(exchange)


async def save(connection: asyncpg.Connection, incident: Incident) -> None:
    await connection.execute(_WRITE_SQL, *incident.values())


async def save_verification(
    connection: asyncpg.Connection, exchange: str, verification: dict[str, Any]
) -> None:
    await connection.execute(
        "UPDATE liquid_abt.incidents SET last_verification = $2::jsonb WHERE exchange = $1",
        exchange, json.dumps(verification, default=str),
    )  # fmt: skip


async def read_incidents(
    db: Executor, exchanges: list[str]
) -> dict[str, tuple[Incident, dict[str, Any] | None]]:
    """Each exchange's incident and its last recovery verification, for the admin status: a
    plain read, no lock, no row created (an exchange never in an incident reads as normal)."""
    rows = await db.fetch(
        f"""SELECT {_COLUMNS}, last_verification FROM liquid_abt.incidents
            WHERE exchange = ANY($1::text[])""",
        exchanges,
    )
    found = {
        row["exchange"]: (
            Incident(**{k: v for k, v in dict(row).items() if k != "last_verification"}),
            json.loads(row["last_verification"]) if row["last_verification"] else None,
        )
        for row in rows
    }
    return {exchange: found.get(exchange, (Incident(exchange), None)) for exchange in exchanges}
