"""Recovery verification, and reconciliation of resolved notifications that never arrived.

"Resolved" is not proof of recovery. A resolved outage leaves a row in liquid_abt.recoveries;
this loop takes it under a lease (one replica at a time), moves an OPEN breaker to HALF_OPEN,
runs the runbook's recovery tests (current price, order book, balance when keys are configured),
and only when all pass closes the breaker, resumes purchases (never over a manual hold) and makes
the queued retries due. When a test fails it stays paused, records why, and tries again later.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import asyncpg

from exporter import audit, controls, retry_queue
from exporter.actions import ACTIVE_SQL, ActionMetrics, ActionWorker
from exporter.breaker import ACTOR_AUTOMATION, BreakerStore
from exporter.config import Config
from exporter.kraken.probe import RecoveryResult

log = logging.getLogger(__name__)

Verifier = Callable[[], Awaitable[RecoveryResult]]

LEASE_SQL = """
UPDATE liquid_abt.recoveries r
SET lease_until = now() + make_interval(secs => $1::float8), attempts = r.attempts + 1
WHERE r.exchange = (
    SELECT exchange FROM liquid_abt.recoveries
    WHERE next_attempt_at <= now() AND (lease_until IS NULL OR lease_until < now())
    ORDER BY next_attempt_at LIMIT 1
    FOR UPDATE SKIP LOCKED)
RETURNING r.exchange, r.cause, r.fingerprint, r.attempts
"""

RETRY_LATER_SQL = """
UPDATE liquid_abt.recoveries
SET lease_until = NULL, next_attempt_at = now() + make_interval(secs => $2::float8),
    last_result = $3::jsonb
WHERE exchange = $1
"""


def _checks(result: RecoveryResult) -> list[dict[str, Any]]:
    return [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in result.checks]


class RecoveryVerifier:
    def __init__(
        self,
        pool: asyncpg.Pool,
        config: Config,
        breakers: BreakerStore,
        verifiers: dict[str, Verifier],
        metrics: ActionMetrics,
        outage_alertnames: list[str],
    ) -> None:
        self._pool = pool
        self._config = config
        self._breakers = breakers
        self._verifiers = verifiers
        self._metrics = metrics
        self._outage_alertnames = outage_alertnames
        self._wakeup = asyncio.Event()

    def wake(self) -> None:
        self._wakeup.set()

    async def run(self) -> None:
        interval = self._config.receiver.verify_interval
        while True:
            try:
                while await self.verify_one():
                    pass
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                log.warning("recovery verifier: database error", extra={"error": str(exc)})
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), min(interval, 5.0))

    async def verify_one(self) -> bool:
        """Verify the most overdue pending recovery; False when none is due."""
        # Long enough for every recovery test to time out, short enough to survive a crash.
        lease = 6 * self._config.kraken.timeout + 30
        row = await self._pool.fetchrow(LEASE_SQL, lease)
        if row is None:
            return False
        exchange, cause, fingerprint = row["exchange"], row["cause"], row["fingerprint"]
        if self._config.receiver.dry_run:
            await self._finish(exchange, "dry_run", "verify_recovery", cause, fingerprint, {})
            return True
        verifier = self._verifiers.get(exchange)
        if verifier is None:
            # Nothing can prove this exchange healthy: stay paused, a person decides.
            await self._retry_later(exchange, {"error": "no recovery verifier for this exchange"})
            self._metrics.actions.labels("verify_recovery", "skipped").inc()
            return True
        await self._to_half_open(exchange, cause, fingerprint)
        result = await verifier()
        if result.ok:
            await self._recovered(exchange, cause, fingerprint, result)
        else:
            await self._still_failing(exchange, cause, fingerprint, result)
        return True

    async def _to_half_open(self, exchange: str, cause: str | None, fingerprint: str | None) -> None:
        status = await self._breakers.status(exchange)
        if status["state"] == "OPEN":
            await self._breakers.force_state(
                exchange, "HALF_OPEN", ACTOR_AUTOMATION, f"recovery verification after {cause}",
                fingerprint,
            )  # fmt: skip

    async def _recovered(
        self, exchange: str, cause: str | None, fingerprint: str | None, result: RecoveryResult
    ) -> None:
        self._metrics.actions.labels("verify_recovery", "success").inc()
        why = f"recovery verified after {cause}"
        if (await self._breakers.status(exchange))["manualHold"]:
            # An admin holds the breaker open: automation lifts neither it nor the pause.
            await self._finish(exchange, "skipped", "resume_purchases",
                               f"{why}; breaker held open by an admin", fingerprint,
                               {"checks": _checks(result)})  # fmt: skip
            return
        # The successful trial call: HALF_OPEN -> CLOSED (a CLOSED breaker only counts it).
        await self._breakers.record_result(exchange, True, why, actor=ACTOR_AUTOMATION)
        self._metrics.actions.labels("close_breaker", "success").inc()
        async with self._pool.acquire() as connection, connection.transaction():
            if await connection.fetchval(ACTIVE_SQL, exchange, self._outage_alertnames):
                # A new outage fired while we verified: its own resolution will come.
                await connection.execute("DELETE FROM liquid_abt.recoveries WHERE exchange = $1", exchange)
                self._metrics.actions.labels("resume_purchases", "skipped").inc()
                return
            resumed = await controls.resume(
                connection, exchange, actor=ACTOR_AUTOMATION, cause=why, fingerprint=fingerprint
            )
            label = "skipped" if resumed.refused else "success"
            self._metrics.actions.labels("resume_purchases", label).inc()
            await retry_queue.make_due(connection, exchange, actor=ACTOR_AUTOMATION, cause=why)
            await audit.record(
                connection, actor=ACTOR_AUTOMATION, action="verify_recovery", exchange=exchange,
                result="success", cause=why, fingerprint=fingerprint,
                detail={"checks": _checks(result), "resume": resumed.message},
            )  # fmt: skip
            await connection.execute("DELETE FROM liquid_abt.recoveries WHERE exchange = $1", exchange)

    async def _still_failing(
        self, exchange: str, cause: str | None, fingerprint: str | None, result: RecoveryResult
    ) -> None:
        self._metrics.actions.labels("verify_recovery", "failure").inc()
        failed = "; ".join(f"{c.name}: {c.detail}" for c in result.checks if not c.ok)
        why = f"recovery verification failed: {failed or 'unknown'}"
        # The failed trial call: HALF_OPEN -> OPEN; purchases stay paused.
        await self._breakers.record_result(exchange, False, why, actor=ACTOR_AUTOMATION)
        await audit.record(
            self._pool, actor=ACTOR_AUTOMATION, action="verify_recovery", exchange=exchange,
            result="failure", cause=why, fingerprint=fingerprint, detail={"checks": _checks(result)},
        )  # fmt: skip
        await self._retry_later(exchange, {"checks": _checks(result)})
        log.warning("recovery not verified; still paused", extra={"exchange": exchange, "why": why})

    async def _retry_later(self, exchange: str, detail: dict[str, Any]) -> None:
        await self._pool.execute(
            RETRY_LATER_SQL, exchange, self._config.receiver.verify_interval, json.dumps(detail)
        )

    async def _finish(
        self, exchange: str, result: str, action: str, cause: str | None,
        fingerprint: str | None, detail: dict[str, Any],
    ) -> None:  # fmt: skip
        self._metrics.actions.labels(action, result).inc()
        async with self._pool.acquire() as connection, connection.transaction():
            await audit.record(
                connection, actor=ACTOR_AUTOMATION, action=action, exchange=exchange,
                result=result, cause=cause, fingerprint=fingerprint, detail=detail,
            )  # fmt: skip
            await connection.execute("DELETE FROM liquid_abt.recoveries WHERE exchange = $1", exchange)


# Unresolved firing states of alerts that act on resolution.
UNRESOLVED_SQL = """
SELECT f.fingerprint, f.starts_at, f.alertname, f.exchange, f.labels
FROM liquid_abt.notifications f
WHERE f.status = 'firing' AND f.alertname = ANY($1::text[])
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


