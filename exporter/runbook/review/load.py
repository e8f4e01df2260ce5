"""Reading incidents and one incident's review, each in one read-only snapshot transaction, so
that the timeline, the impact and the durations describe the same instant."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Final

import asyncpg

from exporter.database.transactions import Executor, transaction
from exporter.runbook.review import model
from exporter.runbook.review.checklist import questions
from exporter.runbook.review.model import IncidentPeriod, Notice, Review, RunbookImpact
from exporter.signals.classify import ReasonClassifier
from exporter.signals.impact import impact_report

LATEST: Final = "latest"
# The timeline starts this long before the first evidence (not before the exchange's previous
# incident ended) and goes on this long after the end (resolved pages, retries bought).
LEAD: Final = timedelta(minutes=5)
TAIL: Final = timedelta(minutes=15)
TIMELINE_LIMIT: Final = 1000
# An audit entry's time is its transaction's start: the decision that opened the incident may
# read a little before the period's start (see model.py).
_STOP_LEAD_SECONDS: Final = 60

# One row per incident, with when purchases stopped (the first stopping action from the
# incident's start) and resumed (the last resume of a resolved incident, before it closed).
PERIODS_SQL: Final = f"""
WITH periods AS (
    SELECT * FROM liquid_abt.incident_periods p
    WHERE ($1::text IS NULL OR p.exchange = $1) AND ($2::bigint IS NULL OR p.id = $2)
    ORDER BY p.id DESC LIMIT $3 OFFSET $4)
SELECT p.id, p.exchange, p.cause, p.started_at, p.ended_at,
       (SELECT min(a.at) FROM liquid_abt.audit_log a
        WHERE a.exchange = p.exchange
          AND a.at BETWEEN p.started_at - interval '{_STOP_LEAD_SECONDS} seconds'
                       AND coalesce(p.ended_at, now())
          AND ((a.action IN ('incident_opened', 'pause_purchases') AND a.result = 'success')
               OR (a.action = 'breaker_transition' AND a.detail->>'to' = 'OPEN'))) AS stopped_at,
       (SELECT max(a.at) FROM liquid_abt.audit_log a
        WHERE p.ended_at IS NOT NULL AND a.exchange = p.exchange
          AND a.at BETWEEN p.started_at AND p.ended_at
          AND a.action = 'resume_purchases' AND a.result = 'success') AS resumed_at
FROM periods p ORDER BY p.id DESC
"""

_COUNT_SQL: Final = """
SELECT count(*) FROM liquid_abt.incident_periods WHERE $1::text IS NULL OR exchange = $1
"""

_NEIGHBOURS_SQL: Final = """
SELECT (SELECT max(coalesce(ended_at, started_at)) FROM liquid_abt.incident_periods
        WHERE exchange = $1 AND id < $2) AS previous_end,
       (SELECT min(started_at) FROM liquid_abt.incident_periods
        WHERE exchange = $1 AND id > $2) AS next_start
"""

_AUDIT_SQL: Final = """
SELECT id, at, actor, action, exchange, result, cause, detail FROM liquid_abt.audit_log
WHERE (exchange = $1 OR exchange IS NULL) AND at BETWEEN $2 AND $3
ORDER BY id LIMIT $4
"""

_PAGES_SQL: Final = """
SELECT alertname, status, received_at, summary, exchange FROM liquid_abt.notifications
WHERE (exchange = $1 OR exchange IS NULL) AND received_at BETWEEN $2 AND $3
ORDER BY received_at, id LIMIT $4
"""

_NOTICES_SQL: Final = """
SELECT id, kind, tenant_id, channels, state, created_at, sent_at, attempts, message
FROM liquid_abt.customer_notices WHERE incident_id = $1 ORDER BY created_at, id
"""

# The exchange runbook's "Post-Incident Review" data collection, as written, with the incident's
# window for $INCIDENT_START and $INCIDENT_END (docs/incident-review.md quotes it; a test runs
# the quoted text against the same rows and compares).
RUNBOOK_IMPACT_SQL: Final = """
SELECT
  COUNT(*) as affected_purchases,
  SUM(amount_aud) as total_amount_affected,
  COUNT(DISTINCT tenant_id) as affected_customers
