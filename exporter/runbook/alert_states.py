"""Recorded alert states and what the runbook path asks of them: which alerts are outages or rate
alerts (from the configured actions), whether one is still firing, and the per-exchange lock that
serialises every decision on an exchange's outage state."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from exporter.config import Config
from exporter.database.transactions import Executor

OUTAGE_ACTIONS = {"open_breaker", "pause_purchases"}


def outage_alertnames(config: Config) -> list[str]:
    """Alerts whose firing stops purchases: their resolution asks for recovery verification."""
    return [n for n, a in config.receiver.actions.items() if OUTAGE_ACTIONS & set(a)]


def rate_alertnames(config: Config) -> list[str]:
    """Alerts whose firing lowers the API rate: their resolution restores it."""
    return [n for n, a in config.receiver.actions.items() if "lower_api_rate" in a]


async def lock_exchange(connection: asyncpg.Connection, exchange: str) -> None:
    """Serialise, across replicas and until the transaction ends, everything that decides on an
    exchange's outage state: the action worker and the recovery verifier take it first."""
    await connection.execute(
        "SELECT pg_advisory_xact_lock(hashtext('liquid_abt_actions:' || $1))", exchange
    )


@dataclass(frozen=True)
class AlertState:
    """One recorded row of liquid_abt.notifications."""

    id: int
    fingerprint: str
    status: str
    starts_at: Any
    alertname: str
    exchange: str | None
    summary: str

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> AlertState:
        return cls(
            row["id"], row["fingerprint"], row["status"], row["starts_at"], row["alertname"],
            row["exchange"], row["summary"] or row["alertname"],
        )  # fmt: skip

    @property
    def cause(self) -> str:
        return f"{self.alertname} {self.status}"


# Firing states of the given alert names on an exchange with no recorded resolution. A resolution
# of the same fingerprint that started later also ends it: Alertmanager had to resolve it first.
ACTIVE_SQL = """
SELECT count(*) FROM liquid_abt.notifications f
WHERE f.status = 'firing' AND f.exchange = $1 AND f.alertname = ANY($2::text[])
  AND NOT EXISTS (
      SELECT 1 FROM liquid_abt.notifications r
      WHERE r.status = 'resolved' AND r.fingerprint = f.fingerprint AND r.starts_at >= f.starts_at)
"""

RESOLVED_ALREADY_SQL = """
SELECT EXISTS (SELECT 1 FROM liquid_abt.notifications
               WHERE status = 'resolved' AND fingerprint = $1 AND starts_at >= $2)
"""


async def still_firing(connection: asyncpg.Connection, exchange: str, names: list[str]) -> bool:
    """Whether any of the named alerts fires on the exchange (no resolution recorded)."""
    return bool(await connection.fetchval(ACTIVE_SQL, exchange, names))


async def resolved_already(connection: asyncpg.Connection, state: AlertState) -> bool:
    """Whether this firing state's resolution was recorded (a stale firing)."""
    return bool(await connection.fetchval(RESOLVED_ALREADY_SQL, state.fingerprint, state.starts_at))


# Each alert (name) firing on an exchange by the recorded notifications, since its earliest
# unresolved firing state: the same "no later resolution" rule as ACTIVE_SQL.
FIRING_SQL = """
SELECT f.exchange, f.alertname, min(f.starts_at) AS since
FROM liquid_abt.notifications f
WHERE f.status = 'firing' AND f.exchange = ANY($1::text[])
  AND NOT EXISTS (
      SELECT 1 FROM liquid_abt.notifications r
      WHERE r.status = 'resolved' AND r.fingerprint = f.fingerprint AND r.starts_at >= f.starts_at)
GROUP BY f.exchange, f.alertname
ORDER BY since, f.alertname
"""


@dataclass(frozen=True)
class FiringAlert:
    alertname: str
    since: datetime


async def firing_alerts(db: Executor, exchanges: list[str]) -> dict[str, list[FiringAlert]]:
    """The alerts Alertmanager last reported firing, per exchange, oldest first."""
    found: dict[str, list[FiringAlert]] = {exchange: [] for exchange in exchanges}
    for row in await db.fetch(FIRING_SQL, exchanges):
        found[row["exchange"]].append(FiringAlert(row["alertname"], row["since"]))
    return found
