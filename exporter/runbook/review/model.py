"""The review of one incident as plain data, built from the rows `load.py` read: no I/O, no clock
(the snapshot's `now` comes in), so the words and the figures are tested without a database.

Times are as the exporter recorded them. An audit entry's time is its transaction's start, which
may be a little before the clock reading that opened the incident period in the same
transaction: a decision never precedes its evidence, so negative gaps count as zero.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from exporter.signals.impact import ImpactReport

# The timeline's sources, in the order the issue lists them.
EVIDENCE, DECISION, PAGE, VERIFICATION, RESUME, NOTICE = (
    "evidence", "decision", "page", "verification", "resume", "notice",
)  # fmt: skip
SOURCES = (EVIDENCE, DECISION, PAGE, VERIFICATION, RESUME, NOTICE)
OPEN, RESOLVED = "open", "resolved"


@dataclass(frozen=True)
class IncidentPeriod:
    """One incident: a period in which the incident model held an exchange's purchases
    (liquid_abt.incident_periods), with when purchases stopped and resumed (audit log)."""

    id: int
    exchange: str
    cause: str
    started_at: datetime
    ended_at: datetime | None
    stopped_at: datetime | None
    resumed_at: datetime | None

    @property
    def state(self) -> str:
        return OPEN if self.ended_at is None else RESOLVED

    def duration(self, now: datetime) -> timedelta:
        return (self.ended_at or now) - self.started_at

    def as_json(self, now: datetime) -> dict[str, Any]:
        return {
            "id": self.id,
            "exchange": self.exchange,
            "cause": self.cause,
            "state": self.state,
            "startedAt": _iso(self.started_at),
            "stoppedAt": _iso(self.stopped_at),
            "resumedAt": _iso(self.resumed_at),
            "endedAt": _iso(self.ended_at),
            "durationSeconds": round(self.duration(now).total_seconds(), 3),
        }


@dataclass(frozen=True)
class Entry:
    """One line of the timeline: when, from which record, what."""

    at: datetime
    source: str
    text: str
    actor: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {"at": _iso(self.at), "source": self.source, "actor": self.actor, "text": self.text}


@dataclass(frozen=True)
class RunbookImpact:
    """The exchange runbook's "Post-Incident Review" query over the incident window, as written:
    failed purchases whose reason mentions the API, of every exchange."""

    affected_purchases: int
    total_amount_affected: Decimal
    affected_customers: int

    def as_json(self) -> dict[str, Any]:
        return {
            "affectedPurchases": self.affected_purchases,
            "totalAmountAffected": str(self.total_amount_affected),
            "affectedCustomers": self.affected_customers,
        }


@dataclass(frozen=True)
class Retries:
    """What became of the exchange's failed purchases of the window (the retry queue's rows).

    still_failed: failed, and neither retried successfully nor waiting for a retry (not queued,
    retries used up, or cancelled). Refunded ones are counted apart."""

    failed_purchases: int = 0
    queued: int = 0
    succeeded: int = 0
    pending: int = 0
    exhausted: int = 0
    cancelled: int = 0
    not_queued: int = 0
    refunded: int = 0
    still_failed: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "failedPurchases": self.failed_purchases,
            "queuedForRetry": self.queued,
            "retriedAndSucceeded": self.succeeded,
            "retryPending": self.pending,
            "retriesExhausted": self.exhausted,
            "retriesCancelled": self.cancelled,
            "notQueued": self.not_queued,
            "refunded": self.refunded,
            "stillFailed": self.still_failed,
        }


@dataclass(frozen=True)
class Durations:
    """Time to stop (first evidence -> purchases stopped), time paused (stopped -> resumed),
    time to resume (evidence clear -> resumed). None: not happened (yet)."""

    first_evidence: datetime
    stopped: datetime | None
    evidence_clear: datetime | None
    # Where `evidence_clear` comes from: the health the incident model recorded, or (older
    # records) the passing verification.
    evidence_clear_from: str | None
    resumed: datetime | None
    now: datetime

    @property
    def time_to_stop(self) -> timedelta | None:
        return _gap(self.first_evidence, self.stopped)

    @property
    def time_paused(self) -> timedelta | None:
        """Until now while purchases are still stopped."""
        if self.stopped is None:
            return None
        return _gap(self.stopped, self.resumed or self.now)

    @property
    def time_to_resume(self) -> timedelta | None:
        return _gap(self.evidence_clear, self.resumed)

    def as_json(self) -> dict[str, Any]:
        return {
            "firstEvidenceAt": _iso(self.first_evidence),
            "stoppedAt": _iso(self.stopped),
            "evidenceClearAt": _iso(self.evidence_clear),
            "evidenceClearFrom": self.evidence_clear_from,
            "resumedAt": _iso(self.resumed),
            "timeToStopSeconds": _seconds(self.time_to_stop),
            "timePausedSeconds": _seconds(self.time_paused),
            "stillPaused": self.stopped is not None and self.resumed is None,
            "timeToResumeSeconds": _seconds(self.time_to_resume),
        }


@dataclass(frozen=True)
class Notice:
    """A customer notice of the incident (liquid_abt.customer_notices, where the outbox exists)."""

    id: int
    kind: str
    tenant_id: str | None
    channels: tuple[str, ...]
    state: str
    created_at: datetime
    sent_at: datetime | None
    attempts: int
    message: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "kind": self.kind, "tenantId": self.tenant_id,
            "channels": list(self.channels), "state": self.state,
            "createdAt": _iso(self.created_at), "sentAt": _iso(self.sent_at),
            "attempts": self.attempts, "message": self.message,
        }  # fmt: skip


@dataclass(frozen=True)
class Review:
    incident: IncidentPeriod
    generated_at: datetime
    window_start: datetime  # the timeline's, around the incident
    window_end: datetime
    # The impact queries' window: from the first failed purchase of the run that led up to the
    # incident (or its start), to its end (now while it is open).
    impact_start: datetime
    impact_end: datetime
    timeline: tuple[Entry, ...]
    timeline_cut: int  # entries left out past the cap
    runbook_impact: RunbookImpact
    exchange_impact: ImpactReport
    retries: Retries
    durations: Durations
    notices: tuple[Notice, ...] | None  # None: no outbox in this database
    checklist: tuple[tuple[str, tuple[str, ...]], ...] = field(default=())

    def as_json(self) -> dict[str, Any]:
        incident = self.incident
        return {
            "incident": incident.as_json(self.generated_at),
            "generatedAt": _iso(self.generated_at),
            "timeline": {
                "start": _iso(self.window_start),
                "end": _iso(self.window_end),
                "entries": [e.as_json() for e in self.timeline],
                "omitted": self.timeline_cut,
            },
            "impact": {
                "start": _iso(self.impact_start),
                "end": _iso(self.impact_end),
                "runbookQuery": self.runbook_impact.as_json(),
                "exchange": self.exchange_impact.as_json(),
                "retries": self.retries.as_json(),
            },
            "durations": self.durations.as_json(),
            "notices": None if self.notices is None else [n.as_json() for n in self.notices],
            "rcaChecklist": [
                {"source": source, "questions": [{"question": q, "answer": None} for q in qs]}
                for source, qs in self.checklist
            ],
        }


# ---- the timeline from the records ----


def audit_entry(row: Mapping[str, Any]) -> Entry | None:
    """An audit log entry as a timeline line, or None for one that changed nothing."""
    action, result, cause = row["action"], row["result"], row["cause"] or ""
    detail: Mapping[str, Any] = row["detail"] or {}
    actor = row["actor"]
    if result == "unchanged":
        return None
    by = "" if actor == "automation" else f" by {actor}"
    flag = {"success": "", "dry_run": " [dry run]"}.get(result, f" [{result}]")
    source, text = DECISION, f"{action}{by}{flag}: {cause}".rstrip(": ")
    if action in ("incident_opened", "incident_relapsed"):
        what = "incident opened" if action == "incident_opened" else "relapse"
        source, text = EVIDENCE, f"{what}{flag}: {cause}"
    elif action == "breaker_transition":
        change = f"{detail.get('from', '?')} -> {detail.get('to', '?')}"
        text = f"breaker {change}{by}{flag}: {_words(cause)}"
    elif action == "pause_purchases":
        text = f"purchases paused{by}{flag}: {_words(cause)}"
    elif action == "resume_purchases":
        source = RESUME if result == "success" else DECISION
        text = f"purchases resumed{by}{flag}: {_words(cause)}"
    elif action == "set_api_rate_multiplier":
        text = f"API rate x{detail.get('from', '?')} -> x{detail.get('to', '?')}{by}{flag}: " + (
            _words(cause)
        )
    elif action == "queue_failed_purchases_for_retry":
        text = (
            f"{detail.get('queued', '?')} failed purchase(s) queued for retry "
            f"({detail.get('eligible', '?')} eligible){by}{flag}"
        )
    elif action == "make_retries_due":
        text = f"queued retries made due: {detail.get('made_due', '?')}{by}{flag}"
    elif action == "verify_recovery":
        source = VERIFICATION
        text = f"recovery verification {'passed' if result == 'success' else 'FAILED'}: " + (
            checks_text(detail.get("checks") or []) or _words(cause)
        )
    elif action == "incident_closed":
        source, text = RESUME, f"incident closed{flag}: {cause}"
    return Entry(row["at"], source, text, actor)


def checks_text(checks: Iterable[Mapping[str, Any]]) -> str:
    """Each check's result: `ticker ok (bid 1.0); balance FAILED (refused)`."""
    return "; ".join(
        f"{c.get('name', '?')} {'ok' if c.get('ok') else 'FAILED'}"
        + (f" ({c['detail']})" if c.get("detail") else "")
        for c in checks
    )


