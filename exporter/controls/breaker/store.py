"""Persistence: BreakerStore, the SQL, the compare-and-set transaction and its audit entries."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
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
    decide_reset,
)
from exporter.controls.breaker.metrics import BreakerMetrics
from exporter.controls.breaker.state import (
    ACTOR_ADMIN,
    COLUMNS,
    ConcurrentUpdate,
    Snapshot,
    State,
    Transition,
    UnknownExchange,
    describe,
    validate_config_changes,
)
from exporter.database.transactions import Executor, after_commit, transaction

# The package's name, as before the split into modules: log lines keep their `logger` field.
log = logging.getLogger("exporter.controls.breaker")

_ENSURE_SQL: Final = """
INSERT INTO liquid_abt.circuit_breakers
    (exchange, failure_threshold, recovery_timeout_ms, monitoring_window_ms)
VALUES ($1, $2, $3, $4) ON CONFLICT (exchange) DO NOTHING"""
_SELECT_SQL: Final = f"SELECT {', '.join(COLUMNS)} FROM liquid_abt.circuit_breakers"
_READ_SQL: Final = f"""
SELECT {", ".join("b." + c for c in COLUMNS)}, clock_timestamp() AS now, i.next_attempt_at
  FROM liquid_abt.circuit_breakers b
  LEFT JOIN liquid_abt.incidents i ON i.exchange = b.exchange AND i.phase = 'down'
 WHERE b.exchange = $1"""
_EVIDENCE_SQL: Final = """
UPDATE liquid_abt.circuit_breakers
   SET failure_count = $2, call_count = $3, window_started_at = $4, last_failure_at = $5,
       last_success_at = $6
 WHERE exchange = $1
   AND (failure_count, call_count, window_started_at, last_failure_at, last_success_at)
       IS DISTINCT FROM ($2, $3, $4, $5, $6)"""
_LOCK_SQL: Final = _SELECT_SQL + " WHERE exchange = $1 FOR UPDATE"
_PEEK_SQL: Final = f"""
SELECT x.name, {", ".join(f"b.{c}" for c in COLUMNS)}, clock_timestamp() AS now,
       i.next_attempt_at
  FROM unnest($1::text[]) WITH ORDINALITY AS x(name, position)
  LEFT JOIN liquid_abt.circuit_breakers b ON b.exchange = x.name
  LEFT JOIN liquid_abt.incidents i ON i.exchange = x.name AND i.phase = 'down'
 ORDER BY x.position"""
_WRITE_SQL: Final = """
UPDATE liquid_abt.circuit_breakers
   SET state = $3, failure_count = $4, call_count = $5, window_started_at = $6,
       last_failure_at = $7, last_success_at = $8, state_changed_at = $9,
       failure_threshold = $10, recovery_timeout_ms = $11, monitoring_window_ms = $12,
       manual_hold = $13, version = version + 1
 WHERE exchange = $1 AND version = $2
