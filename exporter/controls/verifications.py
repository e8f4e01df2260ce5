"""Failover's evidence in liquid_abt.exchange_verifications (migration 0007): one row per exchange,
the newest recovery check with the market it saw, whichever replica ran it.

Written by the verification watch (exporter/runbook/verification_watch.py): a secondary's row on
each of its checks, passed or failed; the primary's only from good evidence (a passing check or a
good probe round), so its quote stays its last good one through an outage. `verified_at` moves
only on a pass. One statement per write, and none when another replica wrote the row within the
interval: every replica keeps it fresh, the database sees about one write per interval.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import asyncpg

from exporter.signals.exchange import Check, Quote

# The row as it is after the statement: ours when written, else the other replica's.
# `checked_at` is the database's clock less the evidence's age, so replicas' clocks never matter.
RECORD_SQL = """
WITH written AS (
    INSERT INTO liquid_abt.exchange_verifications AS v
        (exchange, replica, checked_at, ok, checks, best_bid, best_ask, asks, balance_aud,
         verified_at)
    SELECT $1, $2, at, $4, $5::jsonb, $6, $7, $8::jsonb, $9, CASE WHEN $4 THEN at END
    FROM (SELECT clock_timestamp() - make_interval(secs => $3) AS at) now
    ON CONFLICT (exchange) DO UPDATE SET
        replica = excluded.replica, checked_at = excluded.checked_at, ok = excluded.ok,
        checks = excluded.checks, best_bid = excluded.best_bid, best_ask = excluded.best_ask,
        asks = excluded.asks, balance_aud = excluded.balance_aud,
        verified_at = coalesce(excluded.verified_at, v.verified_at)
    WHERE v.checked_at <= excluded.checked_at - make_interval(secs => $10)
    RETURNING ok, checked_at, verified_at
)
SELECT true AS written, ok, extract(epoch FROM clock_timestamp() - checked_at)::float8 AS age,
       extract(epoch FROM verified_at)::float8 AS verified
FROM written
UNION ALL
SELECT false, ok, extract(epoch FROM clock_timestamp() - checked_at)::float8,
       extract(epoch FROM verified_at)::float8
FROM liquid_abt.exchange_verifications
WHERE exchange = $1 AND NOT EXISTS (SELECT 1 FROM written)
"""

READ_SQL = """
SELECT exchange, replica, checked_at, ok, checks, best_bid, best_ask, asks, balance_aud,
       verified_at
FROM liquid_abt.exchange_verifications ORDER BY exchange
"""


@dataclass(frozen=True)
class Evidence:
    """What one write says: passed or not, each check, and the market seen; `age` is how long
    ago it was seen (seconds)."""

    ok: bool
    checks: tuple[Check, ...]
    quote: Quote | None
    age: float = 0.0


@dataclass(frozen=True)
class RowState:
    """The row after a write attempt: `written` by us or not; `age` of its check (seconds);
    `verified` the Unix time of its newest pass (None before the first)."""

    written: bool
    ok: bool
    age: float
    verified: float | None


@dataclass(frozen=True)
class Verification:
    """A row as failover reads it."""

    exchange: str
    replica: str
    checked_at: datetime
    ok: bool
    checks: list[dict[str, object]]
    quote: Quote
    verified_at: datetime | None


def _checks_json(checks: tuple[Check, ...]) -> str:
    return json.dumps([{"name": c.name, "ok": c.ok, "detail": c.detail} for c in checks])


def _asks_json(quote: Quote | None) -> str:
    asks = quote.asks if quote is not None else ()
    # Strings keep every digit of a Decimal; numeric in SQL reads them as they are.
    return json.dumps([[str(price), str(volume)] for price, volume in asks])


async def record(
    pool: asyncpg.Pool | asyncpg.Connection,
    exchange: str,
    replica: str,
    evidence: Evidence,
    *,
    skip_within: float,
) -> RowState:
    """Upsert the row unless it was written less than `skip_within` seconds before this
    evidence; one statement either way. Returns the row as it now is."""
    q = evidence.quote
    row = await pool.fetchrow(
        RECORD_SQL, exchange, replica, max(evidence.age, 0.0), evidence.ok,
        _checks_json(evidence.checks), q.best_bid if q else None, q.best_ask if q else None,
        _asks_json(q), q.balance_aud if q else None, skip_within,
    )  # fmt: skip
    assert row is not None  # the row exists after the statement: ours or another replica's
    return RowState(row["written"], row["ok"], row["age"], row["verified"])


async def read_all(pool: asyncpg.Pool | asyncpg.Connection) -> dict[str, Verification]:
    """Every exchange's row, by exchange."""
    rows = await pool.fetch(READ_SQL)
    return {row["exchange"]: _verification(row) for row in rows}


def _verification(row: asyncpg.Record) -> Verification:
    asks = tuple((Decimal(p), Decimal(v)) for p, v in json.loads(row["asks"]))
    quote = Quote(row["best_bid"], row["best_ask"], asks, row["balance_aud"])
    return Verification(
        row["exchange"], row["replica"], row["checked_at"], row["ok"],
        json.loads(row["checks"]), quote, row["verified_at"],
    )  # fmt: skip
