"""What a decision asks for, as plain data. An executor applies them in order, in one transaction
(executor.py), or only records them (dry_run.py).

Every effect that is a runbook action names it (`action`, a value of the `action` label of
liquid_abt_actions_total): the executor counts it with result `success` once committed, the dry
run with `dry_run`. Audit entries, log lines and incident periods are effects too, so the words a
person reads are decided with the decision.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from exporter.controls.breaker import State
from exporter.runbook.incident.state import VerificationLease


@dataclass(frozen=True)
class SetBreaker:
    """Move the breaker (only emitted when it is elsewhere; a hold is never lifted)."""

    state: State
    cause: str
    fingerprint: str | None = None

    @property
    def action(self) -> str | None:
        return {State.OPEN: "open_breaker", State.CLOSED: "close_breaker"}.get(self.state)


@dataclass(frozen=True)
class Pause:
    """Pause automatic purchases; `reason` is what the platform shows."""

    reason: str
    cause: str
    fingerprint: str | None = None
    action = "pause_purchases"


@dataclass(frozen=True)
class Resume:
    """Resume automatic purchases (an admin's pause hold refuses it, audited as refused)."""

    cause: str
    action = "resume_purchases"


@dataclass(frozen=True)
class QueueRetries:
    """Queue the retry-eligible failed purchases of the exchange (each once)."""

    cause: str
    fingerprint: str | None = None
    action = "queue_retries"


@dataclass(frozen=True)
class MakeRetriesDue:
    """The queued retries may run now: the exchange recovered."""

    cause: str
    action = None


@dataclass(frozen=True)
class SetApiRate:
    """The runbook's adjustApiCallFrequency: below 1 lowers the rate, 1 restores it."""

    multiplier: float
    cause: str
    fingerprint: str | None = None

    @property
    def action(self) -> str:
        return "lower_api_rate" if self.multiplier < 1 else "restore_api_rate"


@dataclass(frozen=True)
class StartVerification:
    """Run the recovery checks under this lease (the incident row holds it already)."""

    lease: VerificationLease
    action = None


@dataclass(frozen=True)
class RecordVerification:
    """Keep a verification's result on the incident row, for the admin status."""

    passed: bool
    checks: tuple[dict[str, Any], ...]
    at: datetime
    action = "verify_recovery"

    @property
    def result(self) -> str:
        return "success" if self.passed else "failure"


@dataclass(frozen=True)
class Audit:
    """An entry of the audit log by automation; `cause` leads with the cause in words."""

    action_name: str
    cause: str
    result: str = "success"
    fingerprint: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    action = None


@dataclass(frozen=True)
class OpenPeriod:
    """An incident period starts (liquid_abt.incident_periods: the impact report's ranges)."""

    cause: str
    started_at: datetime
    action = None


@dataclass(frozen=True)
class ClosePeriod:
    ended_at: datetime
    action = None


@dataclass(frozen=True)
class BreakerEvidence:
    """The evidence shown with the breaker (runbook's getMetrics): no transition, no audit."""

    failing: int
    voters: int
    failing_since: datetime | None
    last_failure_at: datetime | None
    last_success_at: datetime | None
    action = None


@dataclass(frozen=True)
class SetRoute:
    """Route the primary's purchases to a secondary (None: not routed), or keep the route and
    refresh its validity (`audited` False: nothing changed that a person needs to read)."""

    routed_to: str | None
    cause: str
    blocked_guard: str | None = None
    audited: bool = True

    @property
    def action(self) -> str | None:
        return "route_purchases" if self.audited else None


@dataclass(frozen=True)
class Log:
    """A log line worth reading at 3 a.m., written once the decision committed."""

    level: int
    message: str
    fields: dict[str, Any] = field(default_factory=dict)
    action = None


Effect = (
    SetBreaker | Pause | Resume | QueueRetries | MakeRetriesDue | SetApiRate | StartVerification
    | RecordVerification | Audit | OpenPeriod | ClosePeriod | BreakerEvidence | SetRoute | Log
)  # fmt: skip

WARNING, INFO = logging.WARNING, logging.INFO
