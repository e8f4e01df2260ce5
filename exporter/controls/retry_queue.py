"""The retry queue: the runbook's queueFailedPurchasesForRetry, with exponential backoff.

The exporter fills it from the purchases themselves (`enqueue_retry_eligible`, every few seconds
on every replica: runbook/retry_filler.py) and makes it due on recovery (`make_due`); the platform
consumes it (`claim_due`, `complete`, `fail`, `release`), with the SQL written out in
docs/platform-integration.md.
The claim never hands out a purchase while its exchange is paused or its circuit breaker is open.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

from exporter.config import PurchasesConfig, RetryConfig
from exporter.controls import audit
from exporter.controls.gate import BUY_ON, ROUTE_JOINS
from exporter.database.transactions import Executor, transaction
from exporter.signals.classify import ReasonClassifier

QUEUE_STATUSES = ("queued", "in_progress", "succeeded", "failed", "cancelled")

_COLUMNS = """id, purchase_id, exchange, tenant_id, amount_aud, failure_reason, attempts,
              max_attempts, next_attempt_at, status, last_error, cause, enqueued_at, updated_at,
              retry_on"""


@dataclass(frozen=True)
class QueueEntry:
    id: int
    purchase_id: str
    exchange: str
    tenant_id: str | None
    amount_aud: Decimal | None
    failure_reason: str | None
    attempts: int
    max_attempts: int
    next_attempt_at: datetime
    status: str
    last_error: str | None
    cause: str | None
    enqueued_at: datetime
    updated_at: datetime
    # The exchange to buy this retry on, as the routed claim handed it out (None: its exchange).
    retry_on: str | None = None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> QueueEntry:
        # By field name, so a column added to the table later does not break the platform's claim.
        return cls(**{f.name: row[f.name] for f in fields(cls)})

    def as_json(self) -> dict[str, Any]:
        """As the admin API shows it: camelCase names; money a decimal string (a float would
        round cents)."""
        return {
            "id": self.id,
            "purchaseId": self.purchase_id,
            "exchange": self.exchange,
            "tenantId": self.tenant_id,
            "amountAud": None if self.amount_aud is None else str(self.amount_aud),
            "failureReason": self.failure_reason,
            "attempts": self.attempts,
            "maxAttempts": self.max_attempts,
            "nextAttemptAt": self.next_attempt_at.isoformat(),
            "status": self.status,
            "lastError": self.last_error,
            "cause": self.cause,
            "enqueuedAt": self.enqueued_at.isoformat(),
            "updatedAt": self.updated_at.isoformat(),
            "retryOn": self.retry_on,
        }


def backoff_delay(attempt: int, retry_config: RetryConfig, rng: random.Random) -> float:
    """Seconds to wait before retry number `attempt + 1` (attempt 0 is the first retry).

    base * factor^attempt, capped at max_delay, then shortened by up to `jitter` (a fraction):
    the jitter only ever subtracts, so the cap (the runbook's maxRetryDelay) holds and purchases
    that reached the cap still spread out instead of retrying in one burst.
    """
    if attempt < 0:
        raise ValueError(f"attempt must be 0 or more, got {attempt}")
    try:
        raw = retry_config.base_delay * retry_config.factor**attempt
    except OverflowError:  # far beyond the cap anyway
        raw = retry_config.max_delay
    return min(raw, retry_config.max_delay) * (1.0 - retry_config.jitter * rng.random())


# The runbook's retry-eligible query. The reason test is done on the classified reason (in Python,
# with the same classifier as the metrics), so "EOrder:Insufficient funds" counts as excluded too.
_CANDIDATES_SQL = """
SELECT p.id::text AS purchase_id, lower(p.exchange_provider) AS exchange, p.tenant_id,
       p.amount_aud, p.failure_reason, p.retry_count, p.created_at
FROM bitcoin_purchases p
WHERE p.status = 'failed'
  AND p.retry_count < $1
  AND p.created_at > $2::timestamptz - make_interval(secs => $3::float8)
  AND ($4::text IS NULL OR lower(p.exchange_provider) = $4)
  -- Queued once, ever: skip what is in already (the filler runs this every few seconds; the
  -- unique purchase_id below still decides a race between replicas).
  AND NOT EXISTS (SELECT 1 FROM liquid_abt.retry_queue q WHERE q.purchase_id = p.id::text)
  -- In batches after the previous one's last row (none for the first): an outage storm has
  -- hundreds of thousands of failures, each with its own text, too many to hold at once.
  AND ($5::timestamptz IS NULL OR (p.created_at, p.id::text) > ($5::timestamptz, $6::text))
ORDER BY p.created_at, p.id::text
LIMIT $7
"""
# Failed purchases read, classified and queued per statement (bounds the memory of a storm).
CANDIDATES_BATCH = 5000

_INSERT_SQL = """
INSERT INTO liquid_abt.retry_queue
    (purchase_id, exchange, tenant_id, amount_aud, failure_reason, max_attempts, next_attempt_at,
     cause, enqueued_at)
SELECT *, $9::timestamptz
FROM unnest($1::text[], $2::text[], $3::text[], $4::numeric[], $5::text[], $6::int[],
            $7::timestamptz[], $8::text[])
ON CONFLICT (purchase_id) DO NOTHING
RETURNING purchase_id
"""


def _remaining_attempts(retry_count: int, purchases: PurchasesConfig, retry: RetryConfig) -> int:
    # The runbook caps retries per purchase (retry_count < 3): the queue never exceeds what is left.
    return max(1, min(retry.max_attempts, purchases.retry_max_count - retry_count))


async def enqueue_retry_eligible(
    db: Executor,
    *,
    exchange: str | None,
    classifier: ReasonClassifier,
    purchases_config: PurchasesConfig,
    retry_config: RetryConfig,
    cause: str | None,
    fingerprint: str | None = None,
    now: datetime | None = None,
    actor: str = audit.ACTOR_AUTOMATION,
    rng: random.Random | None = None,
    audit_nothing: bool = True,
) -> int:
    """Queue every retry-eligible failed purchase (of one exchange, or all); returns how many new.

    A purchase is queued at most once, ever (ON CONFLICT DO NOTHING on purchase_id), so calling
    this again, from any replica, adds only purchases that failed since. `audit_nothing=False`
    records nothing in the audit log when nothing was new (the filler's every-few-seconds call).
    """
    rng = rng or random.Random()
    excluded = purchases_config.retry_excluded_reasons
    eligible_count, queued_count = 0, 0
    queued_ids: list[str] = []  # the audit names the first 100
    async with transaction(db) as connection:
        now = now or await connection.fetchval("SELECT now()")
        after: tuple[datetime | None, str | None] = (None, None)
        while True:
            rows = await connection.fetch(
                _CANDIDATES_SQL, purchases_config.retry_max_count, now,
                purchases_config.retry_window, exchange, *after, CANDIDATES_BATCH,
            )  # fmt: skip
            eligible = [r for r in rows if classifier.classify(r["failure_reason"]) not in excluded]
            columns = _columns(eligible, purchases_config, retry_config, cause, now, rng)
            inserted = await connection.fetch(_INSERT_SQL, *columns, now)
            eligible_count += len(eligible)
            queued_count += len(inserted)
            queued_ids += [r["purchase_id"] for r in inserted[: 100 - len(queued_ids)]]
            if len(rows) < CANDIDATES_BATCH:
                break
            after = (rows[-1]["created_at"], rows[-1]["purchase_id"])
        if not queued_count and not audit_nothing:
            return 0
        await audit.record(
            connection, actor=actor, action="queue_failed_purchases_for_retry", result="success",
            exchange=exchange, cause=cause, fingerprint=fingerprint,
            detail={"eligible": eligible_count, "queued": queued_count, "purchase_ids": queued_ids},
        )  # fmt: skip
    return queued_count


def _columns(
    rows: list[asyncpg.Record],
    purchases: PurchasesConfig,
    retry: RetryConfig,
    cause: str | None,
    now: datetime,
    rng: random.Random,
) -> list[list[Any]]:
    """The eligible purchases as column arrays for one `unnest` insert."""
    first_at = [now + timedelta(seconds=backoff_delay(0, retry, rng)) for _ in rows]
    return [
        [r["purchase_id"] for r in rows],
        [r["exchange"] for r in rows],
        [r["tenant_id"] for r in rows],
        [r["amount_aud"] for r in rows],
        [r["failure_reason"] for r in rows],
        [_remaining_attempts(r["retry_count"], purchases, retry) for r in rows],
        first_at,
        [cause] * len(rows),
    ]


async def make_due(db: Executor, exchange: str, *, actor: str, cause: str | None) -> int:
    """Make the queued purchases of `exchange` due now (it recovered); returns how many."""
    async with transaction(db) as connection:
        count = await connection.fetchval(
            """WITH due AS (
                   UPDATE liquid_abt.retry_queue SET next_attempt_at = now(), updated_at = now()
                   WHERE exchange = $1 AND status = 'queued' AND next_attempt_at > now()
                   RETURNING 1)
               SELECT count(*) FROM due""",
            exchange,
        )
        await audit.record(
            connection, actor=actor, action="make_retries_due", result="success",
            exchange=exchange, cause=cause, detail={"made_due": count},
        )  # fmt: skip
    return int(count)


async def list_queue(
    db: Executor, exchange: str | None = None, status: str | None = None, limit: int = 100,
    *, offset: int = 0,
) -> list[QueueEntry]:  # fmt: skip
    """Queue entries, next due first, optionally of one exchange and one status."""
    rows = await db.fetch(
        f"""SELECT {_COLUMNS} FROM liquid_abt.retry_queue
            WHERE ($1::text IS NULL OR exchange = $1) AND ($2::text IS NULL OR status = $2)
            ORDER BY next_attempt_at, id LIMIT $3 OFFSET $4""",
        exchange, status, limit, offset,
    )  # fmt: skip
    return [QueueEntry.from_row(r) for r in rows]


async def count_queue(db: Executor, exchange: str | None = None, status: str | None = None) -> int:
    """How many entries list_queue would page through."""
    return int(
        await db.fetchval(
            """SELECT count(*) FROM liquid_abt.retry_queue
               WHERE ($1::text IS NULL OR exchange = $1) AND ($2::text IS NULL OR status = $2)""",
            exchange,
            status,
        )  # fmt: skip
    )


@dataclass(frozen=True)
class QueueSummary:
    """One exchange's queue at a glance, as the metrics count it: waiting = queued + in progress."""

    exchange: str
    queued: int
    in_progress: int
    failed: int
    oldest_waiting_since: datetime | None
    next_attempt_at: datetime | None

    def as_json(self) -> dict[str, Any]:
        return {
            "queued": self.queued,
            "inProgress": self.in_progress,
            "failed": self.failed,
            "oldestWaitingSince": _iso(self.oldest_waiting_since),
            "nextAttemptAt": _iso(self.next_attempt_at),
        }


async def summaries(db: Executor, exchanges: list[str]) -> list[QueueSummary]:
    """The queue of each exchange, in the given order, in one query (a read, nothing locked)."""
    rows = await db.fetch(
        """SELECT x.exchange,
                  count(q.id) FILTER (WHERE q.status = 'queued') AS queued,
                  count(q.id) FILTER (WHERE q.status = 'in_progress') AS in_progress,
                  count(q.id) FILTER (WHERE q.status = 'failed') AS failed,
                  min(q.enqueued_at) FILTER (WHERE q.status IN ('queued', 'in_progress'))
                      AS oldest_waiting_since,
                  min(q.next_attempt_at) FILTER (WHERE q.status = 'queued') AS next_attempt_at
           FROM unnest($1::text[]) WITH ORDINALITY AS x(exchange, position)
           LEFT JOIN liquid_abt.retry_queue q ON q.exchange = x.exchange
           GROUP BY x.exchange, x.position ORDER BY x.position""",
        exchanges,
    )
    return [QueueSummary(**dict(r)) for r in rows]


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


def _indent(text: str, spaces: int) -> str:
    return text.replace("\n", "\n" + " " * spaces)


# ---- The platform's side: each call is one statement, copied verbatim in
# docs/platform-integration.md (a test keeps the two identical). ----

# Picks due rows nobody else holds (SKIP LOCKED), leaving out exchanges that are paused or whose
# breaker is open, and marks them in progress: the platform gets both checks without remembering.
CLAIM_SQL = """
WITH due AS (
    SELECT q.id
    FROM liquid_abt.retry_queue q
    WHERE q.status = 'queued'
      AND q.next_attempt_at <= now()
      AND NOT EXISTS (SELECT 1 FROM liquid_abt.exchange_controls c
                      WHERE c.exchange = q.exchange AND c.purchases_paused)
      AND NOT EXISTS (SELECT 1 FROM liquid_abt.circuit_breakers b
                      WHERE b.exchange = q.exchange AND b.state = 'open')
    ORDER BY q.next_attempt_at, q.id
    LIMIT $1
    FOR UPDATE OF q SKIP LOCKED
)
UPDATE liquid_abt.retry_queue q
SET status = 'in_progress', attempts = q.attempts + 1, updated_at = now()
FROM due
WHERE q.id = due.id
RETURNING q.*
"""

# The same claim for a platform that follows routes (the gate's `buy_on`): it hands out the due
# rows that may be bought somewhere now, and says where in `retry_on`: the purchase's exchange,
# or the secondary its purchases are routed to. Nothing is handed out while they must wait.
CLAIM_ROUTED_SQL = f"""
WITH due AS (
    SELECT q.id, g.buy_on
    FROM liquid_abt.retry_queue q
    CROSS JOIN LATERAL (
        SELECT {_indent(BUY_ON.format(exchange="x.exchange"), 8)} AS buy_on
        FROM (VALUES (q.exchange)) AS x(exchange)
        {_indent(ROUTE_JOINS.format(exchange="x.exchange"), 8)}
    ) AS g
    WHERE q.status = 'queued'
      AND q.next_attempt_at <= now()
      AND g.buy_on IS NOT NULL
    ORDER BY q.next_attempt_at, q.id
    LIMIT $1
    FOR UPDATE OF q SKIP LOCKED
)
UPDATE liquid_abt.retry_queue q
SET status = 'in_progress', attempts = q.attempts + 1, retry_on = due.buy_on, updated_at = now()
FROM due
WHERE q.id = due.id
RETURNING q.*
"""

COMPLETE_SQL = """
UPDATE liquid_abt.retry_queue
SET status = 'succeeded', last_error = NULL, updated_at = now()
WHERE id = $1 AND status = 'in_progress'
"""

# backoff_delay in SQL: $3 base_delay, $4 factor, $5 max_delay (seconds), $6 jitter, $7 a uniform
# random number in [0, 1). The cap is tested in log space so that no power() can overflow.
FAIL_SQL = """
UPDATE liquid_abt.retry_queue
SET status = CASE WHEN attempts >= max_attempts THEN 'failed' ELSE 'queued' END,
    last_error = $2,
    updated_at = now(),
    next_attempt_at = CASE
        WHEN attempts >= max_attempts THEN next_attempt_at
        ELSE now() + make_interval(secs =>
            CASE WHEN attempts * ln($4::float8) >= ln($5::float8 / $3::float8) THEN $5::float8
                 ELSE least($3::float8 * power($4::float8, attempts), $5::float8) END
            * (1 - $6::float8 * $7::float8))
    END
WHERE id = $1 AND status = 'in_progress'
RETURNING status
"""


# Hands a claimed row back untouched, as if never claimed: the attempt is not counted (the
# platform did not call the exchange, e.g. the gate closed between the claim and the purchase).
# It is due again at once, and the claim hands it out as soon as the gate opens.
RELEASE_SQL = """
UPDATE liquid_abt.retry_queue
SET status = 'queued', attempts = attempts - 1, updated_at = now()
WHERE id = $1 AND status = 'in_progress'
"""


async def claim_due(db: Executor, limit: int) -> list[QueueEntry]:
    """Claim up to `limit` due purchases: they become in_progress, their attempts go up by one."""
    rows = await db.fetch(CLAIM_SQL, limit)
    return sorted((QueueEntry.from_row(r) for r in rows), key=lambda e: (e.next_attempt_at, e.id))


async def claim_routed(db: Executor, limit: int) -> list[QueueEntry]:
    """Claim up to `limit` due purchases that may be bought now, each with its `retry_on`."""
    rows = await db.fetch(CLAIM_ROUTED_SQL, limit)
    return sorted((QueueEntry.from_row(r) for r in rows), key=lambda e: (e.next_attempt_at, e.id))


async def complete(db: Executor, entry_id: int) -> bool:
    """Mark a claimed purchase as bought; False if it was not in progress."""
    return await db.execute(COMPLETE_SQL, entry_id) == "UPDATE 1"


async def release(db: Executor, entry_id: int) -> bool:
    """Hand a claimed purchase back without using an attempt; False if it was not in progress."""
    return await db.execute(RELEASE_SQL, entry_id) == "UPDATE 1"


async def fail(
    db: Executor,
    entry_id: int,
    error: str,
    retry_config: RetryConfig,
    rng: random.Random | None = None,
) -> str | None:
    """Record a failed attempt: back to `queued` after the next backoff (the attempt number is the
    attempts made so far), or `failed` for good once max_attempts are used. Returns the new status,
    or None if the entry was not in progress.
    """
    c = retry_config
    draw = (rng or random.Random()).random()
    return await db.fetchval(
        FAIL_SQL, entry_id, error, c.base_delay, c.factor, c.max_delay, c.jitter, draw
    )
