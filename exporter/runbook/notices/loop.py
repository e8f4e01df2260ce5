"""Runs the notice planner on every replica: read, plan (pure), insert ON CONFLICT DO NOTHING.

Every replica runs it, so a notice does not wait for one particular replica; the table's unique
key makes each notice exactly once across replicas and restarts. An idle replica costs one
read of liquid_abt.incident_periods (a row per incident) every `notices.idle_interval`: nothing
else runs until an incident is open or recently closed.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any, Protocol

import asyncpg
from prometheus_client import CollectorRegistry, Counter

from exporter.config import NOTICE_KINDS, Config, parse_duration
from exporter.controls import notices as outbox
from exporter.database.background import run_forever
from exporter.runbook.notices.plan import IncidentView, NoticePolicy, TenantImpact, plan

log = logging.getLogger(__name__)

# Incidents open, or closed within `follow_up`; with what the exchange's pause says of its end.
# An incident that closed while an operator's hold kept purchases paused (the automation's resume
# is refused under a manual hold) is not over for customers: it is `held_open` while the hold
# lasts; once purchases were resumed after its end (pause.py's audit entry), it stays in view
# until its incident_resolved is planned, however long the hold was. The exchange's latest
# incident only.
IN_VIEW_SQL = """
WITH periods AS (
    SELECT i.id, i.exchange, i.cause, i.started_at, i.ended_at, c.manual_hold, c.paused_at,
           c.pause_estimated_duration,
           i.ended_at IS NOT NULL
               AND i.id = max(i.id) OVER (PARTITION BY i.exchange) AS latest_closed
    FROM liquid_abt.incident_periods i
    LEFT JOIN liquid_abt.exchange_controls c ON c.exchange = i.exchange AND c.purchases_paused
), seen AS (
    SELECT *, coalesce(latest_closed AND manual_hold AND paused_at <= ended_at, false) AS held_open
    FROM periods
)
SELECT id, exchange, cause, started_at, ended_at, manual_hold, paused_at,
       pause_estimated_duration, held_open, coalesce($2::timestamptz, now()) AS now
FROM seen
WHERE ended_at IS NULL
   OR ended_at > coalesce($2::timestamptz, now()) - make_interval(secs => $1::float8)
   OR held_open
   OR latest_closed
      AND EXISTS (SELECT 1 FROM liquid_abt.customer_notices n WHERE n.incident_id = seen.id
                  AND n.kind = 'incident_started' AND n.state <> 'cancelled')
      AND NOT EXISTS (SELECT 1 FROM liquid_abt.customer_notices n WHERE n.incident_id = seen.id
                      AND n.kind = 'incident_resolved')
      AND EXISTS (SELECT 1 FROM liquid_abt.audit_log a WHERE a.exchange = seen.exchange
                  AND a.action = 'resume_purchases' AND a.result = 'success'
                  AND a.at > seen.ended_at)
ORDER BY id
"""

# The exchange purchases are routed to while an incident stops them (failover), or None.
RoutedTo = Callable[[asyncpg.Connection, str], Awaitable[str | None]]

_WORDS = re.compile(r"(\d+(?:\.\d+)?)\s*(second|sec|minute|min|hour|hr|day)s?\b", re.IGNORECASE)
_WORD_SECONDS = {"second": 1, "sec": 1, "minute": 60, "min": 60, "hour": 3600, "hr": 3600,
                 "day": 86400}  # fmt: skip


def estimate_seconds(text: str | None) -> float | None:
    """An admin's estimated duration (`2h`, `90 minutes`, `1 hour 30 minutes`) in seconds, or
    None when it is not a duration (free text like "until Kraken says")."""
    if not text:
        return None
    try:
        return parse_duration(text.strip())
    except ValueError:
        pass
    found = _WORDS.findall(text)
    if not found or _WORDS.sub("", text).strip(" ,and") != "":
        return None
    return sum(float(n) * _WORD_SECONDS[unit.lower()] for n, unit in found) or None


class Row(Protocol):
    """A row of IN_VIEW_SQL: an asyncpg record, or a dict with its columns (the notice
    simulator builds its rows from the simulated world)."""

    def __getitem__(self, key: str) -> Any: ...


def estimated_end(row: Row) -> datetime | None:
    """Where known: an admin's pause (a manual hold, the one pause a person sized) with a
    duration, counted from when purchases were paused. Maintenance on Kraken has no announced
    end in its API, so an operator gives one by pausing with `--estimated-duration`."""
    if not row["manual_hold"] or row["paused_at"] is None:
        return None
    seconds = estimate_seconds(row["pause_estimated_duration"])
    return row["paused_at"] + timedelta(seconds=seconds) if seconds else None


def incident_view(row: Row, routed_to: str | None = None) -> IncidentView:
    """The incident as the planner is told it, from a row of IN_VIEW_SQL and where the gate
    routes the exchange's purchases meanwhile. One closed under an operator's hold is still
    open for customers: purchases are stopped, so it is not "restored" until the hold is lifted.
    """
    ended = None if row["held_open"] else row["ended_at"]
    return IncidentView(
        row["id"], row["exchange"], row["cause"], row["started_at"], ended, estimated_end(row),
        routed_to,
    )  # fmt: skip


class NoticeMetrics:
    """Notices this replica inserted (the outbox's states are gauges read from the table)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.planned = Counter(
            "liquid_abt_customer_notices_planned",
            "Customer notices this replica inserted into the outbox, by kind (another replica "
            "may have inserted the same notice first: each is in the outbox once).",
            ["kind"], registry=registry,
        )  # fmt: skip
        for kind in NOTICE_KINDS:
            self.planned.labels(kind)


