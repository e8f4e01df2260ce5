"""The incident model's decision as a pure function, on a simulated clock: no database, no sleep.

Each test drives `decide` through a small world: replicas whose rounds become observations
(`observe_round`, the pure twin of the SQL upsert), a breaker that follows the SetBreaker effects,
and a clock moved by hand. The DB-backed tests (test_incident.py) show the executor applies the
same decisions.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from exporter.controls.breaker import State
from exporter.operator import render
from exporter.runbook.evidence import Observation, PlatformCalls, duration_words, observe_round
from exporter.runbook.incident import DOWN, NORMAL, PROBATION, Incident
from exporter.runbook.incident.decision import (
    Decision,
    Event,
    Evidence,
    OutageAlert,
    RateAlert,
    Tick,
    VerificationDone,
    decide,
)
from exporter.runbook.incident.effects import (
    Audit,
    ClosePeriod,
    Effect,
    MakeRetriesDue,
    OpenPeriod,
    Pause,
    QueueRetries,
    Resume,
    SetApiRate,
    SetBreaker,
    StartVerification,
)
from exporter.runbook.incident.state import Breaker, Policy
from exporter.signals.exchange import Check, RecoveryResult, RoundResult, round_of

T0 = datetime(2026, 12, 7, 3, 0, tzinfo=UTC)
POLICY = Policy(probation=90, backoff_max=600, rate_restore_after=20, lease=90)
HEALTHY = round_of()
REFUSED = round_of("network_error", status=None)
HANGING = round_of("timeout", status=None)
RATE_LIMITED = round_of("rate_limited")
MAINTENANCE = round_of("service_unavailable", status="maintenance")
CANCEL_ONLY = round_of(status="cancel_only")
AUTH = round_of("auth_error")
PASSED = RecoveryResult(True, (Check("price", True, "last trade 100000"),))
CROSSED = RecoveryResult(False, (Check("order_book", False, "best bid 101 >= best ask 100"),))


@dataclass
class World:
    """One exchange seen by replicas a and b, on a clock moved by hand."""

    now: datetime = T0
    incident: Incident = field(default_factory=lambda: Incident("kraken"))
    breaker: Breaker = field(default_factory=Breaker)
    live: dict[str, Observation] = field(default_factory=dict)
    platform: PlatformCalls = field(default_factory=lambda: PlatformCalls(()))
    firing: bool = False
    paused: bool | None = None  # None: the evidence does not say (the core assumes its own)
    tokens: int = 0
    last: Decision | None = None

    def tick(self, seconds: float = 0) -> None:
        self.now += timedelta(seconds=seconds)

    def sees(self, replica: str, result: RoundResult, times: int = 1) -> Decision:
        for _ in range(times):
            self.live[replica] = observe_round(self.live.get(replica), result, replica, self.now)
            decision = self.decide(Tick("probe_round"), replica)
        return decision

    def both(self, result: RoundResult, times: int = 1) -> Decision:
        for _ in range(times):
            self.sees("a", result)
            decision = self.sees("b", result)
        return decision

    def decide(self, event: Event | None = None, replica: str = "a") -> Decision:
        self.tokens += 1
        evidence = Evidence(
            event or Tick(), tuple(self.live.values()), self.platform, self.breaker, self.firing,
            replica, uuid.UUID(int=self.tokens), self.paused,
        )  # fmt: skip
        decision = decide(self.incident, evidence, self.now, POLICY)
        assert decide(self.incident, evidence, self.now, POLICY) == decision, "pure"
        self.incident = decision.incident
        for effect in decision.effects:
            if isinstance(effect, SetBreaker):
                assert not self.breaker.held, "a held breaker is never moved"
                self.breaker = replace(self.breaker, state=effect.state)
        self.last = decision
        return decision

    def verify(self, result: RecoveryResult = PASSED) -> Decision:
        decision = self.last
        assert decision is not None and decision.lease is not None
        return self.decide(VerificationDone(decision.lease.token, result))

    def open(self) -> None:
        self.both(REFUSED, 2)
        assert self.incident.phase == DOWN

    def recover(self, result: RecoveryResult = PASSED) -> Decision:
        """Healthy for the recovery timeout, then the verification's result."""
        self.both(HEALTHY)
        self.tick(31)
        assert self.sees("a", HEALTHY).lease is not None
        return self.verify(result)


def kinds(decision: Decision) -> list[type]:
    return [type(e) for e in decision.effects if type(e).__name__ != "BreakerEvidence"]


