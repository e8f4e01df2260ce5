"""The incident model: one per exchange, the only writer of automation's breaker and pause.

Decide, then do. The package's layout is the split:

- state.py: the incident as data (phases, the row, a verification lease, the breaker as read,
  the policy); effects.py: what a decision asks for, as plain data; decision.py: the decision, a
  pure function `decide(incident, evidence, now, policy) -> Decision` (its docstring has the
  state machine and the API). No I/O in these three.
- executor.py: applies a decision in one transaction under the exchange's advisory lock, reading
  the clock, the breaker and the evidence once; dry_run.py: the executor that only records.
- store.py: the incident row's SQL; model.py: IncidentModel, what the loops and the action
  worker call (probe rounds, timers, alerts, verification results).
"""

from exporter.runbook.incident.decision import Decision, Evidence, decide
from exporter.runbook.incident.model import IncidentModel
from exporter.runbook.incident.state import (
    DOWN,
    NORMAL,
    PHASES,
    PROBATION,
    Incident,
    VerificationLease,
    backoff,
)
from exporter.runbook.incident.store import read_incidents

__all__ = [
    "DOWN",
    "NORMAL",
    "PHASES",
    "PROBATION",
    "Decision",
    "Evidence",
    "Incident",
    "IncidentModel",
    "VerificationLease",
    "backoff",
    "decide",
    "read_incidents",
]
