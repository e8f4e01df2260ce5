"""The circuit breaker of each exchange: one PostgreSQL row shared by the platform and all replicas.

The breaker holds state only: the incident model (exporter/runbook/incident/) decides when it
opens (every live replica saw `failure_threshold` probe rounds in a row unanswered), when it goes
HALF_OPEN (healthy for `recovery_timeout`: the recovery verification runs) and when it closes
(verification passed); `monitoring_window` is its relapse window. `failure_count` / `call_count`
are that model's evidence: replicas that see the API down, of the replicas probing it.

- Every change is a compare-and-set: one transaction locks the row (`FOR UPDATE`), decides with
  the database's clock, writes `WHERE exchange = $1 AND version = $2`, and appends the audit
  entries; so of several replicas exactly one makes a transition and the others see its result.
- Forcing the current state records nothing and returns None, so repeated notifications and
  repeated admin calls are harmless. An admin's OPEN is a manual hold: the recovery timer, the
  probe and automation never lift it (automation's attempts are audited as `refused`).
"""

from exporter.controls.breaker.decisions import Decision
from exporter.controls.breaker.metrics import BreakerMetrics
from exporter.controls.breaker.state import (
    ACTOR_ADMIN,
    ACTOR_AUTOMATION,
    ACTOR_PROBE,
    BreakerError,
    ConcurrentUpdate,
    InvalidBreakerConfig,
    InvalidState,
    Snapshot,
    State,
    Transition,
    UnknownExchange,
    describe,
    validate_config_changes,
)
from exporter.controls.breaker.store import BreakerStore

__all__ = [
    "ACTOR_ADMIN",
    "ACTOR_AUTOMATION",
    "ACTOR_PROBE",
    "BreakerError",
    "BreakerMetrics",
    "BreakerStore",
    "ConcurrentUpdate",
    "Decision",
    "InvalidBreakerConfig",
    "InvalidState",
    "Snapshot",
    "State",
    "Transition",
    "UnknownExchange",
    "describe",
    "validate_config_changes",
]
