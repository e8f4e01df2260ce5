"""The incident core on a simulated clock, over generated fault sequences: outages of any length,
flapping, hangs, rate limits, maintenance, cancel_only / post_only, auth and nonce errors, one
replica's network, restarts, admin holds, failing verifications. The invariants of DESIGN.md's
"Incident decisions" are checked after every step (tests/simulator/invariants.py).

Pure: no database, no process, no sleeping; each sequence is a function of its seed, so a
failure names the seed and the timeline that reproduce it.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.signals.exchange import RecoveryResult
from exporter.signals.kraken import outcomes
from tests.simulator import Fault, Kind, Params, Violation, World, random_timeline, simulate
from tests.simulator.core import decisions
from tests.simulator.invariants import INVARIANTS, Invariants
from tests.simulator.world import GENERATED

pytestmark = pytest.mark.unit

SHIPPED = Params.shipped()
# The count the issue asks for; every one is a different seed and timeline.
SEQUENCES = 10_000
SHORT = 200.0  # seconds of simulated time per sequence of the big run
LONG = 3600.0


def run(faults: list[Fault], horizon: float, seed: int = 1, **options: Any) -> World:
    return simulate(SHIPPED, faults, seed, horizon, **options)


# About 70 s of CPU in all, in small chunks so that xdist spreads them over its workers and no
# one test holds up the end of the run: every chunk holds different seeds, together they are
# the 10,000 sequences.
CHUNKS = 40
FAST_CHUNKS = CHUNKS // 8


@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    "chunk",
    # `make test-fast` runs an eighth of the chunks (1,250 sequences); `make test` all 10,000.
    [*range(FAST_CHUNKS),
     *(pytest.param(chunk, marks=pytest.mark.thorough) for chunk in range(FAST_CHUNKS, CHUNKS))],
)  # fmt: skip
def test_ten_thousand_generated_sequences_keep_every_invariant(chunk: int) -> None:
    steps = stops = resumes = 0
    seeds = range(chunk, SEQUENCES, CHUNKS)
    for seed in seeds:
        faults = random_timeline(random.Random(seed), SHORT, SHIPPED.replicas, GENERATED)
        world = simulate(SHIPPED, faults, seed, SHORT)
        steps += world.record.steps
        stops += len(world.record.stops)
        resumes += len(world.record.resumes)
    # The generator must keep exercising the loop, or this test proves nothing.
    assert steps > 15 * len(seeds)
    assert stops > len(seeds) // 4
    assert resumes > len(seeds) // 500  # a resume takes a recovery within 200 s: rare


def test_long_sequences_recover_relapse_and_back_off() -> None:
    """An hour each, faults of at most 5 minutes: time for verification, probation, relapses
    and the backoff's doubling, again and again."""
    verified = failed = resumes = relapsing = 0
    for seed in range(30):
        rng = random.Random(seed)
        faults = [
            f
            for _ in range(3)
            for f in random_timeline(rng, LONG, SHIPPED.replicas, GENERATED, 300.0)
        ]
        world = simulate(SHIPPED, faults, seed, LONG)
        verified += sum(ok for _, ok in world.record.verifications)
        failed += sum(not ok for _, ok in world.record.verifications)
        resumes += len(world.record.resumes)
        relapsing += world.incident.relapses > 0
    assert verified > 25 and failed > 3 and resumes > 25 and relapsing > 5


# The known start-up gap (the two strict xfails below): while the evidence table is still empty,
# a replica cut off in its first seconds is the only live voter. Generated timelines cut a
# replica off only after every replica has voted, so that the derandomized search below keeps
# its verdict whatever constants the code holds (hypothesis seeds its draws with the literals it
# finds in the loaded modules, so new code changes which timelines it tries).
FIRST_VOTES = 15.0


@st.composite
def timelines(draw: st.DrawFn) -> list[Fault]:
    faults = []
    for _ in range(draw(st.integers(1, 5))):
        kind = draw(st.sampled_from(GENERATED))
        start = draw(st.floats(0, 900, allow_nan=False))
        if kind is Kind.ISOLATED:
            start = max(start, FIRST_VOTES)
        length = draw(st.sampled_from((0.5, 2.0, 5.0, 15.0, 40.0, 90.0, 300.0, 2000.0)))
        replica = draw(st.integers(0, SHIPPED.replicas - 1))
        share = draw(st.sampled_from((0.01, 0.04))) if kind is Kind.SPORADIC_HANG else (
            draw(st.sampled_from((0.1, 0.5, 1.0))) if kind is Kind.RATE_LIMIT else 1.0)  # fmt: skip
        end = start if kind is Kind.RESTART else start + length
        faults.append(Fault(kind, start, end, replica, share))
    return faults