def page_entry(row: Mapping[str, Any]) -> Entry:
    """A notification Alertmanager delivered (liquid_abt.notifications), when it was received."""
    summary = f": {row['summary']}" if row.get("summary") else ""
    where = "" if row.get("exchange") else " (no exchange label)"
    return Entry(row["received_at"], PAGE, f"{row['alertname']} {row['status']}{where}{summary}")


def notice_entries(notices: Iterable[Notice]) -> list[Entry]:
    """Each notice when it was queued and when it was sent; per tenant ones grouped per instant."""
    grouped: dict[tuple[datetime, str, str], int] = {}
    for n in notices:
        grouped[(n.created_at, n.kind, "queued")] = (
            grouped.get((n.created_at, n.kind, "queued"), 0) + 1
        )
        if n.sent_at is not None:
            grouped[(n.sent_at, n.kind, "sent")] = grouped.get((n.sent_at, n.kind, "sent"), 0) + 1
    return [
        Entry(at, NOTICE, f"{kind} {what}" + (f" ({count} notices)" if count > 1 else ""))
        for (at, kind, what), count in grouped.items()
    ]


def timeline(
    period: IncidentPeriod, audit_rows: Sequence[Mapping[str, Any]],
    pages: Sequence[Mapping[str, Any]], notices: Sequence[Notice], limit: int,
    first_failure: Mapping[str, Any] | None = None,
) -> tuple[tuple[Entry, ...], int]:  # fmt: skip
    """Every record in time order (ties: evidence before decisions), capped at `limit`; returns
    the entries and how many were left out. `first_failure`: the first failed purchase of the
    run that led up to the incident (created_at, failure_reason), if one came before it."""
    start = Entry(period.started_at, EVIDENCE, f"{period.exchange} failing ({period.cause}): "
                  "the incident's start, from the probes and the platform's calls")  # fmt: skip
    entries = [start, *(e for r in audit_rows if (e := audit_entry(r)) is not None)]
    if first_failure is not None:
        reason = first_failure["failure_reason"] or "no reason given"
        entries.append(Entry(first_failure["created_at"], EVIDENCE,
                             f"first failed purchase on {period.exchange} of the run that led "
                             f"to the incident: {reason}"))  # fmt: skip
    entries += [page_entry(p) for p in pages]
    entries += notice_entries(notices)
    entries.sort(key=lambda e: (e.at, SOURCES.index(e.source)))
    return tuple(entries[:limit]), max(0, len(entries) - limit)


