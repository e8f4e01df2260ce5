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