FROM bitcoin_purchases
WHERE status = 'failed'
  AND failure_reason LIKE '%API%'
  AND created_at BETWEEN $1 AND $2
"""

# A purchase that failed, now or before a retry bought it: the platform updates a retried row in
# place (docs/platform-integration.md 3.5), so a failure that was retried and succeeded is
# `completed` and known only by its retry queue row.
_FAILED_ONCE: Final = """(p.status = 'failed' OR EXISTS (
    SELECT 1 FROM liquid_abt.retry_queue q WHERE q.purchase_id = p.id::text))"""

# The failed purchases on the exchange just before the incident's start that led up to it: the
# run of failures since the last purchase that went through at its first attempt (within the
# timeline's lead-in).
_RUN_UP_SQL: Final = f"""
SELECT p.created_at, p.failure_reason FROM bitcoin_purchases p
WHERE lower(p.exchange_provider) = $1 AND {_FAILED_ONCE}
  AND p.created_at >= $2 AND p.created_at < $3
  AND p.created_at > coalesce(
      (SELECT max(c.created_at) FROM bitcoin_purchases c
       WHERE lower(c.exchange_provider) = $1 AND c.status = 'completed'
         AND c.created_at >= $2 AND c.created_at < $3
         AND NOT EXISTS (SELECT 1 FROM liquid_abt.retry_queue q WHERE q.purchase_id = c.id::text)),
      '-infinity')
ORDER BY p.created_at, p.id LIMIT 1
"""

# The exchange's failed purchases of the window (the set `admin impact-report` counts, and those
# a retry has bought since), by what became of them in the retry queue.
_RETRIES_SQL: Final = """
SELECT p.status AS purchase_status, q.status AS queue_status, count(*) AS n
FROM bitcoin_purchases p
LEFT JOIN liquid_abt.retry_queue q ON q.purchase_id = p.id::text
WHERE (p.status = 'failed' OR (p.status = 'refunded' AND p.failure_reason IS NOT NULL)
       OR q.id IS NOT NULL)
  AND p.created_at >= $1 AND p.created_at < $2 AND lower(p.exchange_provider) = $3
GROUP BY 1, 2
"""


class IncidentNotFound(LookupError):
    """No such incident; the message says which exist."""


def parse_reference(text: str) -> int | str:
    """An incident id (a whole number from 1) or `latest`; ValueError naming the value if not."""
    value = text.strip()
    if value.lower() == LATEST:
        return LATEST
    if re.fullmatch(r"[0-9]{1,18}", value) and int(value) > 0:
        return int(value)
    raise ValueError(
        f"incident {text!r}: give an incident id (a whole number from 1, as `admin incidents` "
        "lists them) or latest"
    )


async def list_incidents(
    db: Executor, *, exchange: str | None = None, limit: int = 100, offset: int = 0
) -> tuple[list[IncidentPeriod], int, datetime]:
    """Newest first; with how many there are in all and the snapshot's time."""
    async with _snapshot(db) as connection:
        now: datetime = await connection.fetchval("SELECT now()")
        rows = await connection.fetch(PERIODS_SQL, exchange, None, limit, offset)
        total = await connection.fetchval(_COUNT_SQL, exchange)
    return [_period(r) for r in rows], int(total), now


async def load_review(db: Executor, reference: int | str, classifier: ReasonClassifier) -> Review:
    """The review of incident `reference` (an id or `latest`); IncidentNotFound if none."""
    async with _snapshot(db) as connection:
        now: datetime = await connection.fetchval("SELECT now()")
        period = await _find(connection, reference)
        return await _review(connection, period, classifier, now)


