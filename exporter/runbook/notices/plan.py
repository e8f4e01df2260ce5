"""Which customer notices are due: a pure function of the incidents, what is queued, who is
affected, the time and the policy (docs/customer-notices.md).

No I/O and no clock, so every rule is tested on a simulated clock (tests/test_notice_plan.py);
the loop (loop.py) reads the inputs, runs `plan`, and inserts the result ON CONFLICT DO NOTHING,
which is what makes each notice exactly once across replicas and restarts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from exporter.config import NoticesConfig, NoticeTemplate
from exporter.controls.notices import Notice, NoticeKey

STARTED, ONGOING, RESOLVED, PURCHASE_FAILED = (
    "incident_started", "incident_ongoing", "incident_resolved", "purchase_failed",
)  # fmt: skip
QUEUED, HELD, CANCELLED = "queued", "held", "cancelled"
UNKNOWN = "unknown"


@dataclass(frozen=True)
class IncidentView:
    """An incident period (liquid_abt.incident_periods) as the planner needs it."""

    id: int
    exchange: str
    cause: str
    started_at: datetime
    ended_at: datetime | None = None
    # When it is expected to end, where known (a manual pause's estimate); None: "unknown".
    estimated_end: datetime | None = None
    # Failover: the exchange purchases are routed to meanwhile (the *_routed templates); the
    # routing decision is not the planner's, it is told.
    routed_to: str | None = None


@dataclass(frozen=True)
class TenantImpact:
    """A tenant with purchases that failed during the incident and are not bought yet."""

    incident_id: int
    tenant_id: str
    # The oldest failure still outstanding: the blip is counted from it.
    failed_at: datetime
    next_retry_at: datetime | None = None
    purchase_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class NoticePolicy:
    started_after: timedelta
    ongoing_every: timedelta
    blip: timedelta
    support_contact: str
    templates: Mapping[str, NoticeTemplate]
    hold_new: bool = False

    @classmethod
    def from_config(cls, config: NoticesConfig) -> NoticePolicy:
        return cls(
            started_after=timedelta(seconds=config.started_after),
            ongoing_every=timedelta(seconds=config.ongoing_every),
            blip=timedelta(seconds=config.blip),
            support_contact=config.support_contact,
            templates=config.templates,
            hold_new=config.hold_new,
        )


def plan(
    incidents: Iterable[IncidentView],
    queued: Mapping[NoticeKey, str],
    impacts: Iterable[TenantImpact],
    now: datetime,
    policy: NoticePolicy,
) -> list[Notice]:
    """The notices due at `now` that are not in `queued` (key -> state, whatever the state).

    - incident_started: the incident is open and started `started_after` ago (one that resumed
      sooner tells nobody).
    - incident_ongoing: number n at `started_at + n * ongoing_every` while open; only the latest
      one due (a planner that was away does not send the ones it missed in a burst).
    - incident_resolved: once the incident closed.
    - purchase_failed: a tenant whose oldest outstanding failure is `blip` old; once per incident.

    An operator governs an incident through its incident_started: cancelled, no further
    broadcast is planned; held, what is planned for the incident is held too.
    """
    by_incident: dict[int, list[TenantImpact]] = {}
    for impact in impacts:
        by_incident.setdefault(impact.incident_id, []).append(impact)
    notices: list[Notice] = []
    for incident in incidents:
        notices += _incident_notices(
            incident, queued, by_incident.get(incident.id, []), now, policy
        )
    return [n for n in notices if n.key not in queued]


def _incident_notices(
    incident: IncidentView, queued: Mapping[NoticeKey, str], impacts: list[TenantImpact],
    now: datetime, policy: NoticePolicy,
) -> list[Notice]:  # fmt: skip
    started_state = queued.get((incident.id, STARTED, 0, None))
    state = HELD if policy.hold_new or started_state == HELD else QUEUED
    build = _Builder(incident, now, policy, state)
    notices: list[Notice] = []
    is_open = incident.ended_at is None or incident.ended_at > now
    if started_state is None and is_open and now >= incident.started_at + policy.started_after:
        notices.append(build.broadcast(STARTED))
    announced = started_state not in (None, CANCELLED)
    if announced and is_open:
        number = (now - incident.started_at) // policy.ongoing_every
        if number >= 1:
            notices.append(build.broadcast(ONGOING, seq=number))
    if announced and not is_open:
        notices.append(build.broadcast(RESOLVED))
    for impact in impacts:
        if now >= impact.failed_at + policy.blip:
            notices.append(build.purchase_failed(impact, is_open))
    return notices


class _Builder:
    """Renders one incident's notices from the templates."""

    def __init__(
        self, incident: IncidentView, now: datetime, policy: NoticePolicy, state: str
    ) -> None:
        self._incident, self._now, self._policy, self._state = incident, now, policy, state

    def _fields(self) -> dict[str, str]:
        incident = self._incident
        estimate = incident.estimated_end
        return {
            "exchange": incident.exchange,
            "routed_to": incident.routed_to or "",
            "estimated_resolution": (
                when(estimate) if estimate is not None and estimate > self._now else UNKNOWN
            ),
            "next_retry": "",
            "support_contact": self._policy.support_contact,
            "started_at": when(incident.started_at),
        }

    def _context(self, template: str) -> dict[str, Any]:
        incident = self._incident
        estimate = incident.estimated_end
        return {
            "template": template,
            "exchange": incident.exchange,
            "cause": incident.cause,
            "incidentStartedAt": incident.started_at.isoformat(),
            "incidentEndedAt": _iso(incident.ended_at),
            "estimatedResolution": (
                estimate.isoformat() if estimate is not None and estimate > self._now else None
            ),
            "routedTo": incident.routed_to,
            "supportContact": self._policy.support_contact,
        }

    def _template(self, kind: str) -> tuple[str, NoticeTemplate]:
        name = kind
        if self._incident.routed_to and f"{kind}_routed" in self._policy.templates:
            name = f"{kind}_routed"
        return name, self._policy.templates[name]

    def broadcast(self, kind: str, seq: int = 0) -> Notice:
        name, template = self._template(kind)
        context = self._context(name)
        if kind == ONGOING:
            context["number"] = seq
        return self._notice(kind, seq, None, template, self._fields(), context)

    def purchase_failed(self, impact: TenantImpact, is_open: bool) -> Notice:
        name, template = self._template(PURCHASE_FAILED)
        retry_at = impact.next_retry_at
        if is_open and not self._incident.routed_to:
            # The gate holds every retry while purchases are stopped, whatever the backoff says.
            words, retry_at = "as soon as purchases resume", None
        elif retry_at is None or retry_at <= self._now:
            words = "within minutes"
        else:
            words = f"next attempt at {when(retry_at)}"
        fields = {**self._fields(), "next_retry": words}
        context = {
            **self._context(name),
            # The runbook's bitcoin_purchase_failure template and its context.
            "template": "bitcoin_purchase_failure",
            "nextRetry": words,
            "nextRetryAt": _iso(retry_at),
            "failedAt": impact.failed_at.isoformat(),
            "purchaseIds": list(impact.purchase_ids),
        }
        return self._notice(PURCHASE_FAILED, 0, impact.tenant_id, template, fields, context)

    def _notice(
        self, kind: str, seq: int, tenant: str | None, template: NoticeTemplate,
        fields: dict[str, str], context: dict[str, Any],
    ) -> Notice:  # fmt: skip
        return Notice(
            incident_id=self._incident.id, exchange=self._incident.exchange, kind=kind, seq=seq,
            tenant_id=tenant, channels=tuple(template.channels),
            message=template.message.format(**fields), context=context, ready_at=self._now,
            state=self._state,
        )  # fmt: skip


def when(at: datetime) -> str:
    """A time as a customer reads it: minutes, UTC, no ambiguity (the context has ISO 8601)."""
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None
