"""Runbook actions driven by recorded Alertmanager notifications.

The webhook only records alert states (receiver.py); this worker takes unprocessed ones
(`FOR UPDATE SKIP LOCKED`, so replicas share the work) and acts on each alert's own status:

- firing: an outage alert is evidence for the incident model (incident/), which stops
  purchases unless the replicas' probes contradict it; queue retry-eligible purchases; lower the
  API rate. Every action goes through the model's executor, so dry run is decided there alone;
- resolved: a hint, not proof: the incident model looks again at once; its recovery verification
  alone closes the breaker and resumes purchases, and its evidence restores the API rate.

Every action is idempotent and audited with the alert's fingerprint. A firing state whose
resolution was already recorded is ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import asyncpg

from exporter.config import Config
from exporter.controls import audit
from exporter.controls.breaker import ACTOR_AUTOMATION
from exporter.database.background import Wakeup, run_forever
from exporter.database.transactions import after_commit, transaction
from exporter.runbook.alert_states import (
    OUTAGE_ACTIONS,
    AlertState,
    resolved_already,
)
from exporter.runbook.incident import IncidentModel
from exporter.runbook.metrics import ActionMetrics

log = logging.getLogger(__name__)

# Errors a retry cannot fix: recorded on the notification. Anything else is retried.
PERMANENT_ERRORS = (ValueError, LookupError, asyncpg.DataError)


# A batch of due alert states in arrival order. Per exchange, order is kept: a state waits
# while an earlier state of its exchange is backing off after a failure (until that one is
# processed or dead-lettered), and other replicas skip an exchange whose batch is in flight
# (the exchange's advisory lock, taken with try-lock below).
CLAIM_SQL = """
WITH backing_off AS (
    SELECT exchange, min(id) AS from_id FROM liquid_abt.notifications
    WHERE processed_at IS NULL AND dead_lettered_at IS NULL AND next_attempt_at > now()
    GROUP BY exchange)
SELECT n.id, n.fingerprint, n.status, n.starts_at, n.alertname, n.exchange, n.attempts,
       coalesce(n.summary, n.alertname) AS summary
FROM liquid_abt.notifications n
LEFT JOIN backing_off b ON b.exchange = n.exchange
WHERE n.processed_at IS NULL AND n.dead_lettered_at IS NULL AND n.next_attempt_at <= now()
  AND (b.from_id IS NULL OR n.id < b.from_id)
ORDER BY n.id
LIMIT $1
FOR UPDATE OF n SKIP LOCKED
"""

DONE_SQL = """
UPDATE liquid_abt.notifications AS n
SET processed_at = now(), process_error = d.error, attempts = n.attempts + 1
FROM unnest($1::bigint[], $2::text[]) AS d(id, error)
WHERE n.id = d.id
"""

# A transient failure: try again later, or give up on the state after `max_attempts`.
RETRY_SQL = """
UPDATE liquid_abt.notifications AS n
SET attempts = n.attempts + 1, last_error = f.error,
    next_attempt_at = now() + make_interval(secs => least($3::float8, 2 ^ n.attempts)),
    dead_lettered_at = CASE WHEN n.attempts + 1 >= $4 THEN now() END