# ---- figures ----


def retries(rows: Sequence[Mapping[str, Any]]) -> Retries:
    """From (purchase status, retry queue status or None, count) rows."""
    counts: dict[str, int] = {}
    total = 0
    for row in rows:
        purchase, queue, n = row["purchase_status"], row["queue_status"], int(row["n"])
        total += n
        if purchase == "refunded":
            key = "refunded"
        elif queue is None:
            key = "not_queued"
        else:
            key = {"succeeded": "succeeded", "failed": "exhausted", "cancelled": "cancelled"}.get(
                queue, "pending"
            )
        counts[key] = counts.get(key, 0) + n
    queued = sum(counts.get(k, 0) for k in ("succeeded", "exhausted", "cancelled", "pending"))
    still = sum(counts.get(k, 0) for k in ("not_queued", "exhausted", "cancelled"))
    return Retries(
        failed_purchases=total, queued=queued, succeeded=counts.get("succeeded", 0),
        pending=counts.get("pending", 0), exhausted=counts.get("exhausted", 0),
        cancelled=counts.get("cancelled", 0), not_queued=counts.get("not_queued", 0),
        refunded=counts.get("refunded", 0), still_failed=still,
    )  # fmt: skip


def durations(
    period: IncidentPeriod, audit_rows: Sequence[Mapping[str, Any]], now: datetime,
    first_failure: datetime | None = None,
) -> Durations:  # fmt: skip
    """The three times. The first evidence is the incident's start, or the first failed purchase
    of the run that led up to it; evidence clear is the health the closing decision recorded
    (`healthy_since`), else the last passing verification before the resume."""
    clear: datetime | None = None
    source: str | None = None
    resumed = period.resumed_at
    for row in audit_rows:
        if row["action"] == "incident_closed" and (row["detail"] or {}).get("healthy_since"):
            clear = datetime.fromisoformat(str(row["detail"]["healthy_since"]))
            source = "the health the incident model recorded"
    if clear is None and resumed is not None:
        passed = [
            r["at"] for r in audit_rows
            if r["action"] == "verify_recovery" and r["result"] == "success" and r["at"] <= resumed
        ]  # fmt: skip
        if passed:
            clear, source = passed[-1], "the last passing recovery verification"
    first = min(period.started_at, first_failure or period.started_at)
    return Durations(first, period.stopped_at, clear, source, resumed, now)


def _words(cause: str) -> str:
    """The cause in words; the evidence after `; evidence: ` is on the incident's own line."""
    return cause.split("; evidence: ")[0]


def _gap(start: datetime | None, end: datetime | None) -> timedelta | None:
    if start is None or end is None:
        return None
    return max(timedelta(0), end - start)


def _seconds(value: timedelta | None) -> float | None:
    return None if value is None else round(value.total_seconds(), 3)


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()