# Derandomized: the same 150 timelines on every run, so that a verdict never depends on the run
# (the 10,000 seeded sequences above vary the rest). To search afresh, run with
# `--hypothesis-seed=random` or drop `derandomize` locally; a find becomes a test of its own.
@settings(
    max_examples=150, deadline=None, derandomize=True, database=None,
    suppress_health_check=[HealthCheck.too_slow],
)  # fmt: skip
@given(faults=timelines(), seed=st.integers(0, 2**16))
def test_hypothesis_timelines_keep_every_invariant(faults: list[Fault], seed: int) -> None:
    """Hypothesis shrinks a failing timeline to the fewest, shortest faults that still fail."""
    simulate(SHIPPED, faults, seed, 1500.0)


@pytest.mark.xfail(strict=True, raises=Violation, reason=(
    "known gap: at start-up one replica's network fails while the other's first round and the "
    "platform's call both hang; the only live vote and the platform's silence read as an outage"
))  # fmt: skip
def test_a_cut_off_replica_alone_at_start_up_does_not_stop_purchases() -> None:
    """Found by hypothesis (seed 417): replica 1 is cut off from 0 s, replica 0's first round
    hangs (4 % hangs), the platform's call in flight hangs too. At 10.1 s replica 1 is the only
    live voter, with 2 failed rounds, and the platform's last answer (8.05 s) came just before
    its first failure (8.06 s), so nothing vetoes "down": purchases stop for 2 s of evidence
    that, from inside, looks like an outage beginning."""
    faults = [Fault(Kind.SPORADIC_HANG, 1.0, 16.0, 0, 0.04), Fault(Kind.ISOLATED, 0.0, 15.0, 1),
              Fault(Kind.OUTAGE, 13.0, 13.5, 0)]  # fmt: skip
    simulate(SHIPPED, faults, 417, 1000.0)


@pytest.mark.xfail(strict=True, raises=Violation, reason=(
    "known gap: at start-up one replica's network fails while purchases are held, so the platform "
    "makes no call that could veto; the only live vote reads as an outage"
))  # fmt: skip
def test_a_cut_off_replica_alone_at_start_up_under_an_admin_hold_does_not_stop_purchases() -> None:
    """Found by hypothesis when the generator still cut replicas off at 0 s: replica 0 is cut
    off and an admin hold is set from 0 s to 5 s; at 3.4 s replica 0 is the only live voter, with
    2 failed rounds, and a held platform makes no call. The breaker opens with no outage."""
    faults = [Fault(Kind.ISOLATED, 0.0, 5.0, 0), Fault(Kind.HOLD, 0.0, 5.0, 0)]
    simulate(SHIPPED, faults, 1, 1500.0)


# -- scenarios the issue names, with the numbers they promise --


def test_an_outage_stops_purchases_and_a_verified_recovery_resumes_them() -> None:
    world = run([Fault(Kind.OUTAGE, 100.0, 400.0)], 900.0)
    [stop] = world.record.stops
    # The platform's calls fail at once: the watch wakes the replicas, one round each.
    assert 100.0 < stop <= 100.0 + 10.0
    [resume] = world.record.resumes
    assert resume >= 400.0 + SHIPPED.recovery_timeout + SHIPPED.probation
    assert [ok for _, ok in world.record.verifications] == [True]
    assert [p[2] for p in world.record.pages] == ["unavailable"]


@pytest.mark.parametrize(
    ("kind", "purchase_rate", "target"),
    [(Kind.OUTAGE, 1.0, 10.0), (Kind.HANG, 1.0, 10.0 + SHIPPED.platform_timeout),
     (Kind.OUTAGE, 0.0, 25.0), (Kind.HANG, 0.0, 25.0)],
    ids=["platform, 503", "platform, hangs", "probe alone, 503", "probe alone, hangs"],
)  # fmt: skip
def test_purchases_stop_within_the_promised_time_whatever_the_probes_phase(
    kind: Kind, purchase_rate: float, target: float
) -> None:
    """Issue 18's targets: 10 s after the platform's calls start failing (a hanging call fails
    when the platform's own timeout ends it), 25 s on the probe's evidence alone; over fault
    starts spread across the probe's cadence (bench/stop_times.py measures the distribution)."""
    params = SHIPPED.but(purchase_rate=purchase_rate)
    rng = random.Random(18)
    for i in range(16):
        start = 300.0 + params.probe_interval * 1.1 * (i + rng.random()) / 16
        world = simulate(params, [Fault(kind, start, start + 600.0)], rng.randrange(2**32),
                         start + 120.0)  # fmt: skip
        assert world.record.stops and world.record.stops[0] - start <= target, i


