"""The simulated world: a clock that jumps from event to event, replicas probing on the incident
loop's cadence and woken by their platform watch (probing.py), the platform buying and logging
its calls, Alertmanager, an admin, and the executor that applies the core's effects (the pause,
as the executor reads it, is evidence too).

One step is one decision: a replica's probe round ends (the round is recorded, then decided on),
a recovery verification returns, or an outage alert is delivered. The invariants are checked
after every step (invariants.py). Everything random comes from one seeded `random.Random`.
"""

from __future__ import annotations

import bisect
import functools
import heapq
import math
import operator
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from exporter.config import Config
from exporter.controls.breaker import State
from exporter.runbook.evidence import (
    UNAVAILABLE_REASONS,
    Observation,
    PlatformCalls,
    Verdict,
    judge,
    observe_round,
)
from exporter.runbook.incident import effects as fx
from exporter.runbook.incident.state import NORMAL, Incident
from exporter.signals.classify import ReasonClassifier
from exporter.signals.exchange import (
    AUTH_OUTCOMES,
    CallResult,
    Check,
    RecoveryResult,
    RoundResult,
)
from exporter.signals.kraken.outcomes import Outcome, classify_error
from exporter.signals.kraken.probe import ABORTING
from tests.simulator.core import EPOCH, Core, decisions
from tests.simulator.faults import Fault, Kind
from tests.simulator.invariants import Invariants
from tests.simulator.params import Params

ENDPOINTS = ("SystemStatus", "Ticker", "Depth", "Time", "Balance")
_FAST = 0.05  # an answered call's latency (seconds)

# Kraken's words for each fault, classified by the production code.
_OUTAGE = classify_error("EService:Unavailable")
_RATE = classify_error("EAPI:Rate limit exceeded")
_AUTH = classify_error("EAPI:Invalid key")
GENERATED = tuple(Kind)
_STATUS = {Kind.MAINTENANCE: "maintenance", Kind.CANCEL_ONLY: "cancel_only",
           Kind.POST_ONLY: "post_only"}  # fmt: skip
_REASONS = ReasonClassifier(Config().purchases.failure_reasons)
PLATFORM_REASON = {
    Kind.OUTAGE: _REASONS.classify("EService:Unavailable"),
    Kind.HANG: _REASONS.classify("Request timeout after 10000ms"),
    Kind.SPORADIC_HANG: _REASONS.classify("Request timeout after 10000ms"),
    Kind.RATE_LIMIT: _REASONS.classify("EAPI:Rate limit exceeded"),
    Kind.MAINTENANCE: _REASONS.classify("EService:Unavailable: maintenance"),
    Kind.CANCEL_ONLY: _REASONS.classify("EService:Market in cancel_only mode"),
    Kind.POST_ONLY: _REASONS.classify("EService:Market in post_only mode"),
}
# The alerts that page, the cause each names, and whether it is an outage alert (delivered to
# the incident model through the action worker). ExchangeApiAuthFailures counts the probe's
# auth_error outcomes: whatever the production classifies `EAPI:Invalid nonce` as decides
# whether a nonce clash pages as auth.
ALERTS = {
    "ExchangeApiDown": ("unavailable", True),
    "ExchangeMaintenance": ("maintenance", True),
    "ExchangeTradingRestricted": ("trading_restricted", True),
    "ExchangeApiAuthFailures": ("auth", False),
}


_logged_at = operator.itemgetter(0)


@functools.lru_cache(maxsize=4096)
def at(t: float) -> datetime:
    return EPOCH + timedelta(seconds=t)


@dataclass
class Replica:
    slot: int
    generation: int = 0  # a restart is a new process, with a new name
    scheduled: int = 0  # the round due next (a wake-up replaces it with an earlier one)
    busy: bool = False  # in a round or a verification
    # Waiting for its next round, its last round answered: the platform watch may wake it
    # (probing.IncidentLoop._idle). A new process is not idle until its first round.
    idle: bool = False
    watching_failing: bool = False  # its platform watch's last reading

    @property
    def name(self) -> str:
        return f"replica-{self.slot}.{self.generation}"


@dataclass
class Alert:
    name: str
    pending_since: float | None = None
    firing: bool = False
    clear_since: float | None = None


