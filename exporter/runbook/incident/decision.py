"""The incident model's decision: a pure function of the incident, the evidence and the time.

    decide(incident, evidence, now, policy) -> Decision(incident', effects, verdict, ...)

No I/O, no clock, no randomness: the lease token a decision may hand out comes in the evidence.
So every transition can be tested on a simulated clock, and a simulator can drive thousands of
generated fault sequences through it (tests/test_decide.py shows the vocabulary).

The phases (state.py):

    normal ──(down / maintenance / trading restricted)──▶ down
        breaker OPEN (not for trading restricted), purchases paused, retries queued
    down ──(healthy for recovery_timeout, backoff over, no admin hold)──▶ verification
        (breaker HALF_OPEN, a lease: StartVerification)
        passed ──▶ probation (breaker CLOSED, purchases still paused)
        failed ──▶ down (breaker OPEN), the next attempt backs off
    probation ──(down again)──▶ down: a relapse, breaker OPEN, backoff doubles, no new pause
    probation ──(doubtful round)──▶ probation starts again
    probation ──(healthy for `probation`)──▶ normal: purchases resume, retries due

Precedence: an admin's hold > recovery verification > automation. A held breaker is never moved
(no verification starts, a passed one does not close it); an admin's pause hold refuses the
resume where it is applied (controls/pause.py).

The API rate is decided beside the phases, on probe rounds and timers: rate-limit evidence
lowers it, and it comes back once no call was rate limited for `rate_restore_after`.

Events (what woke the decision):
- `Tick("probe_round" | "timer")`: a probe round was recorded, or a timer or wake-up;
- `OutageAlert`: an outage alert fires (Prometheus sees later than the replicas: when live
  replicas see the exchange answer, the alert is contradicted and `Decision.refused` says why);
- `RateAlert`: a rate-limit alert fires: the rate is lowered now;
- `VerificationDone`: a recovery verification came back (dropped unless its lease still holds:
  `Decision.applied` is False).

Evidence is everything a decision reads: every replica's latest observation (`live`, stale ones
are ignored here), the platform's latest calls, the breaker, whether an outage alert fires
(read when no replica probes), whether purchases are paused, this replica's name and a fresh
token.

An admin may resume purchases while an incident is open (without a hold: a held pause is never
lifted by automation, and the admin's resume is theirs to make). The incident stays open, with
its backoff and its verification; but purchases never flow while the evidence says the exchange
is down: a decision that finds them flowing on such evidence stops them again (`_stop_again`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from exporter.controls.breaker import State
from exporter.runbook.evidence import Observation, PlatformCalls, Verdict, judge
from exporter.runbook.incident.effects import (
    INFO,
    WARNING,
    Audit,
    BreakerEvidence,
    ClosePeriod,
    Effect,
    Log,
    MakeRetriesDue,
    OpenPeriod,
    Pause,
    QueueRetries,
    RecordVerification,
    Resume,
    SetApiRate,
    SetBreaker,
    StartVerification,
)
from exporter.runbook.incident.state import (
    DOWN,
    NORMAL,
    PROBATION,
    Breaker,
    Incident,
    Policy,
    VerificationLease,
    backoff,
)
from exporter.signals.exchange import RecoveryResult

TRADING_RESTRICTED = "trading_restricted"


@dataclass(frozen=True)
class Tick:
    kind: str = "timer"  # probe_round, timer


@dataclass(frozen=True)
class OutageAlert:
    alertname: str
    summary: str = ""
    fingerprint: str | None = None
    open_breaker: bool = True  # the alert's configured actions include open_breaker


@dataclass(frozen=True)
class RateAlert:
    alertname: str
    summary: str = ""
    fingerprint: str | None = None


@dataclass(frozen=True)
class VerificationDone:
    token: uuid.UUID
    result: RecoveryResult


Event = Tick | OutageAlert | RateAlert | VerificationDone

NIL_TOKEN = uuid.UUID(int=0)


@dataclass(frozen=True)
class Evidence:
    event: Event = field(default_factory=Tick)
    live: tuple[Observation, ...] = ()
    platform: PlatformCalls = field(default_factory=lambda: PlatformCalls(()))
    breaker: Breaker = field(default_factory=Breaker)
    outage_alert_firing: bool = False
    replica: str = ""
    token: uuid.UUID = NIL_TOKEN  # for a lease this decision may hand out
    # Whether the exchange's purchases are paused (None: not read). While an incident is open
    # they are, unless an admin resumed them: then the evidence stops them again.
    paused: bool | None = None


@dataclass(frozen=True)
class Decision:
    incident: Incident
    effects: tuple[Effect, ...]
    verdict: Verdict
    lease: VerificationLease | None = None  # run the recovery checks under it
    refused: str | None = None  # why an alert was not acted on (the probes contradict it)
    applied: bool = True  # False: a verification result whose lease was lost, dropped


def verdict_of(evidence: Evidence, now: datetime, policy: Policy) -> Verdict:
    """The verdict on the live (not stale) observations and the platform's calls."""
    stale = timedelta(seconds=policy.replica_stale_after)
    live = [o for o in evidence.live if now - o.observed_at < stale]
    verdict = judge(
        live, evidence.platform, failure_threshold=evidence.breaker.failure_threshold,
        platform_min_calls=policy.platform_min_calls, replica=evidence.replica, now=now,
    )  # fmt: skip
    if verdict.voters == 0:
        # Nothing probes this exchange: healthy means no outage alert fires and the platform's
        # calls are answered (or absent); verification still proves it.
        healthy = not evidence.outage_alert_firing and not evidence.platform.failing(
            policy.platform_min_calls
        )
        reason = verdict.reason
        if healthy and verdict.cause is None:
            reason = "is not probed by any replica; no outage alert fires"
        verdict = replace(verdict, healthy=healthy, reason=reason)
    return verdict