def of(decision: Decision, kind: type[Effect]) -> list:
    return [e for e in decision.effects if isinstance(e, kind)]


# ---- stopping ------------------------------------------------------------------------------------


def test_every_replica_refused_stops_purchases_with_the_cause_in_words() -> None:
    world = World()
    world.both(REFUSED)
    assert world.incident.phase == NORMAL, "one failed round is not enough"
    world.tick(18)
    world.sees("a", REFUSED)
    decision = world.sees("b", REFUSED)
    assert kinds(decision) == [SetBreaker, Pause, QueueRetries, OpenPeriod, Audit, type(
        decision.effects[-1])]  # fmt: skip
    assert (world.incident.phase, world.incident.cause, world.breaker.state) == (
        DOWN, "unavailable", State.OPEN,
    )  # fmt: skip
    cause = of(decision, Audit)[0].cause
    assert cause.startswith("kraken refuses connections on 2 of 2 replicas for 18 s; evidence: ")
    assert of(decision, OpenPeriod)[0].started_at == T0, "the period starts at the first failure"


def test_hanging_reads_as_not_answering_in_time() -> None:
    world = World()
    decision = world.both(HANGING, 2)
    assert of(decision, Audit)[0].cause.startswith(
        "kraken does not answer in time on 2 of 2 replicas for 0 s"
    )


def test_one_replica_alone_stops_nothing_and_is_isolated() -> None:
    world = World()
    world.sees("b", HEALTHY)
    decision = world.sees("a", REFUSED, 5)
    assert world.incident.phase == NORMAL
    assert decision.verdict.isolated
    assert kinds(decision) == []


def test_maintenance_stops_purchases_as_maintenance() -> None:
    world = World()
    world.sees("b", HEALTHY)
    world.sees("a", MAINTENANCE)
    assert world.incident.phase == NORMAL, "every replica must read it"
    decision = world.sees("b", MAINTENANCE)
    assert (world.incident.cause, world.breaker.state) == ("maintenance", State.OPEN)
    assert of(decision, Audit)[0].cause.startswith(
        "kraken is in maintenance (every replica reads status maintenance)"
    )
    assert of(decision, Pause)[0].reason == "kraken is in maintenance"


def test_trading_restricted_pauses_without_opening_the_breaker() -> None:
    world = World()
    decision = world.sees("a", CANCEL_ONLY)
    assert world.incident.cause == "trading_restricted"
    assert of(decision, SetBreaker) == [] and world.breaker.state is State.CLOSED
    assert len(of(decision, Pause)) == 1


def test_our_credentials_refused_is_not_an_outage() -> None:
    world = World()
    decision = world.both(AUTH, 5)
    assert world.incident.phase == NORMAL and kinds(decision) == []


def test_a_stale_replica_no_longer_votes() -> None:
    world = World()
    world.sees("b", HEALTHY)
    world.tick(61)  # b's last round is older than replica_stale_after
    world.sees("a", REFUSED, 2)
    assert (world.incident.phase, world.last and world.last.verdict.voters) == (DOWN, 1)


def test_the_platforms_failing_calls_stop_purchases_when_nothing_probes() -> None:
    world = World(platform=PlatformCalls(("exchange_unavailable",) * 3))
    decision = world.decide()
    assert world.incident.phase == DOWN
    assert of(decision, Audit)[0].cause.startswith(
        "kraken fails the platform's last 3 calls (exchange_unavailable, exchange_unavailable, "
        "exchange_unavailable); no replica probes it"
    )


def platform_failing(world: World, *reasons: str | None) -> PlatformCalls:
    """The platform's latest calls, newest first, logged a second apart up to now."""
    at = tuple(world.now - timedelta(seconds=i) for i in range(len(reasons)))
    return PlatformCalls(reasons, at)


def test_the_platforms_failing_calls_corroborate_one_unanswered_round_per_replica() -> None:
    world = World()
    world.both(HEALTHY)
    world.tick(10)
    world.platform = platform_failing(world, *("exchange_unavailable",) * 3)
    world.sees("a", REFUSED)
    assert world.incident.phase == NORMAL, "b still answered"
    decision = world.sees("b", REFUSED)
    assert world.incident.phase == DOWN
    assert "2 of 2 live replicas saw 1+ unanswered rounds, and the platform's latest 3 calls " \
        "failed" in of(decision, Audit)[0].cause  # fmt: skip


def test_one_unanswered_round_without_the_platform_failing_stops_nothing() -> None:
    world = World()
    world.platform = platform_failing(world, "exchange_unavailable", None, "exchange_unavailable")
    world.both(HANGING)
    assert world.incident.phase == NORMAL


