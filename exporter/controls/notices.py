"""The customer-notice outbox: what the planner inserts, what the platform's notifier consumes.

The exporter inserts notices (`insert`, each exactly once on the table's unique key) and lets an
operator hold, release or cancel them; the notifier claims, completes and fails them with the
statements below, copied verbatim in docs/platform-integration.md (a test keeps them identical).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import asyncpg

from exporter.config import NoticesConfig
from exporter.controls import audit
from exporter.database.transactions import Executor, transaction

NOTICE_STATES = ("queued", "held", "claimed", "sent", "failed", "cancelled")

_COLUMNS = """id, incident_id, exchange, kind, seq, tenant_id, channels, message, context, state,
              created_at, ready_at, claimed_at, claimed_by, sent_at, attempts, last_error"""


@dataclass(frozen=True)
class NoticeRow:
    id: int
    incident_id: int | None
    exchange: str
    kind: str
    seq: int
    tenant_id: str | None
    channels: list[str]
    message: str
    context: dict[str, Any]
    state: str
    created_at: datetime
    ready_at: datetime
    claimed_at: datetime | None
    claimed_by: str | None
    sent_at: datetime | None
    attempts: int
    last_error: str | None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> NoticeRow:
        values = {f.name: row[f.name] for f in fields(cls)}
        context = values["context"]
        values["context"] = json.loads(context) if isinstance(context, str) else context
        values["channels"] = list(values["channels"])
        return cls(**values)

    def as_json(self) -> dict[str, Any]:
        """As the admin API shows it (camelCase)."""
        return {
            "id": self.id,
            "incidentId": self.incident_id,
            "exchange": self.exchange,
            "kind": self.kind,
            "seq": self.seq,
            "tenantId": self.tenant_id,
            "channels": self.channels,
            "message": self.message,
            "context": self.context,
            "state": self.state,
            "createdAt": self.created_at.isoformat(),
            "readyAt": self.ready_at.isoformat(),
            "claimedAt": _iso(self.claimed_at),
            "claimedBy": self.claimed_by,
            "sentAt": _iso(self.sent_at),
            "attempts": self.attempts,
            "lastError": self.last_error,
        }


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


# ---- The exporter's side ----

INSERT_SQL = """
INSERT INTO liquid_abt.customer_notices
    (incident_id, exchange, kind, seq, tenant_id, channels, message, context, ready_at, state)
SELECT n.incident_id, n.exchange, n.kind, n.seq, n.tenant_id, string_to_array(n.channels, ','),
       n.message, n.context::jsonb, n.ready_at, n.state
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::int[], $5::text[], $6::text[], $7::text[],
            $8::text[], $9::timestamptz[], $10::text[])
     AS n(incident_id, exchange, kind, seq, tenant_id, channels, message, context, ready_at, state)
ON CONFLICT (coalesce(incident_id, 0), kind, seq, coalesce(tenant_id, '')) DO NOTHING
RETURNING id, kind
"""


# (incident_id, kind, seq, tenant_id): the table's unique key, each notice exactly once.
NoticeKey = tuple[int | None, str, int, str | None]


@dataclass(frozen=True)
class Notice:
    """A notice to insert (the row, without what the database fills): what the planner plans."""

    incident_id: int | None
    exchange: str
    kind: str
    seq: int
    tenant_id: str | None
    channels: tuple[str, ...]
    message: str
    context: dict[str, Any]
    ready_at: datetime
    state: str = "queued"

    @property
    def key(self) -> NoticeKey:
        return (self.incident_id, self.kind, self.seq, self.tenant_id)


async def insert(db: Executor, notices: Sequence[Notice]) -> list[tuple[int, str]]:
    """Insert what is not there yet, in one statement; returns (id, kind) of the new rows. A
    notice another replica (or an earlier run) inserted is skipped by the unique key."""
    if not notices:
        return []
    rows = await db.fetch(
        INSERT_SQL,
        [n.incident_id for n in notices], [n.exchange for n in notices],
        [n.kind for n in notices], [n.seq for n in notices], [n.tenant_id for n in notices],
        [",".join(n.channels) for n in notices], [n.message for n in notices],
        [json.dumps(n.context, default=str) for n in notices], [n.ready_at for n in notices],
        [n.state for n in notices],
    )  # fmt: skip
    return [(r["id"], r["kind"]) for r in rows]


async def planned_keys(db: Executor, incident_ids: Sequence[int]) -> dict[NoticeKey, str]:
    """The notices of these incidents, whatever their state: key -> state."""
    rows = await db.fetch(
        """SELECT incident_id, kind, seq, tenant_id, state FROM liquid_abt.customer_notices
           WHERE incident_id = ANY($1::bigint[])""",
        list(incident_ids),
    )
    return {(r["incident_id"], r["kind"], r["seq"], r["tenant_id"]): r["state"] for r in rows}


# The tenants of one incident's purchase_failed notices: purchases on the incident's exchange
# that failed in it (from `$2` seconds before it started: the platform fails before a probe
# round notices), were queued for retry, and are not bought yet.
TENANT_FAILURES_SQL = """
SELECT i.id AS incident_id, p.tenant_id, min(p.created_at) AS failed_at,
       min(q.next_attempt_at) FILTER (WHERE q.status = 'queued') AS next_retry_at,
       array_agg(p.id::text ORDER BY p.created_at, p.id) AS purchase_ids