def decide(incident: Incident, evidence: Evidence, now: datetime, policy: Policy) -> Decision:
    """The one decision of the incident model; see the module docstring."""
    verdict = verdict_of(evidence, now, policy)
    event = evidence.event
    if isinstance(event, VerificationDone):
        decision = _verified(incident, evidence.breaker, verdict, event, now, policy)
    elif isinstance(event, RateAlert):
        decision = _rate_alert(incident, verdict, event, now, policy)
    elif isinstance(event, OutageAlert):
        decision = _outage_alert(incident, evidence, verdict, event, now, policy)
    else:
        decision = _tick(incident, evidence, verdict, now, policy)
    return _keep_stopped(decision, evidence)


def _keep_stopped(decision: Decision, evidence: Evidence) -> Decision:
    """While an incident is open and the evidence says the exchange is down, purchases do not
    flow, whatever woke the decision (an admin may have resumed them meanwhile)."""
    verdict, effects = decision.verdict, list(decision.effects)
    opened = any(isinstance(e, Pause) for e in effects)  # this decision stops them already
    if decision.incident.phase == NORMAL or not verdict.cause or opened:
        return decision
    if evidence.paused is not False:
        return decision
    _stop_again(decision.incident, verdict, evidence.breaker, effects)
    return replace(decision, effects=tuple(effects))


def _tick(
    incident: Incident, evidence: Evidence, verdict: Verdict, now: datetime, policy: Policy
) -> Decision:
    effects: list[Effect] = [
        BreakerEvidence(
            verdict.failing_voters,
            verdict.voters,
            verdict.failing_since,
            verdict.last_failure_at,
            verdict.last_success_at,
        )  # fmt: skip
    ]
    incident = _rate(incident, verdict, now, policy, effects)
    breaker, lease = evidence.breaker, None
    if incident.phase == NORMAL and verdict.cause:
        words = f"{incident.exchange} {verdict.reason}"
        incident = _open(
            incident, verdict.cause, words, verdict.detail, now, verdict.failing_since, breaker,
            policy, effects, replica=evidence.replica,
        )  # fmt: skip
    elif incident.phase == DOWN:
        incident, lease = _while_down(incident, evidence, verdict, now, policy, effects)
    elif incident.phase == PROBATION:
        incident = _while_on_probation(incident, breaker, verdict, now, policy, effects)
    return Decision(incident, tuple(effects), verdict, lease)


