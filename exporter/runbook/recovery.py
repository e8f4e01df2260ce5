"""Recovery verification: the only way out of an outage.

"Resolved" is not proof of recovery. A resolved outage leaves a row in liquid_abt.recoveries;
this loop takes it under a lease (one replica at a time), moves an OPEN breaker to HALF_OPEN,
runs the runbook's recovery tests (current price, order book, balance when keys are configured),
and only when all pass closes the breaker, resumes purchases (never over a manual hold) and makes
the queued retries due. When a test fails it stays paused, records why, and tries again later.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from exporter.config import Config
from exporter.controls import audit, retry_queue
from exporter.controls import pause as controls
from exporter.controls.breaker import ACTOR_AUTOMATION, BreakerStore
from exporter.database.background import Wakeup, run_forever
from exporter.database.transactions import transaction
from exporter.runbook.alert_states import lock_exchange, still_firing
from exporter.runbook.metrics import ActionMetrics
from exporter.signals.kraken.probe import RecoveryResult

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
        self._wakeup = Wakeup()

    def wake(self) -> None:
        self._wakeup.wake()

    async def run(self) -> None:
        poll = min(self._config.receiver.verify_interval, 5.0)

        async def drain() -> float:
            while await self.verify_one():
                pass
            return poll

        await run_forever("recovery-verifier", drain, wakeup=self._wakeup, retry_after=poll)

    async def verify_one(self) -> bool:
        """Verify the most overdue pending recovery; False when none is due."""
        if self._config.receiver.dry_run:
            return False  # a dry run only records: it must not take live replicas' work
        # Long enough for every recovery test to time out, short enough to survive a crash.
        lease = 6 * self._config.kraken.timeout + 30
        row = await self._pool.fetchrow(LEASE_SQL, lease)
        if row is None:
            return False
        exchange, cause, fingerprint = row["exchange"], row["cause"], row["fingerprint"]
        if exchange not in self._config.exchanges:
            log.warning("recovery requested for an exchange no longer configured: dropped",
                        extra={"exchange": exchange})  # fmt: skip
            await self._pool.execute(
                "DELETE FROM liquid_abt.recoveries WHERE exchange = $1", exchange
            )
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
            await self._recovered(exchange, cause, fingerprint, result, first=row["attempts"] == 1)
        else:
            await self._still_failing(exchange, cause, fingerprint, result)
        return True

    async def _to_half_open(
        self, exchange: str, cause: str | None, fingerprint: str | None
    ) -> None:
        status = await self._breakers.status(exchange)
        if status["state"] == "OPEN":
            await self._breakers.force_state(
                exchange, "HALF_OPEN", ACTOR_AUTOMATION, f"recovery verification after {cause}",
                fingerprint,
            )  # fmt: skip

    async def _recovered(
        self, exchange: str, cause: str | None, fingerprint: str | None, result: RecoveryResult,
        first: bool,
    ) -> None:  # fmt: skip
        self._metrics.actions.labels("verify_recovery", "success").inc()
        why = f"recovery verified after {cause}"
        if (await self._breakers.status(exchange))["manualHold"]:
            # An admin holds the breaker open: automation lifts neither it nor the pause. Try
            # again later, so that purchases resume once the admin releases the breaker.
            self._metrics.actions.labels("resume_purchases", "skipped").inc()
            if first:
                await audit.record(
                    self._pool, actor=ACTOR_AUTOMATION, action="resume_purchases",
                    exchange=exchange, result="skipped", fingerprint=fingerprint,
                    cause=f"{why}; breaker held open by an admin",
                )  # fmt: skip
            await self._retry_later(exchange, {"checks": _checks(result), "held": True})
            return
        # The successful trial call: HALF_OPEN -> CLOSED (a CLOSED breaker only counts it).
        transitions = await self._breakers.record_result(
            exchange, True, why, actor=ACTOR_AUTOMATION
        )
        self._metrics.actions.labels("close_breaker", "success" if transitions else "skipped").inc()
        async with transaction(self._pool) as connection:
            # The action worker's lock first, in the order it takes locks: no deadlock, and no
            # new outage can be recorded as acted on between this check and the resume.
            await lock_exchange(connection, exchange)
            if await still_firing(connection, exchange, self._outage_alertnames):
                # A new outage fired while we verified: its own resolution will come.
                await connection.execute(
                    "DELETE FROM liquid_abt.recoveries WHERE exchange = $1", exchange
                )
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
            await connection.execute(
                "DELETE FROM liquid_abt.recoveries WHERE exchange = $1", exchange
            )

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