RETURNING version"""


# failure_count, call_count, window_started_at, last_failure_at, last_success_at
Evidence = tuple[int, int, datetime | None, datetime | None, datetime | None]


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
        self.metrics = BreakerMetrics(registry, self._exchanges)

    @property
    def exchanges(self) -> list[str]:
        return list(self._exchanges)

    # -- operator and automation actions --

    async def force_state(
        self, exchange: str, state: State | str, actor: str, cause: str,
        fingerprint: str | None = None, *, db: Executor | None = None,
    ) -> Transition | None:  # fmt: skip
        """Move to `state` (any spelling of CLOSED, OPEN, HALF_OPEN). None when nothing moved:
        already in that state (nothing recorded, except an admin's OPEN becoming a hold), or a
        manual hold refused a non-admin actor (recorded as `refused`).

        Given a connection `db`, the change joins its transaction (a pause and queued retries
        commit together with it or not at all)."""
        target = State.parse(state)
        decide = decide_force(target, actor, cause)
        outcome = await self._mutate(exchange, decide, fingerprint, db=db)
        return outcome.transitions[0] if outcome.transitions else None

    async def force_locked(
        self, connection: asyncpg.Connection, before: Snapshot, now: datetime, state: State,
        actor: str, cause: str, fingerprint: str | None = None,
    ) -> Snapshot:  # fmt: skip
        """force_state for a caller that read and locked the row (`state()`) and the clock in
        this transaction already: one decision reads each once. Returns the row as written."""
        plan = Plan(before)
        decide_force(state, actor, cause)(plan, now)
        transitions = await self._write(connection, before, plan, now, fingerprint)
        after_commit(lambda: self._announce(transitions))
        return replace(plan.snapshot, version=before.version + (plan.snapshot != before))

    async def reset(
        self, exchange: str, actor: str, cause: str, *, db: Executor | None = None
    ) -> Transition | None:
        """CLOSED with the counts zeroed and any hold lifted (by an admin only). A transition when
        the state changed; None otherwise (a closed breaker's counts zeroing is still audited)."""
        outcome = await self._mutate(exchange, decide_reset(actor, cause), db=db)
        return outcome.transitions[0] if outcome.transitions else None

    async def record_evidence(
        self, connection: asyncpg.Connection, exchange: str, evidence: Evidence
    ) -> None:
        """The incident model's evidence shown with the breaker (runbook's getMetrics); not a
        transition, so no audit entry and no version bump."""
        self._require(exchange)
        await connection.execute(_EVIDENCE_SQL, exchange, *evidence)

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
        """The breaker as the runbook prints it, with the incident model's next verification."""
        snapshot, now, next_attempt = await self._read(exchange)
        return describe(snapshot, now, next_attempt)

    async def state(self, db: Executor, exchange: str) -> Snapshot:
        """The breaker row (created with the defaults on first use)."""
        async with transaction(db) as connection:
            await self._ensure(connection, exchange)
            return Snapshot.from_row(await connection.fetchrow(_LOCK_SQL, exchange))

    async def status_all(self) -> list[dict[str, Any]]:
        return [await self.status(exchange) for exchange in self._exchanges]

    async def peek_all(self) -> list[dict[str, Any]]:
        """Every configured breaker as status() prints it, in one read that writes nothing: an
        exchange never used shows its configured defaults rather than getting its row."""
        rows = await self._pool.fetch(_PEEK_SQL, self._exchanges)
        return [describe(self._peeked(row), row["now"], row["next_attempt_at"]) for row in rows]

    def _peeked(self, row: asyncpg.Record) -> Snapshot:
        if row["state"] is not None:
            return Snapshot.from_row(row)
        threshold, recovery_ms, window_ms = self._defaults
        return Snapshot(
            row["name"], State.CLOSED, 0, 0, None, None, None, row["now"], threshold,
            recovery_ms, window_ms, manual_hold=False, version=0,
        )  # fmt: skip

    # -- the compare-and-set --

    def _require(self, exchange: str) -> None:
        if exchange not in self._exchanges:
            known = ", ".join(self._exchanges)
            raise UnknownExchange(f"unknown exchange {exchange!r}: configured are {known}")

    async def _ensure(self, connection: asyncpg.Connection, exchange: str) -> None:
        self._require(exchange)
        await connection.execute(_ENSURE_SQL, exchange, *self._defaults)

    async def _read(self, exchange: str) -> tuple[Snapshot, datetime, datetime | None]:
        async with self._pool.acquire() as connection:
            await self._ensure(connection, exchange)
            row = await connection.fetchrow(_READ_SQL, exchange)
        return Snapshot.from_row(row), row["now"], row["next_attempt_at"]

    async def _mutate(
        self, exchange: str, decide: Decision, fingerprint: str | None = None,
        *, db: Executor | None = None,
    ) -> _Outcome:  # fmt: skip
        """Lock the row, decide, write it back if it changed, audit: all in one transaction."""
        async with transaction(db or self._pool) as connection:
            await self._ensure(connection, exchange)
            before = Snapshot.from_row(await connection.fetchrow(_LOCK_SQL, exchange))
            # Read after the lock is granted: the decision must see time as it is now, not as it
            # was when this transaction started waiting behind another replica's.
            now = await connection.fetchval("SELECT clock_timestamp()")
            plan = Plan(before)
            decide(plan, now)
            transitions = await self._write(connection, before, plan, now, fingerprint)
            # After the commit: only a transition that really happened is counted and logged.
            after_commit(lambda: self._announce(transitions))
        return _Outcome(plan.snapshot, now, transitions)

    def _announce(self, transitions: list[Transition]) -> None:
        self.metrics.count(transitions)
        for t in transitions:
            log.info("circuit breaker transition", extra={
                "exchange": t.exchange, "from_state": t.from_state.api, "to_state": t.to_state.api,
                "actor": t.actor, "cause": t.cause,
            })  # fmt: skip

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