def _stop_again(
    incident: Incident, verdict: Verdict, breaker: Breaker, effects: list[Effect]
) -> None:
    """Purchases flow during an open incident (an admin resumed them) while the evidence says
    the exchange is down, whatever woke the decision: stop them again. The incident, its backoff
    and its verification go on as they were; a relapse in the same decision has opened the
    breaker already, and a breaker half open for a verification is left to its result."""
    exchange = incident.exchange
    words = f"{exchange} {verdict.reason}; purchases flowed again during the open incident"
    text = f"{words}; evidence: {verdict.detail}"
    opening = any(isinstance(e, SetBreaker) and e.state is State.OPEN for e in effects)
    if verdict.cause != TRADING_RESTRICTED and breaker.state is State.CLOSED and not opening:
        effects.append(SetBreaker(State.OPEN, text))
    effects += [
        Pause(pause_reason(exchange, verdict.cause or "unavailable"), text),
        QueueRetries(text),
        Log(WARNING, f"purchases stopped again: {words}",
            {"exchange": exchange, "cause": verdict.cause, "evidence": verdict.detail}),
    ]  # fmt: skip


def _outage_alert(
    incident: Incident, evidence: Evidence, verdict: Verdict, event: OutageAlert, now: datetime,
    policy: Policy,
) -> Decision:  # fmt: skip
    if incident.phase != NORMAL:
        return Decision(incident, (), verdict)
    if verdict.voters and verdict.cause is None:
        refused = (
            f"the probes of {verdict.voters} live replica(s) contradict it: {incident.exchange} "
            f"{verdict.reason}; evidence: {verdict.detail}"
        )
        return Decision(incident, (), verdict, refused=refused)
    cause = verdict.cause or f"alert:{event.alertname}"
    firing = f"{event.alertname} firing ({event.summary or event.alertname})"
    if verdict.cause:
        words = f"{incident.exchange} {verdict.reason} ({firing})"
    else:
        words = f"{incident.exchange}: {firing}; no replica probes it"
    effects: list[Effect] = []
    incident = _open(
        incident, cause, words, verdict.detail, now, None, evidence.breaker, policy, effects,
        fingerprint=event.fingerprint, replica=evidence.replica,
        open_breaker=event.open_breaker and cause != TRADING_RESTRICTED,
    )  # fmt: skip
    return Decision(incident, tuple(effects), verdict)


def _rate_alert(
    incident: Incident, verdict: Verdict, event: RateAlert, now: datetime, policy: Policy
) -> Decision:
    effects: list[Effect] = []
    if incident.rate_lowered_at is None:  # lowered already: only the evidence is newer
        firing = f"{event.alertname} firing ({event.summary or event.alertname})"
        effects.append(
            SetApiRate(
                policy.lowered_rate_multiplier,
                f"{incident.exchange} rate limits our calls: {firing}",
                event.fingerprint,
            )  # fmt: skip
        )
        incident = replace(incident, rate_lowered_at=now)
    return Decision(replace(incident, rate_limited_seen_at=now), tuple(effects), verdict)


def _rate(
    incident: Incident, verdict: Verdict, now: datetime, policy: Policy, effects: list[Effect]
) -> Incident:
    if verdict.rate_limited:
        if incident.rate_lowered_at is None:
            cause = f"{incident.exchange} {verdict.rate_reason}; evidence: {verdict.detail}"
            effects.append(SetApiRate(policy.lowered_rate_multiplier, cause))
            incident = replace(incident, rate_lowered_at=now)
        return replace(incident, rate_limited_seen_at=now)
    quiet = timedelta(seconds=policy.rate_restore_after)
    seen = incident.rate_limited_seen_at
    if incident.rate_lowered_at is not None and (seen is None or now - seen >= quiet):
        cause = f"no {incident.exchange} call rate limited for {policy.rate_restore_after:g} s"
        effects.append(SetApiRate(1.0, cause))
        incident = replace(incident, rate_lowered_at=None)
    return incident