class NoticeLoop:
    """Plans the customer notices of every incident in view, on every replica."""

    def __init__(
        self, pool: asyncpg.Pool, config: Config, *, metrics: NoticeMetrics | None = None,
        margin: float = 0.0, routed_to: RoutedTo | None = None,
    ) -> None:  # fmt: skip
        self._pool = pool
        self._config = config.notices
        self._policy = NoticePolicy.from_config(config.notices)
        self._metrics = metrics
        # Failed purchases this long before an incident's first evidence count as its own (the
        # platform fails before a probe round notices): one probe interval and timeout.
        self._margin = margin
        # Failover (the lead wires it): None means no incident is routed.
        self._routed_to = routed_to
        # Whether the last round saw an incident open or recently closed (the loop's cadence).
        self.in_view = False

    async def step(self, now: datetime | None = None) -> list[tuple[int, str]]:
        """One round; returns (id, kind) of the notices this replica inserted. `now` is the
        database's clock unless a test gives one."""
        async with self._pool.acquire() as connection:
            rows = await connection.fetch(IN_VIEW_SQL, self._config.follow_up, now)
            self.in_view = bool(rows)
            if not rows:
                return []
            now = rows[0]["now"]
            assert now is not None
            ids = [r["id"] for r in rows]
            incidents = [await self._view(connection, r) for r in rows]
            queued = await outbox.planned_keys(connection, ids)
            failures = await outbox.tenant_failures(connection, ids, self._margin, now)
            impacts = [
                TenantImpact(
                    r["incident_id"],
                    r["tenant_id"],
                    r["failed_at"],
                    r["next_retry_at"],
                    tuple(r["purchase_ids"]),
                )  # fmt: skip
                for r in failures
            ]
            due = plan(incidents, queued, impacts, now, self._policy)
            inserted = await outbox.insert(connection, due)
        if inserted:
            self._announce(inserted)
        return inserted

    async def _view(self, connection: asyncpg.Connection, row: asyncpg.Record) -> IncidentView:
        routed = None
        if self._routed_to is not None and row["ended_at"] is None:  # a hold routes nothing
            routed = await self._routed_to(connection, row["exchange"])
        return incident_view(row, routed)

    def _announce(self, inserted: list[tuple[int, str]]) -> None:
        kinds: dict[str, int] = {}
        for _, kind in inserted:
            kinds[kind] = kinds.get(kind, 0) + 1
            if self._metrics is not None:
                self._metrics.planned.labels(kind).inc()
        log.info("customer notices queued", extra={"notices": kinds})

    async def run(self) -> None:
        """A round every `notices.interval` while an incident is in view, else every
        `notices.idle_interval`; finished notices past `notices.retention` are deleted hourly."""
        config = self._config
        last_retention = -1e18
        loop = asyncio.get_running_loop()

        async def iteration() -> float:
            nonlocal last_retention
            await self.step()
            if loop.time() - last_retention >= 3600:
                await outbox.delete_finished(self._pool, config.retention)
                last_retention = loop.time()
            return config.interval if self.in_view else config.idle_interval

        await run_forever("customer-notices", iteration, retry_after=config.idle_interval)
