"""Failover's routing decision as a pure function on a simulated clock (routing.py): where the
primary's purchases go, which guard blocks a route, what is audited."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from exporter.config import parse_config
from exporter.runbook.incident import effects as fx
from exporter.runbook.incident.routing import (
    Market,
    RouteView,
    RoutingPolicy,
    Secondary,
    reference,
    route,
)
from exporter.runbook.incident.state import DOWN, NORMAL, PROBATION, Route

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, tzinfo=UTC)
POLICY = RoutingPolicy(True, ("independentreserve", "btcmarkets"))
MID = Decimal("100000")


def market(
    name: str, age: float = 5.0, *, ok: bool = True, ask: str = "100100", bid: str = "99900",
    depth_btc: str = "1", balance: str | None = "50000", verified_age: float | None = None,
) -> Market:  # fmt: skip
    checked = T0 - timedelta(seconds=age)
    verified = T0 - timedelta(seconds=verified_age if verified_age is not None else age)
    return Market(
        name, checked, ok, verified if ok or verified_age is not None else None,
        Decimal(bid), Decimal(ask), ((Decimal(ask), Decimal(depth_btc)),),
        None if balance is None else Decimal(balance),
    )  # fmt: skip


KRAKEN = Market("kraken", T0 - timedelta(seconds=30), True, T0, MID - 50, MID + 50)


def view(*secondaries: Secondary, phase: str = DOWN, **kw: object) -> RouteView:
    base = RouteView(
        phase=phase, paused=phase != NORMAL, primary_market=KRAKEN,
        secondaries=secondaries or (Secondary("independentreserve", market("independentreserve")),),
        waiting_aud=Decimal("1000"),
    )  # fmt: skip
    return replace(base, **kw)  # type: ignore[arg-type]


def decide(v: RouteView, current: Route | None = None, policy: RoutingPolicy = POLICY):  # noqa: ANN201
    return route(current or Route("kraken"), v, T0, policy)


def test_a_stopped_primary_routes_to_a_healthy_secondary_with_its_evidence() -> None:
    d = decide(view())
    assert d.label == "independentreserve" and d.route.routed_to == "independentreserve"
    assert d.route.since == T0 and d.route.failovers == 1 and d.route.blocked_guard is None
    # Valid as long as its verification: the gate stops routing after it.
    assert d.route.valid_until == T0 - timedelta(seconds=5) + timedelta(seconds=60)
    audit = next(e for e in d.effects if isinstance(e, fx.Audit))
    assert audit.action_name == "route_purchases"
    assert "to independentreserve" in audit.cause and "best ask 100100" in audit.cause
    assert audit.detail["reference"] == {"price": "100000", "source": "kraken mid"}
    assert any(isinstance(e, fx.SetRoute) and e.action == "route_purchases" for e in d.effects)


def test_a_healthy_primary_keeps_its_purchases() -> None:
    d = decide(view(phase=NORMAL))
    assert d.label == "primary" and d.route.routed_to is None and d.effects == ()


def test_failover_off_never_routes() -> None:
    d = decide(view(), policy=RoutingPolicy())
    assert d.label == "none" and d.route.routed_to is None


@pytest.mark.parametrize(
    ("secondary", "guard"),
    [
        (Secondary("independentreserve"), "unverified"),
        (Secondary("independentreserve", market("independentreserve", 61)), "unverified"),
        # A failed latest check: not verified, however recent the one before.
        (Secondary("independentreserve", market("independentreserve", 1, ok=False,
                                                verified_age=20)), "unverified"),
        (Secondary("independentreserve", market("independentreserve"), stopped=True),
         "secondary_stopped"),
        (Secondary("independentreserve", market("independentreserve", balance="999.99")),
         "balance"),
        (Secondary("independentreserve", market("independentreserve", balance=None)), "balance"),
        # A price spike, and a price far below: both beyond 1.5 %.
        (Secondary("independentreserve", market("independentreserve", ask="101600")), "price"),
        (Secondary("independentreserve", market("independentreserve", ask="98400",
                                                bid="98300")), "price"),
        # A thin book: 0.009 BTC at 100,100 fills 900.90 AUD of the 1,000 waiting.
        (Secondary("independentreserve", market("independentreserve", depth_btc="0.009")),
         "depth"),
    ],
)  # fmt: skip
def test_each_guard_keeps_purchases_waiting(secondary: Secondary, guard: str) -> None:
    d = decide(view(secondary))
    assert d.label == "none" and d.route.routed_to is None and d.route.blocked_guard == guard
    audit = next(e for e in d.effects if isinstance(e, fx.Audit))
    assert audit.action_name == "route_blocked" and guard in audit.cause


def test_the_price_guard_is_inclusive_at_the_deviation() -> None:
    d = decide(view(Secondary("independentreserve", market("independentreserve", ask="101500"))))
    assert d.route.routed_to == "independentreserve"


def test_depth_counts_only_the_asks_within_the_deviation() -> None:
    thin = market("independentreserve", depth_btc="0.005")
    deep = replace(thin, asks=(*thin.asks, (Decimal("101000"), Decimal("1")),
                               (Decimal("120000"), Decimal("100"))))  # fmt: skip
    assert decide(view(Secondary("independentreserve", deep))).route.routed_to
    beyond = replace(thin, asks=(*thin.asks, (Decimal("101600"), Decimal("100"))))
    assert decide(view(Secondary("independentreserve", beyond))).route.blocked_guard == "depth"


def test_the_reference_ages_out_to_the_median_of_the_exchanges_that_answer() -> None:
    old = replace(KRAKEN, checked_at=T0 - timedelta(seconds=601))
    ir = Secondary("independentreserve", market("independentreserve", ask="100100"))
    bm = Secondary("btcmarkets", market("btcmarkets", ask="100300", bid="100100"))
    found = reference(view(ir, bm, primary_market=old), T0, POLICY)
    assert found is not None and found.price == Decimal("100100")
    assert found.source == "median of independentreserve, btcmarkets"
    # One quote is no reference: a spike would be compared with itself.
    d = decide(view(ir, primary_market=old))
    assert d.route.blocked_guard == "no_reference"
    assert decide(view(ir, bm, primary_market=old)).route.routed_to == "independentreserve"


def test_the_first_healthy_secondary_by_preference_and_then_it_sticks() -> None:
    ir_bad = Secondary("independentreserve", market("independentreserve", ask="105000"))
    bm = Secondary("btcmarkets", market("btcmarkets"))
    d = decide(view(ir_bad, bm))
    assert d.route.routed_to == "btcmarkets"
    checks = next(e for e in d.effects if isinstance(e, fx.Audit)).detail["secondaries"]
    assert [c["guard"] for c in checks] == ["price", None]
    # independentreserve is healthy again: the route stays where it is, refreshed, no audit.
    ir = Secondary("independentreserve", market("independentreserve"))
    again = route(d.route, view(ir, bm), T0 + timedelta(seconds=5), POLICY)
    assert again.route.routed_to == "btcmarkets" and again.route.failovers == 1
    assert again.effects == (fx.SetRoute("btcmarkets", again.route.reason or "", None, False),)
    assert again.effects[0].action is None  # the dry run records nothing for a refresh


def test_a_secondary_failing_mid_failover_stops_the_route_purchases_wait() -> None:
    routed = decide(view()).route
    failing = Secondary("independentreserve", market("independentreserve", 1, ok=False,
                                                     verified_age=30))  # fmt: skip
    d = route(routed, view(failing), T0, POLICY)
    assert d.label == "none" and d.route.routed_to is None and d.route.blocked_guard == "unverified"
    audit = next(e for e in d.effects if isinstance(e, fx.Audit))
    assert audit.action_name == "route_purchases" and "no longer routed" in audit.cause
    log = next(e for e in d.effects if isinstance(e, fx.Log))
    assert log.level == fx.WARNING


@pytest.mark.parametrize("phase", [DOWN, PROBATION])
def test_an_open_incident_keeps_the_route_back_only_once_it_closes(phase: str) -> None:
    routed = decide(view()).route
    assert route(routed, view(phase=phase), T0, POLICY).route.routed_to == "independentreserve"
    back = route(routed, view(phase=NORMAL), T0 + timedelta(seconds=1), POLICY)
    assert back.label == "primary" and back.route.routed_to is None
    assert back.route.since == T0 + timedelta(seconds=1) and back.route.failovers == 1
    assert "no longer routed" in next(e for e in back.effects if isinstance(e, fx.Audit)).cause


def test_an_admin_may_forbid_routing() -> None:
    d = decide(view(), Route("kraken", override="none"))
    assert d.label == "none" and d.route.blocked_guard == "admin_forbids"
    assert decide(view(phase=NORMAL), Route("kraken", override="none")).label == "primary"


def test_an_admin_may_force_a_secondary_still_guarded() -> None:
    forced = Route("kraken", override="btcmarkets")
    bm = Secondary("btcmarkets", market("btcmarkets"))
    ir = Secondary("independentreserve", market("independentreserve"))
    assert decide(view(ir, bm, phase=NORMAL), forced).route.routed_to == "btcmarkets"
    spiking = Secondary("btcmarkets", market("btcmarkets", ask="110000"))
    # Blocked: the primary may buy, so purchases stay there; never the other secondary.
    d = decide(view(ir, spiking, phase=NORMAL), forced)
    assert d.label == "primary" and d.route.blocked_guard == "price"
    assert decide(view(ir, spiking), forced).label == "none"


@pytest.mark.parametrize("override", [None, "independentreserve"])
def test_an_admin_hold_wins_over_routing(override: str | None) -> None:
    d = decide(view(held=True), Route("kraken", override=override))
    assert d.label == "none" and d.route.blocked_guard == "admin_hold"


def test_the_failover_config_has_defaults_and_names_bad_values() -> None:
    config = parse_config({
        "exchanges": {"kraken": {"role": "primary"}, "independentreserve": {"role": "secondary"}},
        "independentreserve": {"enabled": True},
    })  # fmt: skip
    policy = RoutingPolicy.from_config(config)
    assert policy == RoutingPolicy(True, ("independentreserve",))
    assert not RoutingPolicy.from_config(parse_config({})).enabled


def test_the_admin_route_command_takes_a_route_and_a_reason() -> None:
    from exporter.operator.commands import build_parser

    args = build_parser().parse_args(["route", "kraken", "--to", "none", "--reason", "ops"])
    assert (args.command, args.exchange, args.to, args.reason) == ("route", "kraken", "none", "ops")