def _while_down(
    incident: Incident, evidence: Evidence, verdict: Verdict, now: datetime, policy: Policy,
    effects: list[Effect],
) -> tuple[Incident, VerificationLease | None]:  # fmt: skip
    breaker = evidence.breaker
    healthy = verdict.healthy and verdict.cause is None
    incident = replace(incident, healthy_since=(incident.healthy_since or now) if healthy else None)
    if not healthy or incident.healthy_since is None or breaker.held:
        return incident, None
    healthy_for = now - incident.healthy_since
    due = healthy_for >= timedelta(seconds=breaker.recovery_timeout) and (
        incident.next_attempt_at is None or now >= incident.next_attempt_at
    )
    leased = incident.lease_until is not None and incident.lease_until > now
    if not due or leased:
        return incident, None
    lease = VerificationLease(incident.exchange, evidence.token, incident.cause)
    incident = replace(
        incident, lease_until=now + timedelta(seconds=policy.lease), lease_token=evidence.token
    )
    if breaker.state is State.OPEN:
        words = (
            f"{incident.exchange} healthy for {healthy_for.total_seconds():.0f} s "
            f"({verdict.reason}): verifying recovery after {incident.cause}"
        )
        effects.append(SetBreaker(State.HALF_OPEN, f"{words}; evidence: {verdict.detail}"))
    effects.append(StartVerification(lease))
    return incident, lease


def _while_on_probation(
    incident: Incident, breaker: Breaker, verdict: Verdict, now: datetime, policy: Policy,
    effects: list[Effect],
) -> Incident:  # fmt: skip
    if verdict.cause:
        return _relapse(incident, breaker, verdict, now, policy, effects)
    if not verdict.healthy:
        # Probation is health without a break: a doubtful round starts it again.
        return replace(incident, probation_until=now + timedelta(seconds=policy.probation))
    if incident.probation_until is not None and now >= incident.probation_until:
        return _resume(incident, now, policy, effects)
    return incident


def _open(
    incident: Incident, cause: str, words: str, detail: str, now: datetime,
    started_at: datetime | None, breaker: Breaker, policy: Policy, effects: list[Effect], *,
    fingerprint: str | None = None, open_breaker: bool | None = None, replica: str = "",
) -> Incident:  # fmt: skip
    """Stop purchases: breaker OPEN, pause, queue retries, one commit with the audit.

    cancel_only / post_only stop market orders, not the API: the breaker stays closed."""
    exchange = incident.exchange
    text = f"{words}; evidence: {detail}"
    window = timedelta(seconds=breaker.monitoring_window)
    soon = incident.last_closed_at is not None and now - incident.last_closed_at < window
    relapses = incident.relapses + 1 if soon else 0
    if open_breaker is None:
        open_breaker = cause != TRADING_RESTRICTED
    if open_breaker and breaker.state is not State.OPEN:
        effects.append(SetBreaker(State.OPEN, text, fingerprint))
    started = min(started_at or now, now)
    effects += [
        Pause(pause_reason(exchange, cause), text, fingerprint),
        QueueRetries(text, fingerprint),
        OpenPeriod(cause, started),
        Audit("incident_opened", text, fingerprint=fingerprint,
              detail={"cause": cause, "relapses": relapses, "replica": replica}),
        Log(WARNING, f"purchases stopped: {words}",
            {"exchange": exchange, "cause": cause, "evidence": detail}),
    ]  # fmt: skip
    next_attempt = None
    if relapses:
        wait = backoff(breaker.recovery_timeout, relapses, policy.backoff_max)
        next_attempt = now + timedelta(seconds=wait)
    return replace(
        incident, phase=DOWN, cause=cause, started_at=started, healthy_since=None,
        relapses=relapses, next_attempt_at=next_attempt, probation_until=None,
        lease_until=None, lease_token=None,
    )  # fmt: skip


def _relapse(
    incident: Incident, breaker: Breaker, verdict: Verdict, now: datetime, policy: Policy,
    effects: list[Effect],
) -> Incident:  # fmt: skip
    """Down again during probation: breaker OPEN, still paused, the next attempt backs off."""
    relapses = incident.relapses + 1
    wait = backoff(breaker.recovery_timeout, relapses, policy.backoff_max)
    words = f"{incident.exchange} relapsed during probation: it {verdict.reason}"
    text = f"{words}; evidence: {verdict.detail}"
    if verdict.cause != TRADING_RESTRICTED and breaker.state is not State.OPEN:
        effects.append(SetBreaker(State.OPEN, text))
    effects += [
        Audit("incident_relapsed", text,
              detail={"relapses": relapses, "next_attempt_in_seconds": wait}),
        Log(WARNING, f"purchases stay stopped: {words}",
            {"exchange": incident.exchange, "cause": verdict.cause, "evidence": verdict.detail}),
    ]  # fmt: skip
    return replace(
        incident, phase=DOWN, cause=verdict.cause or incident.cause, healthy_since=None,
        relapses=relapses, next_attempt_at=now + timedelta(seconds=wait), probation_until=None,
    )  # fmt: skip