def test_a_platform_call_answered_since_every_replica_failed_vetoes_down() -> None:
    """One replica cut off for long, the other seeing sporadic hangs: the platform, whose calls
    are mostly answered, says the exchange is up."""
    world = World()
    world.sees("b", HEALTHY)
    world.sees("a", REFUSED, 5)
    world.tick(50)
    world.sees("a", REFUSED)
    world.sees("b", HANGING)
    world.tick(2)
    world.platform = platform_failing(world, "network_timeout", None, None)
    world.sees("b", HANGING)
    assert world.incident.phase == NORMAL
    world.platform = PlatformCalls(("network_timeout",), (world.now,))
    world.sees("b", HANGING)
    assert world.incident.phase == DOWN, "no call answered since both fail"


def test_a_cut_off_replica_has_no_say_on_the_status() -> None:
    """b read "online" before its network went; its row keeps it, but its last round got no
    answer: only a reads the status, and it reads maintenance."""
    world = World()
    world.both(HEALTHY)
    world.tick(10)
    world.sees("b", REFUSED)
    decision = world.sees("a", MAINTENANCE)
    assert world.live["b"].system_status == "online"
    assert (world.incident.cause, decision.verdict.status) == ("maintenance", "maintenance")
    assert of(decision, Audit)[0].cause.startswith(
        "kraken is in maintenance (1 of 2 replicas read status maintenance)"
    )


def test_purchases_an_admin_resumed_during_an_incident_stop_again_while_it_is_down() -> None:
    world = World()
    world.open()
    relapses, cause = world.incident.relapses, world.incident.cause
    world.paused = True
    assert of(world.sees("a", REFUSED), Pause) == []
    # An admin resumes purchases and closes the breaker; the exchange is still down.
    world.paused, world.breaker = False, replace(world.breaker, state=State.CLOSED)
    decision = world.sees("a", REFUSED)
    assert kinds(decision) == [SetBreaker, Pause, QueueRetries, type(decision.effects[-1])]
    assert of(decision, SetBreaker)[0].state is State.OPEN
    assert of(decision, Pause)[0].cause.startswith("kraken refuses connections on 2 of 2 replicas")
    incident = world.incident
    assert (incident.phase, incident.relapses, incident.cause) == (DOWN, relapses, cause)


def test_purchases_an_admin_resumed_flow_while_the_exchange_answers() -> None:
    world = World()
    world.open()
    world.paused, world.breaker = False, replace(world.breaker, state=State.CLOSED)
    assert of(world.both(HEALTHY), Pause) == []
    assert world.incident.phase == DOWN, "the incident goes on to its verification"


def test_an_outage_alert_finds_purchases_an_admin_resumed_and_stops_them() -> None:
    world = World()
    world.open()
    world.paused = False
    decision = world.decide(OutageAlert("ExchangeApiDown", "kraken is down", "fp"))
    assert len(of(decision, Pause)) == 1


def test_an_incident_that_opens_pauses_once() -> None:
    world = World(paused=False)
    decision = world.both(REFUSED, 2)
    assert world.incident.phase == DOWN and len(of(decision, Pause)) == 1


# ---- alerts -------------------------------------------------------------------------------------


def test_an_outage_alert_the_probes_contradict_is_refused_with_the_reason() -> None:
    world = World()
    world.both(HEALTHY)
    decision = world.decide(OutageAlert("ExchangeApiDown", "kraken is down", "fp"))
    assert decision.refused is not None and "contradict" in decision.refused
    assert "kraken answers on 2 of 2 replicas with status online" in decision.refused
    assert decision.effects == () and world.incident.phase == NORMAL


def test_an_outage_alert_opens_when_nothing_probes() -> None:
    world = World(firing=True)
    decision = world.decide(OutageAlert("ExchangeApiDown", "kraken is down", "fp-1"))
    assert (world.incident.cause, world.breaker.state) == ("alert:ExchangeApiDown", State.OPEN)
    assert {e.fingerprint for e in of(decision, Pause) + of(decision, SetBreaker)} == {"fp-1"}
    assert of(decision, Audit)[0].cause.startswith(
        "kraken: ExchangeApiDown firing (kraken is down); no replica probes it; evidence: "
    )
    assert world.decide(OutageAlert("ExchangeApiDown")).effects == (), "open already"


def test_an_alert_without_open_breaker_only_pauses() -> None:
    world = World(firing=True)
    decision = world.decide(OutageAlert("ExchangeTradingRestricted", open_breaker=False))
    assert of(decision, SetBreaker) == [] and len(of(decision, Pause)) == 1


