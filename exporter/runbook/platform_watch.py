"""The platform watch's reading: the platform's latest calls to an exchange and its failed
purchases not queued for retry yet, in one statement.

The watch reads between probe rounds, every few seconds on every replica, so an idle replica's
database load is mostly this reading: one statement is one transaction, with the database's own
clock (no separate `SELECT clock_timestamp()`). The incident loop wakes for a round when the calls
start failing (probing.py); the retry filler queues what failed when the reading shows a failure
it has not dealt with yet (retry_filler.py), so neither queries while nothing happens.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from exporter.runbook.evidence import UNAVAILABLE_REASONS, PlatformCalls
from exporter.signals.classify import ReasonClassifier

# Calls: evidence.PLATFORM_SQL's, newest first. Failed purchases: retry_queue._CANDIDATES_SQL's
# (failed, retried fewer than retry_max_count times, within the retry window, not queued), ids
# only, the newest first; the reason classes are the filler's to judge.
WATCH_SQL = """
SELECT true AS call, success, error_message, created_at, NULL::text AS purchase_id
FROM (
    SELECT success, error_message, created_at
    FROM api_call_logs
    WHERE provider = $1
      AND created_at > clock_timestamp() - make_interval(secs => $2::float8)
    ORDER BY created_at DESC
    LIMIT $3
) calls
UNION ALL
SELECT false, NULL, NULL, created_at, purchase_id
FROM (
    SELECT p.created_at, p.id::text AS purchase_id
    FROM bitcoin_purchases p
    WHERE $4::bool
      AND p.status = 'failed'
      AND p.retry_count < $5
      AND p.created_at > clock_timestamp() - make_interval(secs => $6::float8)
      AND lower(p.exchange_provider) = $1
      AND NOT EXISTS (SELECT 1 FROM liquid_abt.retry_queue q WHERE q.purchase_id = p.id::text)
    ORDER BY p.created_at DESC
    LIMIT $7
) failed
"""
# Failed purchases read at most: enough to tell a new one from those the filler left (their
# reasons are never retried); a storm larger than this is found by the next readings.
UNQUEUED_LIMIT = 200


@dataclass(frozen=True)
class RetryWindow:
    """Which failed purchases the retry filler would queue (purchases.retry_max_count and
    purchases.retry_window)."""

    max_count: int
    seconds: float


@dataclass(frozen=True)
class PlatformReading:
    calls: PlatformCalls  # the latest ones, newest first
    unqueued_failures: frozenset[str]  # failed purchases not in the retry queue (when asked)

    def failing(self, min_calls: int) -> bool:
        """The latest `min_calls` calls all failed for want of an answer."""
        return self.calls.failing(min_calls)

    @property
    def unanswered(self) -> bool:
        """The newest call failed for want of an answer: the next ones may make it failing."""
        return bool(self.calls.reasons) and self.calls.reasons[0] in UNAVAILABLE_REASONS


async def read_platform(
    connection: asyncpg.Connection | asyncpg.Pool,
    exchange: str,
    classifier: ReasonClassifier,
    *,
    window: float,
    calls: int,
    retry: RetryWindow | None = None,
) -> PlatformReading:
    """One statement; failed purchases only when `retry` says which (the filler listens)."""
    rows = await connection.fetch(
        WATCH_SQL, exchange, window, calls, retry is not None,
        retry.max_count if retry else 0, retry.seconds if retry else 0.0, UNQUEUED_LIMIT,
    )  # fmt: skip
    latest = sorted((r for r in rows if r["call"]), key=lambda r: r["created_at"], reverse=True)
    reasons = tuple(
        None if r["success"] else classifier.classify(r["error_message"] or "") for r in latest
    )
    return PlatformReading(
        PlatformCalls(reasons, tuple(r["created_at"] for r in latest)),
        frozenset(r["purchase_id"] for r in rows if not r["call"]),
    )