@dataclass
class Controls:
    """What the executor and the admin write: the breaker, the pause, the API rate."""

    breaker: State = State.CLOSED
    breaker_hold: bool = False
    paused: bool = False
    pause_hold: bool = False
    rate_lowered: bool = False
    retries_queued: int = 0
    retries_due: int = 0


@dataclass
class Record:
    """What happened, for the invariants and the benchmark."""

    stops: list[float] = field(default_factory=list)  # automation paused purchases
    resumes: list[float] = field(default_factory=list)
    pages: list[tuple[float, str, str]] = field(default_factory=list)  # (t, alert, cause)
    warnings: list[tuple[float, str]] = field(default_factory=list)
    transitions: list[tuple[float, State, State]] = field(default_factory=list)  # automation's
    refused: list[tuple[float, Any]] = field(default_factory=list)
    verifications: list[tuple[float, bool]] = field(default_factory=list)
    steps: int = 0


class World:
    def __init__(
        self,
        params: Params,
        faults: list[Fault],
        seed: int = 0,
        *,
        core_factory: Callable[[Params], Core] = Core,
        invariants: Invariants | None = None,
        first_rounds: list[float] | None = None,
    ) -> None:
        self.p = params
        self.faults = sorted(faults, key=lambda f: f.start)
        # The faults active between consecutive start/end times, looked up by bisection.
        self._bounds = sorted({0.0, *(f.start for f in faults), *(f.end for f in faults)})
        self._segments = [
            {f.kind: f for f in self.faults if f.start <= b < f.end and f.start < f.end}
            for b in self._bounds
        ]
        self.rng = random.Random(seed)
        self.core = core_factory(params)
        self.incident: Incident = self.core.initial()
        self.decision: decisions.Decision | None = None
        self.controls = Controls()
        self.record = Record()
        self.now = 0.0
        self.replicas = [Replica(i) for i in range(params.replicas)]
        self.observations: dict[str, Observation] = {}
        self._live: list[Observation] = []
        self._live_at = -1.0
        self._platform_keep = 12 + int((params.platform_timeout + 4) * params.purchase_rate)
        self.platform_calls: deque[tuple[float, str | None]] = deque(maxlen=self._platform_keep)
        self._platform_next = 0.0
        self._auth_errors: deque[float] = deque()
        self.alerts = {name: Alert(name) for name in ALERTS}
        self.invariants = invariants if invariants is not None else Invariants()
        self._queue: list[tuple[float, int, str, tuple[Any, ...]]] = []
        self._seq = 0
        self.verdict: Verdict | None = None  # the checker's reading of the latest step
        starts = first_rounds or [self.rng.uniform(0, params.probe_interval) for _ in self.replicas]
        for replica, start in zip(self.replicas, starts, strict=True):
            self._schedule_round(replica, start)
            self._start_watch(replica, self.rng.uniform(0, params.watch_interval))
        for fault in self.faults:
            if fault.kind is Kind.RESTART:
                self._at(fault.start, "restart", fault.replica)
            elif fault.kind is Kind.HOLD:
                self._at(fault.start, "hold", True)
                self._at(fault.end, "hold", False)

    # -- the clock --

    def _at(self, t: float, kind: str, *payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (t, self._seq, kind, payload))

    def run(self, until: float) -> World:
        while self._queue and self._queue[0][0] <= until:
            t, _, kind, payload = heapq.heappop(self._queue)
            self.now = t
            self._platform_until(t)
            getattr(self, f"_on_{kind}")(*payload)
        self.now = until
        self._platform_until(until)
        self.invariants.finish(self)
        return self

    # -- the exchange, as each call sees it --

    def at_time(self, t: float) -> dict[Kind, Fault]:
        """The faults active at `t` (one per kind: overlapping faults of a kind act as one)."""
        return self._segments[bisect.bisect_right(self._bounds, t) - 1] if t >= 0 else {}

    def active(self, kind: Kind, t: float) -> Fault | None:
        return self.at_time(t).get(kind)

    def overlapping(self, kinds: frozenset[Kind], start: float, end: float) -> bool:
        return any(f.kind in kinds and f.start <= end and f.end > start for f in self.faults)

    def _call(self, slot: int, endpoint: str, t: float) -> tuple[Outcome, float, Any]:
        """One probe call at `t`: its outcome, latency and value (the status for SystemStatus)."""
        now = self.at_time(t)
        if not now:
            return Outcome.SUCCESS, _FAST, "online" if endpoint == "SystemStatus" else None
        isolated = now.get(Kind.ISOLATED)
        if isolated is not None and isolated.replica == slot:
            return Outcome.NETWORK_ERROR, _FAST, None
        if Kind.HANG in now:
            return Outcome.TIMEOUT, self.p.timeout, None
        if Kind.OUTAGE in now:
            return _OUTAGE, _FAST, None
        sporadic = now.get(Kind.SPORADIC_HANG)
        if sporadic is not None and self.rng.random() < sporadic.share:
            return Outcome.TIMEOUT, self.p.timeout, None
        rate = now.get(Kind.RATE_LIMIT)
        if rate is not None and self.rng.random() < rate.share:
            return _RATE, _FAST, None
        status = "online"
        for kind, value in _STATUS.items():
            if kind in now:
                status = value
        if endpoint == "SystemStatus":
            return Outcome.SUCCESS, _FAST, status
        if status == "maintenance" and endpoint in ("Ticker", "Depth"):
            return _OUTAGE, _FAST, None
        if endpoint == "Balance":
            if Kind.AUTH in now:
                return _AUTH, _FAST, None
            if Kind.NONCE in now:
                return classify_error("EAPI:Invalid nonce"), _FAST, None
        if endpoint == "Depth" and Kind.VERIFY_FAILS in now:
            return Outcome.SUCCESS, _FAST, "crossed"
        return Outcome.SUCCESS, _FAST, None

    def probe_round(self, slot: int, t: float) -> tuple[RoundResult, float]:
        """probe.ExchangeProbe._round on the simulated exchange: the result and when it ends."""
        done: list[CallResult] = []
        for endpoint in ENDPOINTS[: self.p.round_calls]:
            if done:
                t += self.p.call_spacing
            outcome, latency, value = self._call(slot, endpoint, t)
            t += latency
            done.append(CallResult(endpoint, outcome, value))
            if outcome in AUTH_OUTCOMES:
                self._auth_errors.append(t)
            if outcome in ABORTING:
                break
        failures = [c for c in done if c.outcome is not Outcome.SUCCESS]
        status = done[0].value if done[0].outcome is Outcome.SUCCESS else None
        outcome = failures[0].outcome.value if failures else Outcome.SUCCESS.value
        return RoundResult(not failures, outcome, tuple(done), status), t

    def recovery_check(self, slot: int, t: float) -> tuple[RecoveryResult, float]:
        """probe.recovery_check: status online, price, balance (keys configured), order book;
        it stops at the first failure."""
        steps = ("SystemStatus", "Ticker", "Balance", "Depth")
        checks: list[Check] = []
        for endpoint in steps if self.p.round_calls > 4 else steps[:2] + steps[3:]:
            if checks:
                t += self.p.call_spacing
            outcome, latency, value = self._call(slot, endpoint, t)
            t += latency
            ok = outcome is Outcome.SUCCESS and (
                value == "online" if endpoint == "SystemStatus" else value != "crossed"
            )
            checks.append(Check(endpoint, ok, f"{outcome} {value}"))
            if not ok:
                break
        return RecoveryResult(all(c.ok for c in checks), tuple(checks)), t

    # -- the platform: buys while not paused, logs each call when it returns --

    def _platform_reason(self, t: float) -> tuple[str | None, float]:
        now = self.at_time(t)
        if not now:
            return None, _FAST
        if Kind.HANG in now:
            return PLATFORM_REASON[Kind.HANG], self.p.platform_timeout
        for kind in (Kind.OUTAGE, Kind.MAINTENANCE, Kind.CANCEL_ONLY, Kind.POST_ONLY):
            if kind in now:
                return PLATFORM_REASON[kind], _FAST
        sporadic = now.get(Kind.SPORADIC_HANG)
        if sporadic is not None and self.rng.random() < sporadic.share:
            return PLATFORM_REASON[Kind.SPORADIC_HANG], self.p.platform_timeout
        rate = now.get(Kind.RATE_LIMIT)
        if rate is not None and self.rng.random() < rate.share:
            return PLATFORM_REASON[Kind.RATE_LIMIT], _FAST
        return None, _FAST

    def _platform_until(self, t: float) -> None:
        """The purchases made up to `t` (the pause only changes at steps, so this is exact).
        Only the latest calls can still be evidence, so a long stretch skips to them."""
        if self.p.purchase_rate <= 0:
            return  # no purchases: no platform evidence at all
        every = 1.0 / (self.p.purchase_rate * (0.5 if self.controls.rate_lowered else 1.0))
        start = self._platform_next
        if start > t:
            return
        if self.controls.paused:
            self._platform_next = t + every
            return
        keep = self._platform_keep * every
        if start < t - keep:
            start += ((t - keep - start) // every) * every
        calls, bounds, segments = self.platform_calls, self._bounds, self._segments
        while start <= t:
            # A stretch without faults: every call answered at once.
            i = bisect.bisect_right(bounds, start) - 1
            if not segments[i]:
                end = min(t, bounds[i + 1] if i + 1 < len(bounds) else t)
                while start <= end:
                    calls.append((start + _FAST, None))
                    start += every
                continue
            reason, latency = self._platform_reason(start)
            calls.append((start + latency, reason))
            start += every
        self._platform_next = start

    def platform(self) -> PlatformCalls:
        """evidence.platform_calls: logged in the window, newest first, at most 10."""
        oldest, now = self.now - self.p.platform_window, self.now
        calls = [c for c in self.platform_calls if oldest < c[0] <= now]
        calls.sort(key=_logged_at, reverse=True)
        del calls[10:]
        return PlatformCalls(tuple(c[1] for c in calls), tuple(at(c[0]) for c in calls))

    def _platform_watch(self) -> tuple[bool, bool]:
        """The platform watch's reading (platform_watch.PlatformReading), without building the
        evidence: whether the latest `platform_min_calls` calls fail for want of an answer, and
        whether the newest does."""
        oldest, now, k = self.now - self.p.platform_window, self.now, self.p.platform_min_calls
        calls = [c for c in self.platform_calls if oldest < c[0] <= now]
        if not calls:
            return False, False
        calls.sort(key=_logged_at, reverse=True)
        unanswered = calls[0][1] in UNAVAILABLE_REASONS
        if len(calls) < k or not unanswered:
            return False, unanswered
        return all(reason in UNAVAILABLE_REASONS for _, reason in calls[:k]), unanswered

    # -- evidence --

    def _record_round(self, replica: Replica, result: RoundResult) -> None:
        """evidence.RECORD_SQL's upsert, the production's own pure twin."""
        name = replica.name
        self._live_at = -1.0
        self.observations[name] = observe_round(
            self.observations.get(name), result, name, at(self.now)
        )

    def live(self) -> list[Observation]:
        """evidence.LIVE_SQL: the replicas whose last round is recent enough to vote."""
        if self._live_at != self.now:
            oldest = at(self.now - self.p.replica_stale_after)
            self._live = [o for o in self.observations.values() if o.observed_at > oldest]
            self._live_at = self.now
        return self._live

    def judge(self, platform: PlatformCalls, replica: str) -> Verdict:
        """The checker's own reading of the evidence: the production's judge, and the executor's
        no-voter fallback (an outage alert still firing, the platform's calls failing)."""
        verdict = judge(
            self.live(), platform, failure_threshold=self.p.failure_threshold,
            platform_min_calls=self.p.platform_min_calls, replica=replica,
        )  # fmt: skip
        if verdict.voters == 0:
            healthy = not self.outage_alert_firing and not platform.failing(
                self.p.platform_min_calls
            )
            verdict = replace(verdict, healthy=healthy)
        return verdict

    @property
    def outage_alert_firing(self) -> bool:
        return any(a.firing for n, a in self.alerts.items() if ALERTS[n][1])

    @property
    def held_breaker(self) -> bool:
        return self.controls.breaker_hold and self.controls.breaker is State.OPEN

    # -- steps --

    def _decide(self, replica: Replica | None, event: decisions.Event) -> decisions.Decision:
        name = replica.name if replica else "alertmanager"
        platform = self.platform()
        self.verdict = self.judge(platform, name) if self.invariants.independent else None
        c = self.controls
        decision = self.core.decide(
            self.incident, at(self.now), event, tuple(self.live()), platform, c.breaker,
            self.held_breaker, outage_alert_firing=self.outage_alert_firing, replica=name,
            paused=c.paused,
        )  # fmt: skip
        self.decision = decision
        self.incident = decision.incident
        if self.verdict is None:
            self.verdict = decision.verdict
        for effect in decision.effects:
            self.apply(effect)
        if replica is not None:
            self._alerts()
        self.record.steps += 1
        self.invariants.after_step(self, event, decision)
        return decision

    def _schedule_round(self, replica: Replica, t: float) -> None:
        replica.scheduled += 1
        self._at(t, "round", replica.slot, replica.generation, replica.scheduled)

    def _on_round(self, slot: int, generation: int, scheduled: int) -> None:
        replica = self.replicas[slot]
        if replica.generation != generation or replica.scheduled != scheduled:
            return  # the process that scheduled it was restarted, or woken up since
        replica.busy, replica.idle = True, False
        result, end = self.probe_round(slot, self.now)
        self._at(end, "round_end", slot, generation, result)

    def _on_round_end(self, slot: int, generation: int, result: RoundResult) -> None:
        replica = self.replicas[slot]
        if replica.generation != generation:
            return
        self._record_round(replica, result)
        decision = self._decide(replica, decisions.Tick("probe_round"))
        if decision.lease is not None:
            check, end = self.recovery_check(slot, self.now)
            self._at(end, "verified", slot, generation, decision.lease.token, check)
            return
        replica.busy, replica.idle = False, result.available
        self._schedule_round(replica, self.now + self._next_delay(result))

    def _next_delay(self, result: RoundResult) -> float:
        """probing.IncidentLoop._next_delay."""
        if not result.available:
            return self.p.doubt_interval
        if self.incident.phase != NORMAL or self.incident.rate_lowered_at is not None:
            return self.p.incident_interval
        jitter = self.p.probe_jitter
        return self.p.probe_interval * self.rng.uniform(1 - jitter, 1 + jitter)

    def _on_verified(self, slot: int, generation: int, token: Any, result: RecoveryResult) -> None:
        replica = self.replicas[slot]
        if replica.generation != generation:
            return  # died while verifying: the lease runs out
        self.record.verifications.append((self.now, result.ok))
        self._decide(replica, decisions.VerificationDone(token, result))
        replica.busy, replica.idle = False, True
        self._schedule_round(replica, self.now + self.p.incident_interval)

    def _on_restart(self, slot: int) -> None:
        replica = self.replicas[slot]
        replica.generation += 1  # a new name; the old row goes stale
        replica.busy = replica.idle = replica.watching_failing = False
        self._schedule_round(replica, self.now + self.p.restart_delay)
        self._start_watch(replica, self.now + self.p.restart_delay)

    def _on_hold(self, on: bool) -> None:
        """An admin: pause with a hold and force the breaker open; later resume and reset."""
        c = self.controls
        if on:
            c.paused = c.pause_hold = True
            c.breaker, c.breaker_hold = State.OPEN, True
        else:
            c.paused = c.pause_hold = False
            c.breaker, c.breaker_hold = State.CLOSED, False
        self.invariants.on_admin(self, on)

    def _start_watch(self, replica: Replica, t: float) -> None:
        # No purchases: the platform's calls never fail (an infinite interval: no watch at all).
        if self.p.purchase_rate > 0 and self.p.watch_interval < float("inf"):
            self._at(t, "watch", replica.slot, replica.generation)

    def _on_watch(self, slot: int, generation: int) -> None:
        """probing.IncidentLoop.watch: once the platform's latest calls start failing, a replica
        waiting for its next round (its last round answered) runs it at once."""
        replica = self.replicas[slot]
        if replica.generation != generation:
            return  # its process was restarted: the new one has its own watch
        failing, unanswered = self._platform_watch()
        if failing and not replica.watching_failing and replica.idle:
            self._schedule_round(replica, self.now)
        replica.watching_failing = failing
        self._at(self._next_watch(unanswered), "watch", slot, generation)

    def _next_watch(self, unanswered: bool) -> float:
        """The watch's next reading that could differ: every `watch_interval` once the newest
        call went unanswered, every `watch_quiet_interval` before; across a stretch in which no
        platform call can fail it reads "answered" each time, so it skips ahead to the first
        reading after the next fault starts (same phase; a speed-up, nothing more)."""
        if unanswered:
            return self.now + self.p.watch_interval
        interval, now = self.p.watch_quiet_interval, self.now
        after = now + interval
        # A call fails only during a fault, and is logged at most platform_timeout later; the
        # watch reads the calls logged within platform_window.
        linger = self.p.platform_window + self.p.platform_timeout
        if any(f.kind in PLATFORM_REASON and f.start <= now < f.end + linger for f in self.faults):
            return after
        starts = [f.start for f in self.faults if f.kind in PLATFORM_REASON and f.start > now]
        if not starts or min(starts) <= after:
            return after if starts else float("inf")
        return after + math.ceil((min(starts) - after) / interval) * interval

    def _on_alert_check(self) -> None:
        self._alerts()

    # -- Alertmanager: the paging rules' evidence, `for` and keep_firing_for --

    def _conditions(self) -> dict[str, bool]:
        live = self.live()
        statuses = {o.system_status for o in live if o.system_status is not None}
        status = statuses.pop() if len(statuses) == 1 else None
        while self._auth_errors and self._auth_errors[0] < self.now - 300:
            self._auth_errors.popleft()
        down = bool(live) and all(
            o.consecutive_failures >= 2 and not o.available for o in live
        )  # fmt: skip
        return {
            "ExchangeApiDown": down and status != "maintenance",
            "ExchangeMaintenance": status == "maintenance",
            "ExchangeTradingRestricted": status in ("cancel_only", "post_only"),
            "ExchangeApiAuthFailures": len(self._auth_errors) > 2,
        }

    def _alerts(self) -> None:
        for name, holds in self._conditions().items():
            alert = self.alerts[name]
            cause, outage = ALERTS[name]
            delay = {"ExchangeApiDown": self.p.alert_delay,
                     "ExchangeApiAuthFailures": self.p.auth_alert_delay}.get(
                name, self.p.status_alert_delay)  # fmt: skip
            if alert.firing:
                if holds:
                    alert.clear_since = None
                elif alert.clear_since is None:
                    alert.clear_since = self.now
                    self._at(self.now + self.p.alert_keep_firing, "alert_check")
                elif self.now >= alert.clear_since + self.p.alert_keep_firing:
                    alert.firing, alert.clear_since = False, None
            elif not holds:
                alert.pending_since = None
            elif alert.pending_since is None:
                alert.pending_since = self.now
                self._at(self.now + delay, "alert_check")
            elif self.now >= alert.pending_since + delay:
                alert.firing, alert.pending_since = True, None
                self.record.pages.append((self.now, name, cause))
                self.invariants.on_page(self, name, cause)
                if outage:
                    self._decide(
                        None,
                        decisions.OutageAlert(
                            name, open_breaker=name != ("ExchangeTradingRestricted")
                        ),
                    )

    # -- the executor --

    def apply(self, effect: fx.Effect) -> None:
        """What the production executor does with each effect, refusals included: automation
        never moves a held breaker (BreakerStore) and never lifts an admin's pause (pause.py)."""
        c, r, now = self.controls, self.record, self.now
        applied = True
        if isinstance(effect, fx.SetBreaker):
            if self.held_breaker:
                applied = False
            elif c.breaker is not effect.state:
                r.transitions.append((now, c.breaker, effect.state))
                c.breaker = effect.state
        elif isinstance(effect, fx.Pause):
            if not c.paused:
                r.stops.append(now)
            c.paused = True
        elif isinstance(effect, fx.Resume):
            if c.pause_hold:
                applied = False
            elif c.paused:
                c.paused = False
                r.resumes.append(now)
        elif isinstance(effect, fx.QueueRetries):
            c.retries_queued += 1
        elif isinstance(effect, fx.MakeRetriesDue):
            c.retries_due += 1
        elif isinstance(effect, fx.SetApiRate):
            c.rate_lowered = effect.multiplier < 1
        elif isinstance(effect, fx.Log) and effect.level >= fx.WARNING:
            r.warnings.append((now, effect.message))
        if not applied:
            r.refused.append((now, effect))
        self.invariants.on_effect(self, effect, applied)


def simulate(
    params: Params, faults: list[Fault], seed: int, horizon: float, **options: Any
) -> World:
    return World(params, faults, seed, **options).run(horizon)
