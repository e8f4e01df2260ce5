"""Reconciliation with Alertmanager: a resolved notification that never arrived is recorded from
Alertmanager's own list of active alerts, so the normal path (verification, resume) runs."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import aiohttp
import asyncpg

from exporter.controls import audit
from exporter.controls.breaker import ACTOR_AUTOMATION
from exporter.database.background import run_forever
from exporter.database.transactions import transaction
from exporter.runbook.metrics import ActionMetrics

log = logging.getLogger(__name__)

# Unresolved firing states of alerts that act on resolution, recorded before `$2`.
UNRESOLVED_SQL = """
SELECT f.fingerprint, f.starts_at, f.alertname, f.exchange, f.labels
FROM liquid_abt.notifications f
WHERE f.status = 'firing' AND f.alertname = ANY($1::text[]) AND f.received_at < $2
  AND NOT EXISTS (
      SELECT 1 FROM liquid_abt.notifications r
      WHERE r.status = 'resolved' AND r.fingerprint = f.fingerprint AND r.starts_at >= f.starts_at)
"""

SYNTHETIC_RESOLVED_SQL = """
INSERT INTO liquid_abt.notifications
    (fingerprint, status, starts_at, ends_at, alertname, exchange, labels, group_key)
VALUES ($1, 'resolved', $2, now(), $3, $4, $5, 'reconciliation')
ON CONFLICT (fingerprint, status, starts_at) DO NOTHING
RETURNING id
"""

Key = tuple[str, Any]  # (fingerprint, starts_at) of one alert state


def _fingerprints(alerts: Any) -> set[str]:
    """The fingerprints in Alertmanager's GET /api/v2/alerts answer; ValueError if it is not one."""
    if not isinstance(alerts, list) or not all(
        isinstance(a, dict) and isinstance(a.get("fingerprint"), str) for a in alerts
    ):
        raise ValueError("Alertmanager's /api/v2/alerts did not answer a list of alerts")
    return {a["fingerprint"] for a in alerts}


class Reconciler:
    """Asks Alertmanager which alerts are still active; an alert we saw firing that Alertmanager
    no longer has lost its resolved notification: record one, so the normal path resumes.

    Two guards against resolving a live outage: only states recorded before the question count
    (a firing that arrives meanwhile is not in the answer yet), and a state must be missing from
    two answers in a row (an Alertmanager that just restarted holds no alerts until Prometheus
    sends them again).
    """

    def __init__(
        self, pool: asyncpg.Pool, session: aiohttp.ClientSession, url: str,
        wake_worker: Callable[[], None], metrics: ActionMetrics, alertnames: list[str],
        interval: float,
    ) -> None:  # fmt: skip
        self._pool, self._session, self._url = pool, session, url.rstrip("/")
        self._wake_worker, self._metrics = wake_worker, metrics
        self._alertnames, self._interval = alertnames, interval
        self._missing_last_round: set[Key] = set()

    async def active_fingerprints(self) -> set[str]:
        async with self._session.get(
            f"{self._url}/api/v2/alerts", params={"active": "true", "silenced": "true",
                                                  "inhibited": "true", "unprocessed": "true"},
            timeout=aiohttp.ClientTimeout(total=10),
        ) as response:  # fmt: skip
            response.raise_for_status()
            return _fingerprints(await response.json())

    async def reconcile_once(self) -> int:
        asked_at = await self._pool.fetchval("SELECT now()")
        active = await self.active_fingerprints()
        rows = await self._pool.fetch(UNRESOLVED_SQL, self._alertnames, asked_at)
        missing = {
            (r["fingerprint"], r["starts_at"]): r for r in rows if r["fingerprint"] not in active
        }
        confirmed = [row for key, row in missing.items() if key in self._missing_last_round]
        self._missing_last_round = set(missing)
        added = 0
        async with transaction(self._pool) as connection:
            for row in confirmed:
                inserted = await connection.fetchval(
                    SYNTHETIC_RESOLVED_SQL, row["fingerprint"], row["starts_at"],
                    row["alertname"], row["exchange"], row["labels"],
                )  # fmt: skip
                if inserted is not None:
                    added += 1
                    await audit.record(
                        connection, actor=ACTOR_AUTOMATION, action="reconcile",
                        exchange=row["exchange"], result="success", fingerprint=row["fingerprint"],
                        cause=f"{row['alertname']} no longer active in Alertmanager",
                    )  # fmt: skip
        if added:
            self._metrics.actions.labels("reconcile", "success").inc(added)
            self._wake_worker()
        return added

    async def run(self) -> None:
        await run_forever("reconciler", self._iteration, retry_after=self._interval)

    async def _iteration(self) -> float:
        try:
            await self.reconcile_once()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            # An unreachable or odd Alertmanager: change nothing, ask again next time.
            self._metrics.actions.labels("reconcile", "failure").inc()
            log.warning("reconciliation with Alertmanager failed",
                        extra={"error": str(exc) or type(exc).__name__})  # fmt: skip
        except Exception:
            self._metrics.actions.labels("reconcile", "failure").inc()
            raise
        return self._interval
