"""Failover on a simulated clock: the issue's scenarios with the shipped timers, the targets they
promise, and generated timelines under failover's invariants (tests/simulator/failover.py).

Pure, like tests/test_incident_simulation.py: no database, no sleeping; a failure names the
seed and the timeline."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import pytest

from exporter.runbook.incident.routing import NONE, PRIMARY, RoutingPolicy
from tests.simulator import Fault, Kind, Params, Violation, random_timeline, simulate
from tests.simulator.failover import (
    FAILOVER_INVARIANTS,
    FailoverWorld,
    SecondaryFault,
    SecondaryKind,
    SecondarySpec,
    simulate_failover,
)

pytestmark = pytest.mark.unit

SHIPPED = Params.shipped()
IR = "independentreserve"
BM = "btcmarkets"
HEALTHY_IR = (SecondarySpec(IR),)
KRAKEN_DOWN = [Fault(Kind.OUTAGE, 100.0, 400.0)]


def run(
    faults: list[Fault], horizon: float = 900.0, seed: int = 1,
    secondaries: tuple[SecondarySpec, ...] = HEALTHY_IR, **options: Any,
) -> FailoverWorld:  # fmt: skip
    return simulate_failover(SHIPPED, faults, seed, horizon, secondaries=secondaries, **options)


def labels(world: FailoverWorld) -> list[str]:
    return [label for _, label in world.routes.changes]


# -- the scenarios, with its targets --


@pytest.mark.parametrize("seed", range(5))
def test_kraken_down_with_a_healthy_secondary_flows_there_within_the_targets(seed: int) -> None:
    world = run(KRAKEN_DOWN, seed=seed)
    [stop] = world.record.stops
    routed = world.first_route_after(0.0, IR)
    assert routed is not None
    # Targets: on the secondary at most 60 s after Kraken dies and 10 s after purchases stop.
    assert routed - 100.0 <= 60.0 and routed - stop <= 10.0
    [resume] = world.record.resumes
    [back] = world.returns()
    assert back - resume <= 30.0  # back on the primary at most 30 s after probation ends
    assert labels(world) == [IR, PRIMARY]


@pytest.mark.parametrize(
    ("fault", "guard"),
    [
        (SecondaryFault(SecondaryKind.THIN, 0.0, 900.0, 0.005), "depth"),
        (SecondaryFault(SecondaryKind.SPIKE, 0.0, 900.0, 0.04), "price"),
        (SecondaryFault(SecondaryKind.BROKE, 0.0, 900.0, 100.0), "balance"),
    ],
)
def test_a_thin_book_a_price_spike_or_a_short_balance_routes_nothing(
    fault: SecondaryFault, guard: str
) -> None:
    world = run(KRAKEN_DOWN, secondaries=(SecondarySpec(IR, (fault,)),))
    assert world.first_route_after(0.0) is None
    assert {g for _, g in world.routes.blocked} == {guard}
    assert len(world.record.stops) == 1 and world.controls.paused is False


def test_the_secondary_failing_mid_failover_pauses_purchases_then_they_flow_again() -> None:
    ir = SecondarySpec(IR, (SecondaryFault(SecondaryKind.DOWN, 200.0, 260.0),))
    world = run(KRAKEN_DOWN, secondaries=(ir,))
    changes = world.routes.changes
    assert labels(world) == [IR, NONE, IR, PRIMARY]
    unrouted = changes[1][0]
    # Its next failed check (every verify interval), then Kraken's next decision (5 s).
    assert 200.0 < unrouted <= 200.0 + world.verify_interval + SHIPPED.incident_interval + 1
    assert changes[2][0] >= 260.0


def test_a_second_secondary_takes_over_when_the_first_fails() -> None:
    ir = SecondarySpec(IR, (SecondaryFault(SecondaryKind.DOWN, 200.0, 900.0),))
    world = run(KRAKEN_DOWN, secondaries=(ir, SecondarySpec(BM)))
    assert labels(world) == [IR, BM, PRIMARY]


def test_a_flapping_kraken_stays_on_the_secondary() -> None:
    flaps = [Fault(Kind.OUTAGE, 100.0 + 60 * i, 130.0 + 60 * i) for i in range(6)]
    world = run(flaps, 1200.0)
    assert labels(world) == [IR, PRIMARY]
    [back] = world.returns()
    assert back >= flaps[-1].end + SHIPPED.recovery_timeout + SHIPPED.probation


def test_kraken_back_is_verified_then_on_probation_before_purchases_return() -> None:
    world = run(KRAKEN_DOWN)
    [ok] = [t for t, passed in world.record.verifications if passed]
    [back] = world.returns()
    assert back >= ok + SHIPPED.probation and back == world.record.resumes[0]


def test_both_down_purchases_wait_and_page_no_more_than_without_a_secondary() -> None:
    ir = SecondarySpec(IR, (SecondaryFault(SecondaryKind.DOWN, 50.0, 900.0),))
    world = run(KRAKEN_DOWN, secondaries=(ir,))
    assert world.first_route_after(0.0) is None
    assert {g for _, g in world.routes.blocked} == {"unverified"}
    alone = simulate(SHIPPED, KRAKEN_DOWN, 1, 900.0)
    assert world.record.pages == alone.record.pages


def test_an_admin_hold_wins_over_the_route() -> None:
    faults = [*KRAKEN_DOWN, Fault(Kind.HOLD, 200.0, 300.0)]
    world = run(faults)
    assert labels(world) == [IR, NONE, IR, PRIMARY]
    assert {g for _, g in world.routes.blocked} == {"admin_hold"}


def test_an_admin_who_forbids_routing_sees_todays_pause() -> None:
    world = FailoverWorld(SHIPPED, KRAKEN_DOWN, 1, secondaries=HEALTHY_IR)
    world.route = replace(world.route, override="none")
    world.run(900.0)
    assert world.first_route_after(0.0) is None
    assert {g for _, g in world.routes.blocked} == {"admin_forbids"}


def test_the_reference_ages_out_and_one_secondary_alone_is_no_reference() -> None:
    """An outage longer than reference_max_age: Kraken's last mid is too old, and one quote
    cannot check itself: purchases wait (configure two secondaries to keep buying)."""
    long = [Fault(Kind.OUTAGE, 100.0, 1000.0)]
    policy = RoutingPolicy(True, (IR,), reference_max_age=300.0)
    world = run(long, 1300.0, policy=policy)
    assert labels(world)[:2] == [IR, NONE]
    assert world.routes.changes[1][0] <= 100.0 + 300.0 + 2 * SHIPPED.incident_interval + 1
    two = run(long, 1300.0, secondaries=(SecondarySpec(IR), SecondarySpec(BM)),
              policy=RoutingPolicy(True, (IR, BM), reference_max_age=300.0))  # fmt: skip
    assert labels(two) == [IR, PRIMARY]


# -- failover's invariants catch a routing that ignores a guard --


def test_routing_that_ignores_the_price_guard_breaks_an_invariant(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spike = SecondarySpec(IR, (SecondaryFault(SecondaryKind.SPIKE, 0.0, 900.0, 0.04),))
    run(KRAKEN_DOWN, secondaries=(spike,))  # holds on the real decision
    from exporter.runbook.incident import routing

    real = routing.guard

    def careless(*args, **kwargs):  # type: ignore[no-untyped-def]
        tripped, words = real(*args, **kwargs)
        return (None, words) if tripped == "price" else (tripped, words)

    monkeypatch.setattr(routing, "guard", careless)
    with pytest.raises(Violation) as caught:
        run(KRAKEN_DOWN, secondaries=(spike,))
    assert caught.value.invariant == "routed_only_when_healthy"


def test_routing_back_before_probation_breaks_an_invariant(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from exporter.runbook.incident import routing

    real = routing.route

    def eager(current, view, now, policy):  # type: ignore[no-untyped-def]
        if view.phase == "probation":
            view = replace(view, phase="normal", paused=False)
        return real(current, view, now, policy)

    monkeypatch.setattr("tests.simulator.failover.route", eager)
    with pytest.raises(Violation) as caught:
        run(KRAKEN_DOWN)
    assert caught.value.invariant == "back_only_after_probation"


def test_routing_under_an_admin_hold_breaks_an_invariant(monkeypatch: pytest.MonkeyPatch) -> None:
    from exporter.runbook.incident import routing

    real = routing.route

    def deaf(current, view, now, policy):  # type: ignore[no-untyped-def]
        return real(current, replace(view, held=False), now, policy)

    faults = [*KRAKEN_DOWN, Fault(Kind.HOLD, 200.0, 300.0)]
    monkeypatch.setattr("tests.simulator.failover.route", deaf)
    with pytest.raises(Violation) as caught:
        run(faults)
    assert caught.value.invariant == "hold_wins_route"


def test_every_failover_invariant_has_a_mutation_that_breaks_it() -> None:
    import inspect
    import sys

    source = inspect.getsource(sys.modules[__name__])
    for invariant in FAILOVER_INVARIANTS:
        assert f'caught.value.invariant == "{invariant}"' in source, invariant


# -- generated timelines --

SECONDARY_KINDS = tuple(SecondaryKind)


def random_secondary(rng: random.Random, name: str, horizon: float) -> SecondarySpec:
    faults = []
    for _ in range(rng.randint(0, 2)):
        kind = rng.choice(SECONDARY_KINDS)
        start = rng.uniform(0, horizon)
        size = {SecondaryKind.SPIKE: rng.choice((0.01, 0.02, 0.05)),
                SecondaryKind.THIN: rng.choice((0.001, 0.02)),
                SecondaryKind.BROKE: rng.choice((10.0, 5000.0))}.get(kind, 0.0)  # fmt: skip
        faults.append(SecondaryFault(kind, start, start + rng.uniform(5, 400), size))
    return SecondarySpec(name, tuple(faults))


def generated(seeds: range, horizon: float) -> tuple[int, int]:
    routed = returns = 0
    kinds = (Kind.OUTAGE, Kind.HANG, Kind.MAINTENANCE, Kind.HOLD, Kind.VERIFY_FAILS,
             Kind.SPORADIC_HANG, Kind.RESTART)  # fmt: skip
    for seed in seeds:
        rng = random.Random(seed)
        faults = random_timeline(rng, horizon, SHIPPED.replicas, kinds)
        secondaries = tuple(random_secondary(rng, n, horizon) for n in (IR, BM)[
            : rng.randint(1, 2)])  # fmt: skip
        world = simulate_failover(SHIPPED, faults, seed, horizon, secondaries=secondaries)
        routed += world.first_route_after(0.0) is not None
        returns += len(world.returns())
        # Failover adds no page: the same timeline without a secondary pages the same.
        assert world.record.pages == simulate(SHIPPED, faults, seed, horizon).record.pages
    return routed, returns


def test_generated_timelines_keep_failovers_invariants() -> None:
    routed, returns = generated(range(20), 900.0)
    assert routed >= 8 and returns >= 5  # the generator exercises the routes


@pytest.mark.thorough
@pytest.mark.timeout(900)
def test_many_generated_timelines_keep_failovers_invariants() -> None:
    routed, returns = generated(range(20, 420), 900.0)
    assert routed > 150 and returns > 100