# ---- recovery ------------------------------------------------------------------------------------


def test_recovery_waits_for_the_recovery_timeout_then_verifies_under_a_lease() -> None:
    world = World()
    world.open()
    world.both(HEALTHY)
    world.tick(29)
    assert world.both(HEALTHY).lease is None, "not before 30 s of health"
    world.tick(2)
    decision = world.sees("a", HEALTHY)
    assert decision.lease is not None and decision.lease.token == uuid.UUID(int=world.tokens)
    assert kinds(decision) == [SetBreaker, StartVerification]
    assert world.breaker.state is State.HALF_OPEN
    assert world.incident.lease_until == world.now + timedelta(seconds=POLICY.lease)
    assert world.sees("b", HEALTHY).lease is None, "one verification at a time"


def test_a_passed_verification_closes_then_probation_then_resume() -> None:
    world = World()
    world.open()
    healthy_from = world.now
    decision = world.recover()
    assert kinds(decision) == [type(decision.effects[0]), Audit, SetBreaker]
    assert (world.incident.phase, world.breaker.state) == (PROBATION, State.CLOSED)
    world.tick(60)
    assert world.both(HEALTHY).effects[1:] == ()
    world.tick(31)
    decision = world.sees("a", HEALTHY)
    assert kinds(decision) == [Resume, MakeRetriesDue, ClosePeriod, Audit, type(
        decision.effects[-1])]  # fmt: skip
    assert world.incident == replace(
        Incident("kraken", last_closed_at=world.incident.last_closed_at)
    )
    assert of(decision, Resume)[0].cause.startswith("kraken is healthy again")
    # When the evidence cleared, for the post-incident review's time to resume.
    [closed] = of(decision, Audit)
    assert closed.detail["healthy_since"] == healthy_from


def test_a_doubtful_round_in_probation_starts_it_again() -> None:
    world = World()
    world.open()
    world.recover()
    world.tick(80)
    world.sees("a", HANGING)  # one failed round: doubtful, not down
    world.sees("a", HEALTHY)
    world.tick(20)
    assert world.sees("a", HEALTHY).effects[1:] == (), "probation restarted 20 s ago"
    assert world.incident.phase == PROBATION
    world.tick(71)
    world.sees("a", HEALTHY)
    assert world.incident.phase == NORMAL


def test_a_failed_verification_stays_down_and_backs_off() -> None:
    world = World()
    world.open()
    decision = world.recover(CROSSED)
    assert world.breaker.state is State.OPEN and world.incident.phase == DOWN
    assert world.incident.next_attempt_at == world.now + timedelta(seconds=60)
    assert "best bid 101 >= best ask 100" in of(decision, Audit)[0].cause
    world.tick(59)
    assert world.both(HEALTHY).lease is None, "backing off"
    world.tick(1)
    assert world.sees("a", HEALTHY).lease is not None


def test_a_relapse_in_probation_reopens_without_a_second_pause_and_backs_off() -> None:
    world = World()
    world.open()
    world.recover()
    decision = world.both(REFUSED, 2)
    assert kinds(decision) == [SetBreaker, Audit, type(decision.effects[-1])]
    assert of(decision, Pause) == []
    assert (world.incident.phase, world.incident.relapses) == (DOWN, 1)
    assert world.incident.next_attempt_at == world.now + timedelta(seconds=60)
    assert of(decision, Audit)[0].cause.startswith(
        "kraken relapsed during probation: it refuses connections on 2 of 2 replicas"
    )
    world.both(HEALTHY)
    world.tick(45)
    assert world.both(HEALTHY).lease is None, "healthy long enough, but the backoff holds"
    world.tick(16)
    assert world.sees("a", HEALTHY).lease is not None


def test_reopening_soon_after_a_close_counts_as_a_relapse() -> None:
    world = World()
    world.open()
    world.recover()
    world.tick(91)
    world.both(HEALTHY)
    assert world.incident.phase == NORMAL
    world.tick(100)  # within the monitoring window of the close
    world.both(REFUSED, 2)
    assert world.incident.relapses == 1
    assert world.incident.next_attempt_at is not None


def test_a_verification_that_lost_its_lease_is_dropped() -> None:
    world = World()
    world.open()
    world.both(HEALTHY)
    world.tick(31)
    lease = world.sees("a", HEALTHY).lease
    assert lease is not None
    before = world.incident
    decision = world.decide(VerificationDone(uuid.uuid4(), PASSED))
    assert not decision.applied and world.incident == before