class Reconciler:
    """Asks Alertmanager which alerts are still active; an alert we saw firing that Alertmanager
    no longer has lost its resolved notification: record one, so the normal path resumes."""

    def __init__(
        self, pool: asyncpg.Pool, session: aiohttp.ClientSession, url: str,
        worker: ActionWorker, metrics: ActionMetrics, alertnames: list[str], interval: float,
    ) -> None:  # fmt: skip
        self._pool, self._session, self._url = pool, session, url.rstrip("/")
        self._worker, self._metrics = worker, metrics
        self._alertnames, self._interval = alertnames, interval

    async def active_fingerprints(self) -> set[tuple[str, str]]:
        async with self._session.get(
            f"{self._url}/api/v2/alerts", params={"active": "true", "silenced": "true",
                                                  "inhibited": "true", "unprocessed": "true"},
            timeout=aiohttp.ClientTimeout(total=10),
        ) as response:  # fmt: skip
            response.raise_for_status()
            alerts = await response.json()
        return {(a["fingerprint"], a["startsAt"]) for a in alerts}

    async def reconcile_once(self) -> int:
        active = await self.active_fingerprints()
        active_fps = {fp for fp, _ in active}
        added = 0
        async with self._pool.acquire() as connection, connection.transaction():
            for row in await connection.fetch(UNRESOLVED_SQL, self._alertnames):
                # Alertmanager keeps the fingerprint while the alert fires; gone means resolved.
                if row["fingerprint"] in active_fps:
                    continue
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
            self._worker.wake()
        return added

    async def run(self) -> None:
        while True:
            try:
                await self.reconcile_once()
            except (aiohttp.ClientError, TimeoutError, OSError, asyncpg.PostgresError,
                    asyncpg.InterfaceError, ValueError, KeyError) as exc:  # fmt: skip
                # Unreachable Alertmanager: change nothing, try again later.
                self._metrics.actions.labels("reconcile", "failure").inc()
                log.warning("reconciliation with Alertmanager failed", extra={"error": str(exc)})
            await asyncio.sleep(self._interval)