async def _review(
    connection: asyncpg.Connection, period: IncidentPeriod, classifier: ReasonClassifier,
    now: datetime,
) -> Review:  # fmt: skip
    start, end = await _window(connection, period, now)
    exchange = period.exchange
    audit_rows = [_audit(r) for r in await connection.fetch(_AUDIT_SQL, exchange, start, end, 5000)]
    pages = [dict(r) for r in await connection.fetch(_PAGES_SQL, exchange, start, end, 1000)]
    notices = await _notices(connection, period.id)
    first_failure = await connection.fetchrow(_RUN_UP_SQL, exchange, start, period.started_at)
    impact_start = first_failure["created_at"] if first_failure else period.started_at
    impact_end = max(period.ended_at or now, impact_start + timedelta(microseconds=1))
    affected, amount, customers = await connection.fetchrow(
        RUNBOOK_IMPACT_SQL, impact_start, impact_end
    )
    runbook = RunbookImpact(int(affected), amount or Decimal("0"), int(customers))
    exchange_impact = await impact_report(
        connection, start=impact_start, end=impact_end, classifier=classifier,
        exchange=exchange,
    )  # fmt: skip
    retry_rows = await connection.fetch(_RETRIES_SQL, impact_start, impact_end, exchange)
    entries, cut = model.timeline(
        period, audit_rows, pages, notices or (), TIMELINE_LIMIT, first_failure
    )
    return Review(
        incident=period, generated_at=now, window_start=start, window_end=end,
        impact_start=impact_start, impact_end=impact_end, timeline=entries, timeline_cut=cut,
        runbook_impact=runbook, exchange_impact=exchange_impact,
        retries=model.retries(retry_rows),
        durations=model.durations(period, audit_rows, now, impact_start), notices=notices,
        checklist=questions(),
    )  # fmt: skip


async def _window(
    connection: asyncpg.Connection, period: IncidentPeriod, now: datetime
) -> tuple[datetime, datetime]:
    """The timeline's: LEAD before the start and TAIL after the end, but not into the exchange's
    previous or next incident, and not past now."""
    previous_end, next_start = await connection.fetchrow(
        _NEIGHBOURS_SQL, period.exchange, period.id
    )
    start = period.started_at - LEAD
    if previous_end is not None and previous_end > start:
        start = min(previous_end, period.started_at)
    end = min((period.ended_at or now) + TAIL, now)
    if next_start is not None:
        end = min(end, next_start)
    return start, max(end, period.ended_at or now)


async def _find(connection: asyncpg.Connection, reference: int | str) -> IncidentPeriod:
    newest = await connection.fetchval("SELECT max(id) FROM liquid_abt.incident_periods")
    if newest is None:
        raise IncidentNotFound(
            f"incident {reference}: no incidents recorded yet (one starts when the exporter "
            "stops an exchange's purchases)"
        )
    wanted = newest if reference == LATEST else int(reference)
    rows = await connection.fetch(PERIODS_SQL, None, wanted, 1, 0)
    if not rows:
        raise IncidentNotFound(
            f"no incident {reference}: the newest is {newest} (`admin incidents` lists them)"
        )
    return _period(rows[0])


async def _notices(connection: asyncpg.Connection, incident_id: int) -> tuple[Notice, ...] | None:
    """The incident's customer notices; None where the outbox is not installed."""
    if await connection.fetchval("SELECT to_regclass('liquid_abt.customer_notices')") is None:
        return None
    rows = await connection.fetch(_NOTICES_SQL, incident_id)
    return tuple(
        Notice(
            r["id"],
            r["kind"],
            r["tenant_id"],
            tuple(r["channels"] or ()),
            r["state"],
            r["created_at"],
            r["sent_at"],
            int(r["attempts"] or 0),
            r["message"],
        )  # fmt: skip
        for r in rows
    )


def _period(row: asyncpg.Record) -> IncidentPeriod:
    return IncidentPeriod(
        row["id"], row["exchange"], row["cause"], row["started_at"], row["ended_at"],
        row["stopped_at"], row["resumed_at"],
    )  # fmt: skip


def _audit(row: asyncpg.Record) -> dict[str, Any]:
    detail = row["detail"]
    return {**dict(row), "detail": json.loads(detail) if isinstance(detail, str) else detail}


@contextlib.asynccontextmanager
async def _snapshot(db: Executor) -> AsyncIterator[asyncpg.Connection]:
    """One read-only REPEATABLE READ transaction: every query sees the same instant."""
    if isinstance(db, asyncpg.Pool):
        async with transaction(db, isolation="repeatable_read", readonly=True) as connection:
            yield connection
    elif db.is_in_transaction():
        yield db  # the caller's transaction is the snapshot
    else:
        async with db.transaction(isolation="repeatable_read", readonly=True):
            yield db