FROM liquid_abt.incident_periods i
JOIN bitcoin_purchases p
  ON lower(p.exchange_provider) = i.exchange
 AND p.created_at >= i.started_at - make_interval(secs => $2::float8)
 AND p.created_at <= coalesce(i.ended_at, $3::timestamptz)
JOIN liquid_abt.retry_queue q ON q.purchase_id = p.id::text
WHERE i.id = ANY($1::bigint[]) AND p.tenant_id IS NOT NULL AND p.status <> 'completed'
GROUP BY i.id, p.tenant_id
"""


async def tenant_failures(
    db: Executor, incident_ids: Sequence[int], margin: float, now: datetime
) -> list[asyncpg.Record]:
    return await db.fetch(TENANT_FAILURES_SQL, list(incident_ids), margin, now)


# ---- The platform's side: each is one statement, copied verbatim in
# docs/platform-integration.md section 5 (a test keeps the two identical). ----

# Who an incident affected, for its broadcast notices (tenant_id NULL): every tenant with a
# purchase on the exchange created while purchases were stopped (failed, held by the pause and
# bought later, or still waiting), or one that failed or was queued for retry in the `$2`
# seconds before the incident's first evidence.
AFFECTED_TENANTS_SQL = """
SELECT DISTINCT p.tenant_id
FROM liquid_abt.incident_periods i
JOIN bitcoin_purchases p
  ON lower(p.exchange_provider) = i.exchange
 AND p.created_at >= i.started_at - make_interval(secs => $2::float8)
 AND p.created_at <= coalesce(i.ended_at, now())
WHERE i.id = $1
  AND p.tenant_id IS NOT NULL
  AND (p.created_at >= i.started_at
       OR p.status <> 'completed'
       OR EXISTS (SELECT 1 FROM liquid_abt.retry_queue q WHERE q.purchase_id = p.id::text))
