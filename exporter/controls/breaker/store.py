"""Persistence: BreakerStore, the SQL, the compare-and-set transaction and its audit entries."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import asyncpg
from prometheus_client import CollectorRegistry

from exporter.config import Config
from exporter.controls import audit
from exporter.controls.breaker.decisions import (
    Decision,
    Plan,
    Step,
    decide_config,
    decide_force,
    decide_recovery,
    decide_reset,
    decide_result,
)
from exporter.controls.breaker.metrics import BreakerMetrics
from exporter.controls.breaker.state import (
    ACTOR_ADMIN,
    ACTOR_PROBE,
    COLUMNS,
    ConcurrentUpdate,
    Snapshot,
    State,
    Transition,
    UnknownExchange,
    describe,
    validate_config_changes,
)
from exporter.database.background import run_forever
from exporter.database.pool import DATABASE_ERRORS
from exporter.database.transactions import transaction

# The package's name, as before the split into modules: log lines keep their `logger` field.
log = logging.getLogger("exporter.controls.breaker")

_ENSURE_SQL: Final = """
INSERT INTO liquid_abt.circuit_breakers
    (exchange, failure_threshold, recovery_timeout_ms, monitoring_window_ms)
VALUES ($1, $2, $3, $4) ON CONFLICT (exchange) DO NOTHING"""
_SELECT_SQL: Final = f"SELECT {', '.join(COLUMNS)} FROM liquid_abt.circuit_breakers"
_READ_SQL: Final = f"""
SELECT {", ".join(COLUMNS)}, clock_timestamp() AS now
  FROM liquid_abt.circuit_breakers WHERE exchange = $1"""
_LOCK_SQL: Final = _SELECT_SQL + " WHERE exchange = $1 FOR UPDATE"
_WRITE_SQL: Final = """
UPDATE liquid_abt.circuit_breakers
   SET state = $3, failure_count = $4, call_count = $5, window_started_at = $6,
       last_failure_at = $7, last_success_at = $8, state_changed_at = $9,
       failure_threshold = $10, recovery_timeout_ms = $11, monitoring_window_ms = $12,
       manual_hold = $13, version = version + 1
 WHERE exchange = $1 AND version = $2