@pytest.mark.parametrize(
    ("fault", "rate_lowered"),
    [(Fault(Kind.SPORADIC_HANG, 0.0, 3600.0, share=0.04), False),
     (Fault(Kind.RATE_LIMIT, 0.0, 3600.0, share=0.1), True),
     (Fault(Kind.RATE_LIMIT, 0.0, 3600.0, share=1.0), True)],
    ids=["4% hangs", "10% rate limits", "all rate limited"],
)  # fmt: skip
def test_sporadic_trouble_never_stops_purchases(fault: Fault, rate_lowered: bool) -> None:
    for seed in range(4):
        world = run([fault], 3600.0, seed)
        assert world.record.stops == []
        assert world.controls.rate_lowered is rate_lowered or fault.kind is Kind.RATE_LIMIT


def test_one_replica_cut_off_stops_nothing_and_a_restart_loses_nothing() -> None:
    faults = [Fault(Kind.ISOLATED, 50.0, 1000.0, replica=0), Fault(Kind.RESTART, 300.0, 300.0, 1)]
    world = run(faults, 1200.0)
    assert world.record.stops == [] and world.record.pages == []


def test_an_admin_hold_outlasts_the_outage_and_only_the_admin_lifts_it() -> None:
    world = run([Fault(Kind.OUTAGE, 50.0, 100.0), Fault(Kind.HOLD, 60.0, 800.0)], 1200.0)
    assert world.controls.retries_queued == 1  # the core still opened its incident
    # Nothing verifies a held breaker; once the admin lets go, recovery is verified at once.
    assert [t > 800.0 for t, _ in world.record.verifications] == [True]
    assert not world.controls.paused


def test_a_nonce_clash_is_a_configuration_warning_not_an_auth_page() -> None:
    world = run([Fault(Kind.NONCE, 20.0, 1200.0)], 1200.0)
    assert world.record.stops == []
    assert not any(cause == "auth" for _, _, cause in world.record.pages)


@pytest.mark.parametrize(
    ("first_outage_ends", "stopped_again_by"),
    [(200.0, 125.0), (100.0, 130.0 + 5.0)],
    ids=["released while still down", "a new outage before the recovery"],
)
def test_an_outage_after_an_admin_lets_purchases_flow_mid_incident_stops_them(
    first_outage_ends: float, stopped_again_by: float
) -> None:
    """An admin holds purchases during an incident, then resumes them at 120 s while the
    incident is open: purchases stop again as soon as the evidence says down (the invariant
    stop_on_quorate_evidence holds after every step), the incident goes on."""
    faults = [Fault(Kind.OUTAGE, 20.0, first_outage_ends), Fault(Kind.HOLD, 60.0, 120.0),
              Fault(Kind.OUTAGE, 130.0, 600.0)]  # fmt: skip
    world = run(faults, 700.0)
    [first, again] = world.record.stops
    assert first < 60.0 and 120.0 < again <= stopped_again_by
    assert [p[1] for p in world.record.pages] == ["ExchangeApiDown"]


def test_maintenance_with_one_replica_cut_off_stops_purchases_for_maintenance() -> None:
    """The cut-off replica's row still holds "online", read before it was cut off: only
    replicas whose last round was answered say what the status is. (The page is Prometheus's,
    from the status gauges: ExchangeApiDown, a known gap of the alert rules.)"""
    faults = [Fault(Kind.ISOLATED, 10.0, 900.0, replica=0), Fault(Kind.MAINTENANCE, 100.0, 900.0)]
    world = run(faults, 900.0)
    [stop] = world.record.stops
    assert 100.0 < stop < 140.0
    assert world.incident.cause == "maintenance"
    assert world.verdict is not None and world.verdict.cause == "maintenance"


# -- breaking the core, one rule at a time: the invariants must notice --

Mutation = Callable[[pytest.MonkeyPatch], None]


def _skip_verification_check(mp: pytest.MonkeyPatch) -> None:
    """A failed verification counts as passed."""
    verified = decisions._verified

    def mutant(incident: Any, breaker: Any, verdict: Any, event: Any, *rest: Any) -> Any:
        event = replace(event, result=RecoveryResult(True, event.result.checks))
        return verified(incident, breaker, verdict, event, *rest)

    mp.setattr(decisions, "_verified", mutant)


def _ignore_admin_hold(mp: pytest.MonkeyPatch) -> None:
    while_down = decisions._while_down

    def mutant(incident: Any, evidence: Any, *rest: Any) -> Any:
        evidence = replace(evidence, breaker=replace(evidence.breaker, held=False))
        return while_down(incident, evidence, *rest)

    mp.setattr(decisions, "_while_down", mutant)