ORDER BY p.tenant_id
"""

# Ready notices nobody holds (SKIP LOCKED), and claims whose lease ran out (a notifier that
# crashed after claiming): they become claimed by `$3`, attempts + 1.
CLAIM_SQL = """
WITH due AS (
    SELECT n.id
    FROM liquid_abt.customer_notices n
    WHERE (n.state = 'queued' AND n.ready_at <= now())
       OR (n.state = 'claimed' AND n.attempts < $4
           AND n.claimed_at <= now() - make_interval(secs => $2::float8))
    ORDER BY n.ready_at, n.id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE liquid_abt.customer_notices n
SET state = 'claimed', claimed_at = now(), claimed_by = $3, attempts = n.attempts + 1,
    updated_at = now()
FROM due
WHERE n.id = due.id
RETURNING n.*
"""

COMPLETE_SQL = """
UPDATE liquid_abt.customer_notices
SET state = 'sent', sent_at = now(), last_error = NULL, updated_at = now()
WHERE id = $1 AND state = 'claimed' AND claimed_by = $2
"""

# Back to queued after min(base * 2^(attempts - 1), cap) seconds, or failed (dead) once
# `attempts` reached `$4`.
FAIL_SQL = """
UPDATE liquid_abt.customer_notices
SET state = CASE WHEN attempts >= $4 THEN 'failed' ELSE 'queued' END,
    last_error = $3,
    updated_at = now(),
    ready_at = CASE
        WHEN attempts >= $4 THEN ready_at
        ELSE now() + make_interval(secs =>
            least($5::float8 * power(2, least(greatest(attempts - 1, 0), 30)), $6::float8))
    END
WHERE id = $1 AND state = 'claimed' AND claimed_by = $2
RETURNING state
"""


async def affected_tenants(db: Executor, incident_id: int, margin: float) -> list[str]:
    return [r["tenant_id"] for r in await db.fetch(AFFECTED_TENANTS_SQL, incident_id, margin)]


async def claim(db: Executor, limit: int, consumer: str, config: NoticesConfig) -> list[NoticeRow]:
    """Claim up to `limit` ready notices for `consumer` (a name unique to this claimant)."""
    rows = await db.fetch(CLAIM_SQL, limit, config.claim_lease, consumer, config.max_attempts)
    return sorted((NoticeRow.from_row(r) for r in rows), key=lambda n: (n.ready_at, n.id))


async def complete(db: Executor, notice_id: int, consumer: str) -> bool:
    """Mark a claimed notice sent; False if `consumer` does not hold the claim."""
    return await db.execute(COMPLETE_SQL, notice_id, consumer) == "UPDATE 1"


async def fail(
    db: Executor, notice_id: int, consumer: str, error: str, config: NoticesConfig
) -> str | None:
    """A delivery failed: queued again after a backoff, or failed for good; None if `consumer`
    does not hold the claim."""
    return await db.fetchval(
        FAIL_SQL, notice_id, consumer, error, config.max_attempts, config.retry_base_delay,
        config.retry_max_delay,
    )  # fmt: skip


# ---- Operators ----

# action -> (states it applies to, the state it sets)
OPERATIONS = {
    "hold": (("queued",), "held"),
    "release": (("held",), "queued"),
    "cancel": (("queued", "held"), "cancelled"),
}


async def operate(
    db: Executor, action: str, *, ids: Sequence[int] = (), incident_id: int | None = None,
    actor: str = audit.ACTOR_ADMIN, reason: str | None = None,
) -> list[int]:  # fmt: skip
    """Hold, release or cancel notices (by id, or every one of an incident), with one audit
    entry; returns the ids changed. Claimed notices are in flight and are left alone; holding
    or cancelling an incident's incident_started governs what is planned for it next."""
    if action not in OPERATIONS:
        raise ValueError(f"unknown action {action!r}: use {', '.join(OPERATIONS)}")
    if not ids and incident_id is None:
        raise ValueError("name the notices: ids, or an incident")
    states, new_state = OPERATIONS[action]
    async with transaction(db) as connection:
        rows = await connection.fetch(
            """UPDATE liquid_abt.customer_notices SET state = $1, updated_at = now()
               WHERE state = ANY($2::text[])
                 AND (id = ANY($3::bigint[]) OR incident_id = $4)
               RETURNING id, exchange""",
            new_state, list(states), list(ids), incident_id,
        )  # fmt: skip
        changed = sorted(r["id"] for r in rows)
        exchanges = sorted({r["exchange"] for r in rows})
        await audit.record(
            connection, actor=actor, action=f"{action}_customer_notices",
            result=audit.CHANGED if changed else audit.UNCHANGED,
            exchange=exchanges[0] if len(exchanges) == 1 else None, cause=reason,
            detail={"ids": changed[:100], "changed": len(changed), "incident_id": incident_id},
        )  # fmt: skip
    return changed


_FILTER = """($1::bigint IS NULL OR incident_id = $1) AND ($2::text IS NULL OR state = $2)
             AND ($3::text IS NULL OR kind = $3) AND ($4::text IS NULL OR exchange = $4)"""


async def list_notices(
    db: Executor, *, incident_id: int | None = None, state: str | None = None,
    kind: str | None = None, exchange: str | None = None, limit: int = 100, offset: int = 0,
) -> list[NoticeRow]:  # fmt: skip
    """Newest first."""
    rows = await db.fetch(
        f"""SELECT {_COLUMNS} FROM liquid_abt.customer_notices WHERE {_FILTER}
            ORDER BY id DESC LIMIT $5 OFFSET $6""",
        incident_id, state, kind, exchange, limit, offset,
    )  # fmt: skip
    return [NoticeRow.from_row(r) for r in rows]


async def count_notices(
    db: Executor, *, incident_id: int | None = None, state: str | None = None,
    kind: str | None = None, exchange: str | None = None,
) -> int:  # fmt: skip
    return int(
        await db.fetchval(
            f"SELECT count(*) FROM liquid_abt.customer_notices WHERE {_FILTER}",
            incident_id,
            state,
            kind,
            exchange,
        )  # fmt: skip
    )


async def delete_finished(db: Executor, older_than: float) -> int:
    """Retention: sent, failed and cancelled notices older than `older_than` seconds."""
    deleted = await db.fetchval(
        """WITH gone AS (
               DELETE FROM liquid_abt.customer_notices
               WHERE state IN ('sent', 'failed', 'cancelled')
                 AND updated_at < now() - make_interval(secs => $1::float8)
               RETURNING 1)
           SELECT count(*) FROM gone""",
        older_than,
    )
    return int(deleted)