def _resume(incident: Incident, now: datetime, policy: Policy, effects: list[Effect]) -> Incident:
    """Probation passed: purchases resume (never over a manual hold), retries become due."""
    exchange = incident.exchange
    why = (
        f"{exchange} is healthy again: verified, then healthy for {policy.probation:g} s "
        f"(was {incident.cause})"
    )
    effects += [
        Resume(why),
        MakeRetriesDue(why),
        ClosePeriod(now),
        # healthy_since: when the evidence cleared, for the review's time to resume.
        Audit(
            "incident_closed",
            why,
            detail={"started_at": incident.started_at, "healthy_since": incident.healthy_since},
        ),
        Log(INFO, f"purchases resume: {why}", {"exchange": exchange}),
    ]
    return replace(
        incident, phase=NORMAL, cause=None, started_at=None, healthy_since=None,
        next_attempt_at=None, probation_until=None, lease_until=None, lease_token=None,
    )  # fmt: skip


def checks_detail(result: RecoveryResult) -> tuple[dict[str, object], ...]:
    return tuple({"name": c.name, "ok": c.ok, "detail": c.detail} for c in result.checks)


def verification_words(exchange: str, result: RecoveryResult, cause: str | None) -> str:
    passed = "; ".join(f"{c.name}: {c.detail}" for c in result.checks if c.ok)
    if result.ok:
        return f"{exchange} recovery verified after {cause}: {passed or 'no check failed'}"
    failed = "; ".join(f"{c.name}: {c.detail}" for c in result.checks if not c.ok)
    return f"{exchange} recovery verification failed: {failed or 'unknown'}"


def _verified(
    incident: Incident, breaker: Breaker, verdict: Verdict, event: VerificationDone,
    now: datetime, policy: Policy,
) -> Decision:  # fmt: skip
    exchange = incident.exchange
    if incident.lease_token != event.token or incident.phase != DOWN:
        lost = Log(WARNING, f"{exchange} recovery verification result dropped: its lease was "
                   "lost (a newer decision holds it)", {"exchange": exchange})  # fmt: skip
        return Decision(incident, (lost,), verdict, applied=False)
    result = event.result
    why = verification_words(exchange, result, incident.cause)
    checks = checks_detail(result)
    incident = replace(incident, lease_until=None, lease_token=None)
    effects: list[Effect] = [
        RecordVerification(result.ok, checks, now),
        Audit("verify_recovery", why, "success" if result.ok else "failure",
              detail={"checks": list(checks)}),
    ]  # fmt: skip
    if result.ok and breaker.held:
        # An admin's hold outranks a verification: nothing closes, the next one waits for health
        # after the admin lets go.
        held = f"{exchange} stays stopped: an admin holds the breaker open ({why})"
        effects.append(Log(WARNING, held, {"exchange": exchange}))
        return Decision(replace(incident, healthy_since=None), tuple(effects), verdict)
    if result.ok:
        if breaker.state is not State.CLOSED:
            effects.append(SetBreaker(State.CLOSED, why))
        incident = replace(
            incident, phase=PROBATION, last_closed_at=now,
            probation_until=now + timedelta(seconds=policy.probation),
        )  # fmt: skip
        return Decision(incident, tuple(effects), verdict)
    if breaker.state is not State.OPEN:
        effects.append(SetBreaker(State.OPEN, why))
    relapses = incident.relapses + 1
    wait = backoff(breaker.recovery_timeout, relapses, policy.backoff_max)
    effects.append(Log(WARNING, f"purchases stay paused: {why}", {"exchange": exchange}))
    incident = replace(incident, relapses=relapses, next_attempt_at=now + timedelta(seconds=wait))
    return Decision(incident, tuple(effects), verdict)


def pause_reason(exchange: str, cause: str) -> str:
    """What the platform shows for the pause."""
    return {
        "unavailable": f"{exchange} API is not answering",
        "maintenance": f"{exchange} is in maintenance",
        TRADING_RESTRICTED: f"{exchange} accepts no market orders (cancel_only/post_only)",
    }.get(cause, f"{exchange}: {cause.removeprefix('alert:')} firing")