RETURNING version"""
_DUE_SQL: Final = """
SELECT exchange FROM liquid_abt.circuit_breakers
 WHERE exchange = ANY($1::text[]) AND state = 'open' AND NOT manual_hold
   AND state_changed_at + recovery_timeout_ms * interval '1 millisecond' <= clock_timestamp()"""
# Not a transition, so one guarded statement suffices: it re-checks its WHERE after any lock wait.
_EXPIRE_WINDOWS_SQL: Final = """
UPDATE liquid_abt.circuit_breakers
   SET failure_count = 0, call_count = 0, window_started_at = NULL, version = version + 1
 WHERE exchange = ANY($1::text[]) AND state = 'closed' AND window_started_at IS NOT NULL
   AND window_started_at + monitoring_window_ms * interval '1 millisecond' < clock_timestamp()"""


@dataclass(frozen=True)
class _Outcome:
    snapshot: Snapshot
    now: datetime
    transitions: list[Transition]


class BreakerStore:
    """The breakers of the configured exchanges; receives the pool and never closes it."""

    def __init__(self, pool: asyncpg.Pool, config: Config, registry: CollectorRegistry) -> None:
        self._pool = pool
        self._exchanges = list(config.exchanges)
        defaults = config.breaker
        self._defaults = (
            defaults.failure_threshold,
            max(1, round(defaults.recovery_timeout * 1000)),
            max(1, round(defaults.monitoring_window * 1000)),
        )
        self.check_interval = defaults.check_interval
        self.metrics = BreakerMetrics(registry, self._exchanges)

    @property
    def exchanges(self) -> list[str]:
        return list(self._exchanges)

    # -- results and the recovery timer --

    async def record_result(
        self, exchange: str, ok: bool, cause: str, *, actor: str = ACTOR_PROBE
    ) -> list[Transition]:
        """Count one call's result; returns the transitions it caused (none, one, or two when an
        overdue OPEN goes HALF_OPEN and this result is its trial call)."""
        outcome = await self._mutate(exchange, decide_result(ok, actor, cause))
        return outcome.transitions

    async def on_probe_result(self, exchange: str, ok: bool, outcome: str) -> None:
        """The Kraken probe's `on_result` callback: one call per probe round.

        Without the database the round cannot be counted; the probe's own metrics still are,
        and `liquid_abt_db_up` already says why, so one line rather than a traceback per round.
        """
        try:
            await self.record_result(exchange, ok, f"probe round: {outcome}", actor=ACTOR_PROBE)
        except DATABASE_ERRORS as exc:
            log.warning("probe round not counted by the breaker: database unavailable",
                        extra={"exchange": exchange, "error": str(exc) or type(exc).__name__})  # fmt: skip

    async def check(self) -> list[Transition]:
        """OPEN -> HALF_OPEN where the recovery timeout has passed; clear expired windows.

        Cheap when nothing is due (one SELECT, one UPDATE of no rows), so every replica runs it
        every `check_interval`; the row lock lets only one of them make each transition.
        """
        await self._pool.execute(_EXPIRE_WINDOWS_SQL, self._exchanges)
        due = await self._pool.fetch(_DUE_SQL, self._exchanges)
        transitions: list[Transition] = []
        for row in due:
            transitions += (await self._mutate(row["exchange"], decide_recovery)).transitions
        return transitions

    async def run_checker(self) -> None:
        """Call `check()` every `check_interval` until cancelled; an outage only delays it."""

        async def iteration() -> float:
            await self.check()
            return self.check_interval

        await run_forever("breaker-check", iteration, retry_after=self.check_interval)

    # -- operator and automation actions --

    async def force_state(
        self, exchange: str, state: State | str, actor: str, cause: str,
        fingerprint: str | None = None,
    ) -> Transition | None:  # fmt: skip
        """Move to `state` (any spelling of CLOSED, OPEN, HALF_OPEN). None when nothing moved:
        already in that state (nothing recorded, except an admin's OPEN becoming a hold), or a
        manual hold refused a non-admin actor (recorded as `refused`)."""
        target = State.parse(state)
        outcome = await self._mutate(exchange, decide_force(target, actor, cause), fingerprint)
        return outcome.transitions[0] if outcome.transitions else None

    async def reset(self, exchange: str, actor: str, cause: str) -> Transition | None:
        """CLOSED with the counts zeroed and any hold lifted (by an admin only). A transition when
        the state changed; None otherwise (a closed breaker's counts zeroing is still audited)."""
        outcome = await self._mutate(exchange, decide_reset(actor, cause))
        return outcome.transitions[0] if outcome.transitions else None

    async def update_config(
        self, exchange: str, *, failure_threshold: int | None = None,
        recovery_timeout_ms: int | None = None, monitoring_window_ms: int | None = None,
        actor: str = ACTOR_ADMIN, cause: str | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Change the given settings (the others stay); returns the status. They apply from the
        next decision: a lower threshold opens on the next failure, a shorter timeout at the next
        check. Unchanged values record nothing."""
        changes = validate_config_changes(
            failure_threshold, recovery_timeout_ms, monitoring_window_ms
        )
        outcome = await self._mutate(exchange, decide_config(changes, actor, cause))
        return describe(outcome.snapshot, outcome.now)

    # -- reading --

    async def status(self, exchange: str) -> dict[str, Any]:
        """The breaker as the runbook prints it; an overdue OPEN goes HALF_OPEN on read."""
        snapshot, now = await self._read(exchange)
        if snapshot.recovery_due(now):
            outcome = await self._mutate(exchange, decide_recovery)
            snapshot, now = outcome.snapshot, outcome.now
        return describe(snapshot, now)

    async def status_all(self) -> list[dict[str, Any]]:
        return [await self.status(exchange) for exchange in self._exchanges]

    # -- the compare-and-set --

    def _require(self, exchange: str) -> None:
        if exchange not in self._exchanges:
            known = ", ".join(self._exchanges)
            raise UnknownExchange(f"unknown exchange {exchange!r}: configured are {known}")

    async def _ensure(self, connection: asyncpg.Connection, exchange: str) -> None:
        self._require(exchange)
        await connection.execute(_ENSURE_SQL, exchange, *self._defaults)

    async def _read(self, exchange: str) -> tuple[Snapshot, datetime]:
        async with self._pool.acquire() as connection:
            await self._ensure(connection, exchange)
            row = await connection.fetchrow(_READ_SQL, exchange)
        return Snapshot.from_row(row), row["now"]

    async def _mutate(
        self, exchange: str, decide: Decision, fingerprint: str | None = None
    ) -> _Outcome:
        """Lock the row, decide, write it back if it changed, audit: all in one transaction."""
        async with transaction(self._pool) as connection:
            await self._ensure(connection, exchange)
            before = Snapshot.from_row(await connection.fetchrow(_LOCK_SQL, exchange))
            # Read after the lock is granted: the decision must see time as it is now, not as it
            # was when this transaction started waiting behind another replica's.
            now = await connection.fetchval("SELECT clock_timestamp()")
            plan = Plan(before)
            decide(plan, now)
            transitions = await self._write(connection, before, plan, now, fingerprint)
        # After the commit: only a transition that really happened is counted.
        self.metrics.count(transitions)
        for t in transitions:
            log.info("circuit breaker transition", extra={
                "exchange": t.exchange, "from_state": t.from_state.api, "to_state": t.to_state.api,
                "actor": t.actor, "cause": t.cause,
            })  # fmt: skip
        return _Outcome(plan.snapshot, now, transitions)

    async def _write(
        self, connection: asyncpg.Connection, before: Snapshot, plan: Plan, now: datetime,
        fingerprint: str | None,
    ) -> list[Transition]:  # fmt: skip
        after = plan.snapshot
        version = before.version
        if after != before:
            version = await connection.fetchval(_WRITE_SQL, *_write_args(before, after))
            if version is None:
                raise ConcurrentUpdate(f"breaker {before.exchange!r} changed under its row lock")
        transitions = []
        for step in plan.steps:
            audit_id = await audit.record(
                connection, actor=step.actor, action="breaker_transition", result="success",
                exchange=after.exchange, cause=step.cause, fingerprint=fingerprint,
                detail=_step_detail(step, after, version),
            )  # fmt: skip
            transitions.append(
                Transition(after.exchange, step.from_state, step.to_state, step.actor, step.cause,
                           now, audit_id)
            )  # fmt: skip
        for note in plan.notes:
            await audit.record(
                connection, actor=note.actor, action=note.action, result=note.result,
                exchange=after.exchange, cause=note.cause, fingerprint=fingerprint,
                detail={**note.detail, "version": version},
            )  # fmt: skip
        return transitions


def _write_args(before: Snapshot, after: Snapshot) -> tuple[Any, ...]:
    return (
        before.exchange, before.version, after.state.value, after.failure_count, after.call_count,
        after.window_started_at, after.last_failure_at, after.last_success_at,
        after.state_changed_at, after.failure_threshold, after.recovery_timeout_ms,
        after.monitoring_window_ms, after.manual_hold,
    )  # fmt: skip


def _step_detail(step: Step, after: Snapshot, version: int) -> dict[str, Any]:
    return {
        "from": step.from_state.api, "to": step.to_state.api, "trigger": step.trigger,
        "failure_count": after.failure_count, "call_count": after.call_count, "version": version,
    }  # fmt: skip
