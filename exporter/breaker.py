"""The circuit breaker of each exchange: one PostgreSQL row shared by the platform and all replicas.

States follow the runbook: CLOSED counts failures; OPEN when `failure_threshold` failures fall in
one monitoring window; HALF_OPEN once `recovery_timeout` has passed since it opened; the next result
(the trial call, normally the probe's next round) closes it or opens it again.

- The monitoring window starts at the first failure counted and lasts `monitoring_window_ms`; a
  result after it ends restarts the count. `call_count` counts the calls in the same window, so
  the failure rate is failures / calls since that first failure (0 when no window is open).
- Every change is a compare-and-set: one transaction locks the row (`FOR UPDATE`), decides with
  the database's clock, writes `WHERE exchange = $1 AND version = $2`, and appends the audit
  entries; so of several replicas exactly one makes a transition and the others see its result.
- Forcing the current state records nothing and returns None, so repeated notifications and
  repeated admin calls are harmless. An admin's OPEN is a manual hold: the recovery timer, the
  probe and automation never lift it (automation's attempts are audited as `refused`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Final

import asyncpg
from prometheus_client import CollectorRegistry, Counter

from exporter import audit
from exporter.config import Config

log = logging.getLogger(__name__)

ACTOR_PROBE: Final = "probe"
ACTOR_AUTOMATION: Final = "automation"
ACTOR_ADMIN: Final = "admin"
_MAX_INT4: Final = 2**31 - 1  # the columns are `integer`


class BreakerError(Exception):
    """Base of the errors a caller can act on (the admin API maps them to 4xx)."""


class UnknownExchange(BreakerError, LookupError):
    pass


class InvalidState(BreakerError, ValueError):
    pass


class InvalidBreakerConfig(BreakerError, ValueError):
    pass


class ConcurrentUpdate(BreakerError, RuntimeError):
    """The row changed under a lock we hold: a writer that ignores the lock; nothing was written."""


class State(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"

    @property
    def api(self) -> str:
        """The spelling of the runbook and the admin API: CLOSED, OPEN, HALF_OPEN."""
        return self.name

    @classmethod
    def parse(cls, value: object) -> State:
        if isinstance(value, State):
            return value
        if isinstance(value, str):
            try:
                return cls(value.strip().lower().replace("-", "_"))
            except ValueError:
                pass
        allowed = ", ".join(s.api for s in cls)
        raise InvalidState(f"unknown breaker state {value!r}: use one of {allowed}")


@dataclass(frozen=True)
class Snapshot:
    """One breaker row as read under its lock."""

    exchange: str
    state: State
    failure_count: int
    call_count: int
    window_started_at: datetime | None
    last_failure_at: datetime | None
    last_success_at: datetime | None
    state_changed_at: datetime
    failure_threshold: int
    recovery_timeout_ms: int
    monitoring_window_ms: int
    manual_hold: bool
    version: int

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Snapshot:
        return cls(**{**{f: row[f] for f in _COLUMNS}, "state": State(row["state"])})

    @property
    def held(self) -> bool:
        # The flag only means something while OPEN, whoever else wrote the row.
        return self.manual_hold and self.state is State.OPEN

    def recovery_due(self, now: datetime) -> bool:
        opened_for = now - self.state_changed_at
        return self.state is State.OPEN and not self.held and opened_for >= self._recovery

    def window_expired(self, now: datetime) -> bool:
        started = self.window_started_at
        window = timedelta(milliseconds=self.monitoring_window_ms)
        return started is not None and now - started > window

    @property
    def _recovery(self) -> timedelta:
        return timedelta(milliseconds=self.recovery_timeout_ms)

    def next_attempt_at(self) -> datetime | None:
        return self.state_changed_at + self._recovery if self.state is State.OPEN else None


_COLUMNS: Final = tuple(f for f in Snapshot.__dataclass_fields__)


@dataclass(frozen=True)
class Transition:
    """A state change this process made (and wrote to the audit log as entry `audit_id`)."""

    exchange: str
    from_state: State
    to_state: State
    actor: str
    cause: str
    at: datetime
    audit_id: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "exchange": self.exchange, "from": self.from_state.api, "to": self.to_state.api,
            "actor": self.actor, "cause": self.cause, "at": self.at.isoformat(),
            "auditId": self.audit_id,
        }  # fmt: skip


# ---- decisions: pure functions of a snapshot and the database's clock ------------------------


@dataclass(frozen=True)
class _Step:
    from_state: State
    to_state: State
    actor: str
    cause: str
    trigger: str


@dataclass(frozen=True)
class _Note:
    """An audit entry that is not a transition: a hold, zeroed counts, new settings, a refusal."""

    action: str
    result: str
    actor: str
    cause: str | None
    detail: dict[str, Any]


@dataclass
class _Plan:
    snapshot: Snapshot
    steps: list[_Step] = field(default_factory=list)
    notes: list[_Note] = field(default_factory=list)

    def transition(self, to: State, now: datetime, actor: str, cause: str, trigger: str) -> None:
        s = self.snapshot
        self.steps.append(_Step(s.state, to, actor, cause, trigger))
        hold = actor == ACTOR_ADMIN and to is State.OPEN and trigger == "forced"
        s = replace(s, state=to, state_changed_at=now, manual_hold=hold)
        if to is State.CLOSED:  # a closed breaker starts counting afresh
            s = replace(s, failure_count=0, call_count=0, window_started_at=None)
        self.snapshot = s

    def refuse(self, action: str, actor: str, cause: str | None, requested: str) -> None:
        detail = {"requested": requested, "state": self.snapshot.state.api, "why": "manual hold"}
        self.notes.append(_Note(action, "refused", actor, cause, detail))


Decision = Callable[[_Plan, datetime], None]


def _roll_window(s: Snapshot, now: datetime) -> Snapshot:
    if s.state is State.CLOSED and s.window_expired(now):
        return replace(s, failure_count=0, call_count=0, window_started_at=None)
    return s


def _decide_recovery(plan: _Plan, now: datetime) -> None:
    s = plan.snapshot
    if s.recovery_due(now):
        cause = f"recovery timeout of {s.recovery_timeout_ms} ms elapsed"
        plan.transition(State.HALF_OPEN, now, ACTOR_AUTOMATION, cause, "recovery_timeout")


def _decide_result(ok: bool, actor: str, cause: str) -> Decision:
    def decide(plan: _Plan, now: datetime) -> None:
        s = plan.snapshot
        plan.snapshot = replace(s, last_success_at=now) if ok else replace(s, last_failure_at=now)
        # A result that arrives after the recovery timeout is the trial call.
        _decide_recovery(plan, now)
        if plan.snapshot.state is State.HALF_OPEN:
            _decide_trial(plan, now, ok, actor, cause)
        elif plan.snapshot.state is State.CLOSED:
            _decide_count(plan, now, ok, actor, cause)
        # OPEN: calls are not counted; only the timestamps above move.

    return decide


def _decide_trial(plan: _Plan, now: datetime, ok: bool, actor: str, cause: str) -> None:
    if ok:
        plan.transition(State.CLOSED, now, actor, f"trial call succeeded: {cause}", "trial_success")
        return
    s = plan.snapshot
    plan.snapshot = replace(s, failure_count=s.failure_count + 1, call_count=s.call_count + 1)
    plan.transition(State.OPEN, now, actor, f"trial call failed: {cause}", "trial_failure")


def _decide_count(plan: _Plan, now: datetime, ok: bool, actor: str, cause: str) -> None:
    s = _roll_window(plan.snapshot, now)
    if ok:
        plan.snapshot = replace(s, call_count=s.call_count + 1) if s.window_started_at else s
        return
    s = replace(
        s, failure_count=s.failure_count + 1, call_count=s.call_count + 1,
        window_started_at=s.window_started_at or now,
    )  # fmt: skip
    plan.snapshot = s
    # `>=`: a threshold lowered below the current count opens on the next failure.
    if s.failure_count >= s.failure_threshold:
        why = (
            f"{s.failure_count} failures within the {s.monitoring_window_ms} ms monitoring window "
            f"reached the threshold of {s.failure_threshold}; last: {cause}"
        )
        plan.transition(State.OPEN, now, actor, why, "threshold")


def _decide_force(target: State, actor: str, cause: str) -> Decision:
    def decide(plan: _Plan, now: datetime) -> None:
        s = plan.snapshot
        if target is s.state:
            if actor == ACTOR_ADMIN and target is State.OPEN and not s.held:
                # An admin confirming an OPEN that automation made: keep it open from now on.
                plan.snapshot = replace(s, manual_hold=True)
                plan.notes.append(_Note("breaker_hold", "success", actor, cause, {"state": "OPEN"}))
            return
        if s.held and actor != ACTOR_ADMIN:
            plan.refuse("breaker_force_state", actor, cause, target.api)
            return
        plan.transition(target, now, actor, cause, "forced")

    return decide


def _decide_reset(actor: str, cause: str) -> Decision:
    def decide(plan: _Plan, now: datetime) -> None:
        s = plan.snapshot
        if s.held and actor != ACTOR_ADMIN:
            plan.refuse("breaker_reset", actor, cause, "CLOSED")
        elif s.state is not State.CLOSED:
            plan.transition(State.CLOSED, now, actor, cause, "reset")
        elif s.failure_count or s.call_count or s.window_started_at:
            plan.snapshot = replace(s, failure_count=0, call_count=0, window_started_at=None)
            detail = {"failure_count": s.failure_count, "call_count": s.call_count}
            plan.notes.append(_Note("breaker_reset", "success", actor, cause, detail))

    return decide


def _decide_config(changes: dict[str, int], actor: str, cause: str | None) -> Decision:
    def decide(plan: _Plan, now: datetime) -> None:
        s = plan.snapshot
        changed: dict[str, Any] = {k: v for k, v in changes.items() if getattr(s, k) != v}
        if changed:
            before = {k: getattr(s, k) for k in changed}
            plan.snapshot = replace(s, **changed)
            detail = {"before": before, "after": changed}
            plan.notes.append(_Note("breaker_config", "success", actor, cause, detail))

    return decide


def validate_config_changes(
    failure_threshold: int | None, recovery_timeout_ms: int | None, monitoring_window_ms: int | None
) -> dict[str, int]:
    """The given settings as column values; each must be a whole number from 1 to 2^31-1."""
    given = {
        "failure_threshold": failure_threshold,
        "recovery_timeout_ms": recovery_timeout_ms,
        "monitoring_window_ms": monitoring_window_ms,
    }
    changes = {k: v for k, v in given.items() if v is not None}
    if not changes:
        raise InvalidBreakerConfig("nothing to change: give at least one setting")
    for name, value in changes.items():
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_INT4:
            message = f"{name} must be an integer from 1 to {_MAX_INT4}, got {value!r}"
            raise InvalidBreakerConfig(message)
    return changes


def describe(s: Snapshot, now: datetime) -> dict[str, Any]:
    """The runbook's getMetrics(): UPPER-case state, ISO 8601 times, durations in milliseconds."""
    view = _roll_window(s, now)  # an expired window counts nothing, even before check() clears it
    next_attempt = None if s.held else s.next_attempt_at()
    return {
        "exchange": s.exchange,
        "state": s.state.api,
        "failureCount": view.failure_count,
        "callCount": view.call_count,
        "failureRate": view.failure_count / view.call_count if view.call_count else 0.0,
        "lastFailureTime": _iso(s.last_failure_at),
        "lastSuccessTime": _iso(s.last_success_at),
        "windowStartedAt": _iso(view.window_started_at),
        "stateChangedAt": _iso(s.state_changed_at),
        "nextAttemptTime": _iso(next_attempt),
        "manualHold": s.held,
        "config": {
            "failureThreshold": s.failure_threshold,
            "recoveryTimeout": s.recovery_timeout_ms,
            "monitoringWindow": s.monitoring_window_ms,
        },
    }


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