# ---- precedence: admin hold > verification > automation ----------------------------------------


def test_an_admin_hold_means_no_verification_however_healthy() -> None:
    world = World()
    world.open()
    world.breaker = replace(world.breaker, held=True)
    world.both(HEALTHY)
    world.tick(3600)
    for _ in range(5):
        decision = world.both(HEALTHY)
        assert decision.lease is None and of(decision, SetBreaker) == []


def test_a_verification_that_passes_under_an_admin_hold_closes_nothing() -> None:
    world = World()
    world.open()
    world.both(HEALTHY)
    world.tick(31)
    assert world.sees("a", HEALTHY).lease is not None
    world.breaker = replace(world.breaker, state=State.OPEN, held=True)  # the admin steps in
    decision = world.verify(PASSED)
    assert of(decision, SetBreaker) == [] and world.incident.phase == DOWN


def test_a_verification_outranks_automation_while_it_runs() -> None:
    world = World()
    world.open()
    world.both(HEALTHY)
    world.tick(31)
    assert world.sees("a", HEALTHY).lease is not None
    world.tick(10)
    assert world.both(HEALTHY).effects[1:] == (), "nothing moves while the lease holds"
    assert world.breaker.state is State.HALF_OPEN


# ---- the API rate --------------------------------------------------------------------------------


def test_rate_limits_lower_the_rate_once_and_quiet_restores_it() -> None:
    world = World()
    decision = world.sees("a", RATE_LIMITED)
    lowered = of(decision, SetApiRate)
    assert [e.multiplier for e in lowered] == [0.5]
    assert lowered[0].cause.startswith("kraken rate limits the probe on 1 of 1 replicas")
    assert of(world.sees("a", RATE_LIMITED, 3), SetApiRate) == [], "lowered already"
    assert world.incident.phase == NORMAL, "rate limits never stop purchases"
    world.tick(19)
    assert of(world.sees("a", HEALTHY), SetApiRate) == []
    world.tick(1)
    restored = of(world.sees("a", HEALTHY), SetApiRate)
    assert [e.multiplier for e in restored] == [1.0]
    assert restored[0].cause == "no kraken call rate limited for 20 s"


def test_the_platforms_rate_limited_calls_lower_the_rate_in_words() -> None:
    world = World(
        platform=PlatformCalls(("rate_limited", None, "rate_limited", "rate_limited", None))
    )
    decision = world.sees("a", HEALTHY)
    assert of(decision, SetApiRate)[0].cause.startswith(
        "kraken rate limits 3 of the platform's last 5 calls; evidence: "
    )


def test_a_rate_alert_lowers_now_and_the_evidence_restores() -> None:
    world = World()
    decision = world.decide(RateAlert("ExchangeApiRateLimited", "kraken rate limits us", "fp"))
    assert [(e.multiplier, e.fingerprint) for e in of(decision, SetApiRate)] == [(0.5, "fp")]
    assert of(decision, SetApiRate)[0].cause.startswith("kraken rate limits our calls")
    assert world.decide(RateAlert("ExchangeApiRateLimited")).effects == ()
    world.tick(20)
    assert [e.multiplier for e in of(world.decide(), SetApiRate)] == [1.0]


# ---- words ---------------------------------------------------------------------------------------


def test_durations_read_as_a_person_would_say_them() -> None:
    assert [duration_words(s) for s in (0.4, 18, 119, 720, 7200, 12600)] == [
        "0 s", "18 s", "119 s", "12 min", "2.0 h", "3.5 h",
    ]  # fmt: skip


def test_the_operator_sees_the_cause_in_words_where_the_cli_cuts_it() -> None:
    world = World()
    world.both(REFUSED)
    world.tick(18)
    world.sees("a", REFUSED)
    cause = of(world.sees("b", REFUSED), Audit)[0].cause
    entry = {"id": 7, "at": world.now.isoformat(), "actor": "automation",
             "action": "incident_opened", "result": "success", "exchange": "kraken",
             "cause": cause}  # fmt: skip
    shown = render.actions([entry], world.now).splitlines()[1]
    assert shown.endswith("kraken refuses connections on 2 of 2 replicas for 18 s")


def test_the_module_keeps_its_name_beside_the_function_the_package_exports() -> None:
    import importlib

    import exporter.runbook.incident as incident

    module = importlib.import_module("exporter.runbook.incident.decision")
    assert incident.decide is module.decide and module.__name__.endswith(".decision")
