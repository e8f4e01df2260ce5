"""The breaker's vocabulary: actors, errors, State, the Snapshot of one row, Transition; plus the
validation of new settings and describe(), the runbook's view of a snapshot."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Final

import asyncpg

# The actors are the audit log's; re-exported here, where the breaker's callers look for them.
from exporter.controls.audit import ACTOR_ADMIN as ACTOR_ADMIN
from exporter.controls.audit import ACTOR_AUTOMATION as ACTOR_AUTOMATION
from exporter.controls.audit import ACTOR_PROBE as ACTOR_PROBE

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
        return cls(**{**{f: row[f] for f in COLUMNS}, "state": State(row["state"])})

    @property
    def held(self) -> bool:
        # The flag only means something while OPEN, whoever else wrote the row.
        return self.manual_hold and self.state is State.OPEN


COLUMNS: Final = tuple(f for f in Snapshot.__dataclass_fields__)


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


def describe(s: Snapshot, now: datetime, next_attempt: datetime | None = None) -> dict[str, Any]:
    """The runbook's getMetrics(): UPPER-case state, ISO 8601 times, durations in milliseconds.

    The counts are the incident model's evidence: `failureCount` replicas see the API not
    answering `failureThreshold` probe rounds in a row, of `callCount` replicas probing it
    (`failureRate` is their share), since `windowStartedAt`; `nextAttemptTime` is its next
    recovery verification.
    """
    return {
        "exchange": s.exchange,
        "state": s.state.api,
        "failureCount": s.failure_count,
        "callCount": s.call_count,
        "failureRate": s.failure_count / s.call_count if s.call_count else 0.0,
        "lastFailureTime": _iso(s.last_failure_at),
        "lastSuccessTime": _iso(s.last_success_at),
        "windowStartedAt": _iso(s.window_started_at),
        "stateChangedAt": _iso(s.state_changed_at),
        "nextAttemptTime": _iso(None if s.held else next_attempt),
        "manualHold": s.held,
        "config": {
            "failureThreshold": s.failure_threshold,
            "recoveryTimeout": s.recovery_timeout_ms,
            "monitoringWindow": s.monitoring_window_ms,
        },
    }


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None
