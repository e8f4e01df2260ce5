"""Retention: the work tables do not grow for ever.

Processed (or dead-lettered) notifications older than `receiver.retention` and finished retry
queue entries older than `retry.retention` are deleted, a bounded batch per statement so that no
statement runs into the statement timeout or holds locks for long. A firing state with no
recorded resolution is kept whatever its age: it still says an alert is active. The audit log is
append-only and never pruned here.
"""

from __future__ import annotations

import logging

import asyncpg

from exporter.config import Config
from exporter.database.background import run_forever

log = logging.getLogger(__name__)

INTERVAL = 3600.0
BATCH = 5000

PRUNE_NOTIFICATIONS_SQL = """
DELETE FROM liquid_abt.notifications WHERE id IN (
    SELECT n.id FROM liquid_abt.notifications n
    WHERE n.received_at < now() - make_interval(secs => $1::float8)
      AND (n.processed_at IS NOT NULL OR n.dead_lettered_at IS NOT NULL)
      AND (n.status = 'resolved' OR EXISTS (
          SELECT 1 FROM liquid_abt.notifications r
          WHERE r.status = 'resolved' AND r.fingerprint = n.fingerprint
            AND r.starts_at >= n.starts_at))
    LIMIT $2)
"""

PRUNE_RETRIES_SQL = """
DELETE FROM liquid_abt.retry_queue WHERE id IN (
    SELECT id FROM liquid_abt.retry_queue
    WHERE status IN ('succeeded', 'failed', 'cancelled')
      AND updated_at < now() - make_interval(secs => $1::float8)
    LIMIT $2)
"""


async def prune(pool: asyncpg.Pool, config: Config, batch: int = BATCH) -> dict[str, int]:
    """Delete what is past retention; returns how many rows of each table."""
    deleted = {"notifications": 0, "retry_queue": 0}
    for table, sql, age in (
        ("notifications", PRUNE_NOTIFICATIONS_SQL, config.receiver.retention),
        ("retry_queue", PRUNE_RETRIES_SQL, config.retry.retention),
    ):
        while True:
            status = await pool.execute(sql, age, batch)
            count = int(status.split()[-1])
            deleted[table] += count
            if count < batch:
                break
    if any(deleted.values()):
        log.info("retention: old rows deleted", extra=deleted)
    return deleted


async def run_retention(pool: asyncpg.Pool, config: Config) -> None:
    async def iteration() -> float:
        await prune(pool, config)
        return INTERVAL

    await run_forever("retention", iteration, retry_after=INTERVAL)