# ---- persistence -------------------------------------------------------------------------------

_ENSURE_SQL: Final = """
INSERT INTO liquid_abt.circuit_breakers
    (exchange, failure_threshold, recovery_timeout_ms, monitoring_window_ms)
VALUES ($1, $2, $3, $4) ON CONFLICT (exchange) DO NOTHING"""
_SELECT_SQL: Final = f"SELECT {', '.join(_COLUMNS)} FROM liquid_abt.circuit_breakers"
_READ_SQL: Final = f"""
SELECT {", ".join(_COLUMNS)}, clock_timestamp() AS now
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


class BreakerMetrics:
    """`liquid_abt_circuit_breaker_transitions_total`: transitions this process won."""

    def __init__(self, registry: CollectorRegistry, exchanges: list[str]) -> None:
        self.transitions = Counter(
            "liquid_abt_circuit_breaker_transitions",
            "Circuit breaker transitions made by this process (other replicas count their own).",
            ["exchange", "from_state", "to_state"],
            registry=registry,
        )
        for exchange in exchanges:
            for a in State:
                for b in State:
                    if a is not b:
                        self.transitions.labels(exchange, a.value, b.value)

    def count(self, transitions: list[Transition]) -> None:
        for t in transitions:
            self.transitions.labels(t.exchange, t.from_state.value, t.to_state.value).inc()


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
        outcome = await self._mutate(exchange, _decide_result(ok, actor, cause))
        return outcome.transitions

    async def on_probe_result(self, exchange: str, ok: bool, outcome: str) -> None:
        """The Kraken probe's `on_result` callback: one call per probe round."""
        await self.record_result(exchange, ok, f"probe round: {outcome}", actor=ACTOR_PROBE)

    async def check(self) -> list[Transition]:
        """OPEN -> HALF_OPEN where the recovery timeout has passed; clear expired windows.

        Cheap when nothing is due (one SELECT, one UPDATE of no rows), so every replica runs it
        every `check_interval`; the row lock lets only one of them make each transition.
        """
        await self._pool.execute(_EXPIRE_WINDOWS_SQL, self._exchanges)
        due = await self._pool.fetch(_DUE_SQL, self._exchanges)
        transitions: list[Transition] = []
        for row in due:
            transitions += (await self._mutate(row["exchange"], _decide_recovery)).transitions
        return transitions

    async def run_checker(self) -> None:
        """Call `check()` every `check_interval` until cancelled; an outage only delays it."""
        failing = False
        while True:
            try:
                await self.check()
            except Exception as exc:  # the loop must outlive any outage; log once per outage
                if not failing:
                    error = str(exc) or type(exc).__name__
                    log.warning("breaker check failed", extra={"error": error})
                failing = True
            else:
                if failing:
                    log.info("breaker check recovered")
                failing = False
            await asyncio.sleep(self.check_interval)

    # -- operator and automation actions --

    async def force_state(
        self, exchange: str, state: State | str, actor: str, cause: str,
        fingerprint: str | None = None,
    ) -> Transition | None:  # fmt: skip
        """Move to `state` (any spelling of CLOSED, OPEN, HALF_OPEN). None when nothing moved:
        already in that state (nothing recorded, except an admin's OPEN becoming a hold), or a
        manual hold refused a non-admin actor (recorded as `refused`)."""
        target = State.parse(state)
        outcome = await self._mutate(exchange, _decide_force(target, actor, cause), fingerprint)
        return outcome.transitions[0] if outcome.transitions else None

    async def reset(self, exchange: str, actor: str, cause: str) -> Transition | None:
        """CLOSED with the counts zeroed and any hold lifted (by an admin only). A transition when
        the state changed; None otherwise (a closed breaker's counts zeroing is still audited)."""
        outcome = await self._mutate(exchange, _decide_reset(actor, cause))
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
        outcome = await self._mutate(exchange, _decide_config(changes, actor, cause))
        return describe(outcome.snapshot, outcome.now)

    # -- reading --

    async def status(self, exchange: str) -> dict[str, Any]:
        """The breaker as the runbook prints it; an overdue OPEN goes HALF_OPEN on read."""
        snapshot, now = await self._read(exchange)
        if snapshot.recovery_due(now):
            outcome = await self._mutate(exchange, _decide_recovery)
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
        async with self._pool.acquire() as connection, connection.transaction():
            await self._ensure(connection, exchange)
            before = Snapshot.from_row(await connection.fetchrow(_LOCK_SQL, exchange))
            # Read after the lock is granted: the decision must see time as it is now, not as it
            # was when this transaction started waiting behind another replica's.
            now = await connection.fetchval("SELECT clock_timestamp()")
            plan = _Plan(before)
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
        self, connection: asyncpg.Connection, before: Snapshot, plan: _Plan, now: datetime,
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


def _step_detail(step: _Step, after: Snapshot, version: int) -> dict[str, Any]:
    return {
        "from": step.from_state.api, "to": step.to_state.api, "trigger": step.trigger,
        "failure_count": after.failure_count, "call_count": after.call_count, "version": version,
    }  # fmt: skip