def _drop_backoff(mp: pytest.MonkeyPatch) -> None:
    while_down = decisions._while_down

    def mutant(incident: Any, *rest: Any) -> Any:
        return while_down(replace(incident, next_attempt_at=None), *rest)

    mp.setattr(decisions, "_while_down", mutant)


def _resume_when_probation_ends(mp: pytest.MonkeyPatch) -> None:
    """Probation ends on the clock alone: no relapse, whatever the evidence says."""

    def mutant(incident: Any, breaker: Any, verdict: Any, now: Any, policy: Any, fx: Any) -> Any:
        if incident.probation_until is not None and now >= incident.probation_until:
            return decisions._resume(incident, now, policy, fx)
        return incident

    mp.setattr(decisions, "_while_on_probation", mutant)


def _overlook_maintenance(mp: pytest.MonkeyPatch) -> None:
    verdict_of = decisions.verdict_of

    def mutant(*args: Any) -> Any:
        verdict = verdict_of(*args)
        return replace(verdict, status=None) if verdict.status == "maintenance" else verdict

    mp.setattr(decisions, "verdict_of", mutant)


def _trust_one_replica(mp: pytest.MonkeyPatch) -> None:
    """One replica's failures count as the exchange's."""
    verdict_of = decisions.verdict_of

    def mutant(*args: Any) -> Any:
        verdict = verdict_of(*args)
        return replace(verdict, down=verdict.down or verdict.isolated)

    mp.setattr(decisions, "verdict_of", mutant)


def _nonce_as_auth(mp: pytest.MonkeyPatch) -> None:
    mp.setitem(outcomes._KRAKEN_ERRORS, "EAPI:Invalid nonce", outcomes.Outcome.AUTH_ERROR)


OUTAGE_THEN_CROSSED_BOOK = [Fault(Kind.OUTAGE, 10.0, 100.0), Fault(Kind.VERIFY_FAILS, 100.0, 900.0)]
MUTATIONS: list[tuple[str, Mutation, list[Fault], str, frozenset[str]]] = [
    ("skip the verification check", _skip_verification_check, OUTAGE_THEN_CROSSED_BOOK,
     "no_resume_without_verification", frozenset()),
    ("ignore the admin's hold", _ignore_admin_hold,
     [Fault(Kind.HOLD, 5.0, 900.0), Fault(Kind.OUTAGE, 20.0, 80.0)], "admin_hold_wins", frozenset()),
    ("drop the backoff", _drop_backoff, OUTAGE_THEN_CROSSED_BOOK, "relapse_backoff", frozenset()),
    ("let the breaker flap", _drop_backoff, OUTAGE_THEN_CROSSED_BOOK, "bounded_breaker_changes",
     frozenset({"relapse_backoff"})),
    ("resume when probation ends, whatever the evidence", _resume_when_probation_ends,
     [Fault(Kind.OUTAGE, 10.0, 60.0), Fault(Kind.OUTAGE, 175.0, 600.0)],
     "no_resume_on_failing_evidence", frozenset()),
    ("overlook maintenance", _overlook_maintenance, [Fault(Kind.MAINTENANCE, 10.0, 600.0)],
     "stop_on_quorate_evidence", frozenset()),
    ("trust one replica's network", _trust_one_replica,
     [Fault(Kind.ISOLATED, 10.0, 600.0, replica=0)], "no_needless_stop", frozenset()),
    ("page a nonce clash as auth", _nonce_as_auth, [Fault(Kind.NONCE, 10.0, 900.0)],
     "one_page_per_cause", frozenset()),
]  # fmt: skip


def test_every_invariant_has_a_mutation_that_breaks_it() -> None:
    assert {m[3] for m in MUTATIONS} == set(INVARIANTS)


@pytest.mark.parametrize(
    ("mutate", "faults", "invariant", "skip"),
    [m[1:] for m in MUTATIONS],
    ids=[m[0] for m in MUTATIONS],
)
def test_breaking_the_core_breaks_an_invariant(
    monkeypatch: pytest.MonkeyPatch,
    mutate: Mutation,
    faults: list[Fault],
    invariant: str,
    skip: frozenset[str],
) -> None:
    checker: Callable[[], Invariants] = lambda: Invariants(skip=skip)  # noqa: E731
    run(faults, 1000.0, invariants=checker())  # the same timeline holds on the real core
    mutate(monkeypatch)
    with pytest.raises(Violation) as caught:
        run(faults, 1000.0, invariants=checker())
    assert caught.value.invariant == invariant