FROM unnest($1::bigint[], $2::text[]) AS f(id, error)
WHERE n.id = f.id
RETURNING n.id, n.alertname, n.exchange, n.dead_lettered_at IS NOT NULL AS dead
"""

NEXT_DUE_SQL = """
SELECT extract(epoch FROM min(next_attempt_at) - now()) FROM liquid_abt.notifications
WHERE processed_at IS NULL AND dead_lettered_at IS NULL
"""

TRY_LOCK_SQL = "SELECT pg_try_advisory_xact_lock(hashtext('liquid_abt_actions:' || $1))"

BATCH = 200
# Notified by a trigger on every insert into liquid_abt.notifications (migration 0005).
WORK_CHANNEL = "liquid_abt_work"
# Seconds before looking again at states left for an exchange held elsewhere.
_CONTENDED = 0.2


class ActionWorker:
    """Processes recorded notifications; `wake()` after recording avoids waiting for the poll."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        config: Config,
        incidents: IncidentModel,
        metrics: ActionMetrics,
        wake_incident: Callable[[str], None] = lambda exchange: None,
    ) -> None:
        self._pool = pool
        self._config = config
        self._incidents = incidents
        self.metrics = metrics
        self._wake_incident = wake_incident
        self._wakeup = Wakeup()

    def wake(self) -> None:
        self._wakeup.wake()

    def _actions_for(self, alertname: str) -> list[str]:
        return self._config.receiver.actions.get(alertname, [])

    async def run(self, poll_interval: float = 5.0) -> None:
        """Drain the backlog, then wait for a wake-up (or poll: another replica may have recorded)."""

        async def drain() -> float:
            while True:
                settled, skipped = await self.process_batch()
                if not settled:
                    # States left for an exchange someone else holds: look again shortly;
                    # otherwise sleep until the next retry is due (a wake-up comes sooner).
                    return _CONTENDED if skipped else await self._next_due(poll_interval)

        await run_forever("action-worker", drain, wakeup=self._wakeup, retry_after=poll_interval)

    async def _next_due(self, longest: float) -> float:
        due_in = await self._pool.fetchval(NEXT_DUE_SQL)
        return longest if due_in is None else min(longest, max(0.0, float(due_in)))

    async def process_batch(self, limit: int = BATCH) -> tuple[int, int]:
        """Process up to `limit` due alert states in one transaction; returns how many it
        settled (processed, retried later or dead-lettered) and how many it left for an exchange
        held elsewhere.

        Each state runs in a savepoint: permanent problems (an unknown exchange, a bad value)
        are recorded on the row and the other actions still run; anything else (a deadlock, a
        lost lock) rolls that state back, schedules it again with backoff, and holds back the
        later states of its exchange until it is processed or dead-lettered.
        """
        async with transaction(self._pool) as connection:
            rows = await connection.fetch(CLAIM_SQL, limit)
            done: list[tuple[int, str | None]] = []
            failed: list[tuple[int, str]] = []
            held: set[str] = set()  # exchanges to leave alone for the rest of this batch
            locked: set[str] = set()
            skipped = 0
            for row in rows:
                state = AlertState.from_row(row)
                exchange = state.exchange
                if exchange is not None and exchange not in locked:
                    if exchange in held or not await connection.fetchval(TRY_LOCK_SQL, exchange):
                        held.add(exchange)  # another replica or the incident loop has it
                        skipped += 1
                        continue
                    locked.add(exchange)
                if not self._actions_for(state.alertname):
                    done.append((state.id, None))  # recorded only: nothing to do, nothing to undo
                    continue
                if state.status == "resolved":  # a hint that changes no row: no savepoint needed
                    done.append((state.id, await self._handle(connection, state)))
                    continue
                try:
                    async with connection.transaction():
                        done.append((state.id, await self._handle(connection, state)))
                except Exception as exc:  # transient (permanent errors were recorded above)
                    failed.append((state.id, f"{type(exc).__name__}: {exc}"))
                    if exchange is not None:
                        held.add(exchange)
                        locked.discard(exchange)
            await self._settle(connection, done, failed)
        return len(done) + len(failed), skipped

    async def _settle(
        self,
        connection: asyncpg.Connection,
        done: list[tuple[int, str | None]],
        failed: list[tuple[int, str]],
    ) -> None:
        if done:
            await connection.execute(DONE_SQL, [d[0] for d in done], [d[1] for d in done])
        if not failed:
            return
        receiver = self._config.receiver
        rows = await connection.fetch(
            RETRY_SQL, [f[0] for f in failed], [f[1] for f in failed],
            receiver.retry_max_delay, receiver.max_attempts,
        )  # fmt: skip
        errors = dict(failed)
        for row in rows:
            if row["dead"]:
                after_commit(partial(self._dead_lettered, row, errors[row["id"]]))
            else:
                log.warning("alert state failed; tried again later", extra={
                    "id": row["id"], "alertname": row["alertname"], "error": errors[row["id"]]})  # fmt: skip

    def _dead_lettered(self, row: asyncpg.Record, error: str) -> None:
        self.metrics.dead_letters.inc()
        log.error("alert state dead-lettered after too many attempts; later ones go on",
                  extra={"id": row["id"], "alertname": row["alertname"],
                         "exchange": row["exchange"], "error": error})  # fmt: skip

    async def _handle(self, connection: asyncpg.Connection, state: AlertState) -> str | None:
        actions = self._actions_for(state.alertname)
        if not actions:
            return None
        if state.exchange is not None and state.exchange not in self._config.exchanges:
            await self._skip(connection, state, actions, f"unknown exchange {state.exchange!r}")
            return f"unknown exchange {state.exchange!r}"
        handler = self._on_firing if state.status == "firing" else self._on_resolved
        errors = await handler(connection, state, actions)
        if state.exchange is not None:
            # The incident loop looks at the exchange again now, not at its next round.
            exchange, wake = state.exchange, self._wake_incident
            after_commit(lambda: wake(exchange))
        return "; ".join(errors) or None

    async def _skip(
        self, connection: asyncpg.Connection, state: AlertState, actions: list[str], why: str
    ) -> None:
        for action in actions:
            self.metrics.actions.labels(action, "skipped").inc()
        await audit.record(
            connection, actor=ACTOR_AUTOMATION, action="notification", exchange=state.exchange,
            result="skipped", cause=f"{state.cause}: {why}", fingerprint=state.fingerprint,
        )  # fmt: skip

    async def _on_firing(
        self, connection: asyncpg.Connection, state: AlertState, actions: list[str]
    ) -> list[str]:
        if await resolved_already(connection, state):
            await self._skip(connection, state, actions, "already resolved (stale firing)")
            return []
        errors: list[str] = []
        if OUTAGE_ACTIONS & set(actions):
            # The incident model decides: it opens the breaker, pauses and queues retries in
            # one commit, or records why the evidence contradicts the alert.
            error = await self._do(
                "open_breaker", partial(self._outage, connection, state), connection, state
            )
            errors += [error] if error else []
            actions = [a for a in actions if a not in (*OUTAGE_ACTIONS, "queue_retries")]
        for action in actions:
            error = await self._do(
                action, partial(self._fire, connection, action, state), connection, state
            )
            errors += [error] if error else []
        return errors

    async def _outage(self, connection: asyncpg.Connection, state: AlertState) -> None:
        if state.exchange is None:
            raise ValueError(f"{state.alertname} has no exchange label: cannot stop purchases")
        actions = self._actions_for(state.alertname)
        contradicted = await self._incidents.on_outage_alert(
            connection, state, open_breaker="open_breaker" in actions
        )
        if contradicted:
            await self._skip(connection, state, [], contradicted)

    async def _fire(self, connection: asyncpg.Connection, action: str, state: AlertState) -> None:
        if action == "queue_retries":
            await self._incidents.queue_retries(connection, state)
            return
        if state.exchange is None:
            raise ValueError(f"{state.alertname} has no exchange label: cannot {action}")
        if action == "lower_api_rate":
            await self._incidents.lower_rate(connection, state)

    async def _on_resolved(
        self, connection: asyncpg.Connection, state: AlertState, actions: list[str]
    ) -> list[str]:
        """A resolution is a hint, not proof: the incident model looks again at once, and only
        its verification (and the evidence) ends an outage or restores the API rate."""
        exchange = state.exchange
        if exchange is None:
            return []
        if OUTAGE_ACTIONS & set(actions):
            self.metrics.actions.labels("request_recovery", "success").inc()
        return []

    async def _do(
        self, action: str, run: Callable[[], Awaitable[Any]], connection: asyncpg.Connection,
        state: AlertState,
    ) -> str | None:  # fmt: skip
        """Run one action through the incident model (whose executor applies it, or in dry run
        records it, and counts what it did); count its failures here.

        Returns the message of a permanent failure (recorded, the other actions go on); other
        errors propagate and roll the notification back for a retry.
        """
        try:
            # A savepoint: a failed action leaves the notification's transaction usable.
            async with connection.transaction():
                await run()
        except PERMANENT_ERRORS as exc:
            self.metrics.actions.labels(action, "failure").inc()
            log.error("action failed", extra={"action": action, "alertname": state.alertname,
                                              "error": str(exc)})  # fmt: skip
            return f"{action}: {exc}"
        except Exception:
            self.metrics.actions.labels(action, "failure").inc()
            raise
        return None
