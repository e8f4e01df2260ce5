"""Failover in the simulated world: secondary exchanges checked on a cadence (their rows of
liquid_abt.exchange_verifications, and the primary's), the production's pure routing decision
run after every incident decision as the executor runs it, and failover's invariants.

Additive: `FailoverWorld` is a `World` whose decisions are followed by `routing.route`; the
secondaries have faults of their own (down, a price spike, a thin book, a short balance). The
checker computes every guard with its own arithmetic, never with routing.py's.
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from exporter.runbook.incident import effects as fx
from exporter.runbook.incident.routing import (
    NONE,
    PRIMARY,
    Market,
    RouteDecision,
    RouteView,
    RoutingPolicy,
    Secondary,
    remember,
    route,
)
from exporter.runbook.incident.state import NORMAL, Route
from tests.simulator.core import EXCHANGE, decisions
from tests.simulator.faults import Fault, Kind
from tests.simulator.invariants import Invariants, Violation
from tests.simulator.params import Params
from tests.simulator.world import World, at

PRICE = Decimal("100000")  # AUD per BTC, every exchange's mid while nothing is wrong
SPREAD = Decimal("50")
# How often the markets' checks refresh each exchange's row (the markets helper's shipped
# `<exchange>.verify_interval`, and Kraken's good rounds at the same cadence).
VERIFY_INTERVAL = 15.0
FAILOVER_INVARIANTS = ("routed_only_when_healthy", "back_only_after_probation", "hold_wins_route")


class SecondaryKind(StrEnum):
    DOWN = "down"  # its checks fail
    SPIKE = "spike"  # its asks are `size` (a fraction) above the market
    THIN = "thin"  # its book holds `size` BTC in all
    BROKE = "broke"  # its AUD balance is `size`


@dataclass(frozen=True)
class SecondaryFault:
    kind: SecondaryKind
    start: float
    end: float
    size: float = 0.0

    def active(self, t: float) -> bool:
        return self.start <= t < self.end


@dataclass(frozen=True)
class SecondarySpec:
    name: str
    faults: tuple[SecondaryFault, ...] = ()
    balance: Decimal = Decimal("50000")
    depth_btc: Decimal = Decimal("2")


@dataclass
class RouteRecord:
    changes: list[tuple[float, str]] = field(default_factory=list)  # (t, label)
    routed_seconds: float = 0.0
    blocked: list[tuple[float, str | None]] = field(default_factory=list)


class FailoverWorld(World):
    """A world with secondaries, and the route decided after every incident decision."""

    def __init__(
        self, params: Params, faults: list[Fault], seed: int = 0, *,
        secondaries: tuple[SecondarySpec, ...] = (), policy: RoutingPolicy | None = None,
        verify_interval: float | None = None, waiting_aud: Decimal = Decimal("1000"),
        skip: frozenset[str] = frozenset(), **options: Any,
    ) -> None:  # fmt: skip
        options.setdefault("invariants", Invariants())
        super().__init__(params, faults, seed, **options)
        self.specs = {s.name: s for s in secondaries}
        self.policy = policy or RoutingPolicy(True, tuple(self.specs))
        self.verify_interval = verify_interval or VERIFY_INTERVAL
        self.waiting = waiting_aud
        self.skip = skip
        self.route = Route(EXCHANGE)
        self.label = PRIMARY
        self.routes = RouteRecord()
        self._label_since = 0.0
        self._last_good: tuple[datetime, Decimal] | None = None
        # The markets' checks: every exchange on the same cadence, phases spread. They are
        # computed when read (a check is a function of its time), not scheduled: the world's
        # own events and draws stay exactly those of the same run without failover.
        phases = random.Random(seed + 1)
        self._phase = {
            name: phases.uniform(0, self.verify_interval) if i else 0.5
            for i, name in enumerate((EXCHANGE, *self.specs))
        }
        self._checks: dict[str, list[Market]] = {name: [] for name in self._phase}

    @property
    def markets(self) -> dict[str, Market]:
        """Each exchange's row of exchange_verifications now: its latest check."""
        found = {}
        for name in self._phase:
            market = self._latest(name, self.now)
            if market is not None:
                found[name] = market
        return found

    def _latest(self, name: str, t: float) -> Market | None:
        index = math.floor((t - self._phase[name]) / self.verify_interval)
        checks = self._checks[name]
        while len(checks) <= index:  # in time order, so a failed one keeps the last pass
            when = self._phase[name] + len(checks) * self.verify_interval
            previous = checks[-1] if checks else None
            checks.append(self._check_at(name, when, previous))
        return checks[index] if index >= 0 else None

    def _check_at(self, name: str, t: float, previous: Market | None) -> Market:
        market = (self._primary_check(t, previous) if name == EXCHANGE
                  else self._secondary_check(self.specs[name], t, previous))  # fmt: skip
        if name == EXCHANGE and market.best_bid and market.best_ask:
            self._last_good = (market.checked_at, (market.best_bid + market.best_ask) / 2)
        return market

    def _primary_check(self, t: float, old: Market | None) -> Market:
        down = any(k in self.at_time(t) for k in (Kind.OUTAGE, Kind.HANG, Kind.MAINTENANCE))
        if down:  # a failed check keeps the last passing one's time, and reads no quote
            return Market(EXCHANGE, at(t), False, old.verified_at if old else None)
        return Market(EXCHANGE, at(t), True, at(t), PRICE - SPREAD, PRICE + SPREAD)

    def _secondary_check(self, spec: SecondarySpec, t: float, old: Market | None) -> Market:
        active = {f.kind: f for f in spec.faults if f.active(t)}
        if SecondaryKind.DOWN in active:
            return Market(spec.name, at(t), False, old.verified_at if old else None)
        up = Decimal(str(active[SecondaryKind.SPIKE].size)) if SecondaryKind.SPIKE in active else 0
        ask = (PRICE + SPREAD) * (1 + up)
        depth = spec.depth_btc
        if SecondaryKind.THIN in active:
            depth = Decimal(str(active[SecondaryKind.THIN].size))
        balance = spec.balance
        if SecondaryKind.BROKE in active:
            balance = Decimal(str(active[SecondaryKind.BROKE].size))
        bid = (PRICE - SPREAD) * (1 + up)
        return Market(spec.name, at(t), True, at(t), bid, ask, ((ask, depth),), balance)

    # -- the executor's routing step, after each decision --

    def _decide(
        self, replica: Any, event: decisions.Event
    ) -> decisions.Decision:  # the World's, then the route
        decision = super()._decide(replica, event)
        self._route_step()
        return decision

    def _view(self) -> RouteView:
        c, markets = self.controls, self.markets
        secondaries = tuple(Secondary(n, markets.get(n)) for n in self.specs)
        return RouteView(
            phase=self.incident.phase, paused=c.paused,
            held=c.pause_hold or self.held_breaker, primary_market=markets.get(EXCHANGE),
            secondaries=secondaries, waiting_aud=self.waiting,
        )  # fmt: skip

    def _route_step(self) -> None:
        idle = self.route.routed_to is None and self.route.blocked_guard is None
        if self.incident.phase == NORMAL and idle and self.route.override is None:
            label = PRIMARY if not self.controls.paused else NONE
            self.route = remember(self.route, self._latest(EXCHANGE, self.now))
        else:
            decided = route(self.route, self._view(), at(self.now), self.policy)
            for effect in decided.effects:
                if isinstance(effect, fx.MakeRetriesDue):
                    self.controls.retries_due += 1
            self._check(decided)
            self.route, label = decided.route, decided.label
            if decided.route.blocked_guard is not None:
                self.routes.blocked.append((self.now, decided.route.blocked_guard))
        if label != self.label:
            if self.label not in (PRIMARY, NONE):
                self.routes.routed_seconds += self.now - self._label_since
            self._label_since = self.now
            self.label = label
            self.routes.changes.append((self.now, label))

    def finish_routes(self) -> None:
        if self.label not in (PRIMARY, NONE):
            self.routes.routed_seconds += self.now - self._label_since
            self._label_since = self.now

    # -- failover's invariants, in the checker's own arithmetic --

    def _fail(self, name: str, detail: str) -> None:
        if name not in self.skip:
            raise Violation(name, self.now, detail, self)

    def _check(self, decided: RouteDecision) -> None:
        label, p = decided.label, self.policy
        c = self.controls
        if (c.pause_hold or self.held_breaker) and label not in (NONE, PRIMARY):
            self._fail("hold_wins_route", f"routed to {label} under an admin hold")
        if label in (PRIMARY, NONE):
            # Back from a secondary: only once the incident closed (verified, probation).
            back = label == PRIMARY and self.label not in (PRIMARY, NONE)
            if back and (self.invariants.phase != NORMAL or c.paused):
                self._fail("back_only_after_probation", f"back on {EXCHANGE} in phase "
                           f"{self.invariants.phase}, paused={c.paused}")  # fmt: skip
            return
        m = self.markets.get(label)
        now = at(self.now)
        if m is None or not m.ok or m.verified_at is None:
            self._fail("routed_only_when_healthy", f"routed to {label}: its last check failed")
            return
        age = (now - m.verified_at).total_seconds()
        if age > p.verified_within:
            self._fail("routed_only_when_healthy", f"routed to {label} verified {age:.0f} s ago")
        if m.balance_aud is None or m.balance_aud < self.waiting:
            self._fail("routed_only_when_healthy", f"routed to {label}: balance {m.balance_aud}")
        ref = self._reference()
        if ref is None or m.best_ask is None:
            self._fail("routed_only_when_healthy", f"routed to {label} with no reference")
            return
        if abs(m.best_ask / ref - 1) > p.max_price_deviation:
            self._fail("routed_only_when_healthy", f"routed to {label}: ask {m.best_ask}, "
                       f"reference {ref}")  # fmt: skip
        fill = sum((a * v for a, v in m.asks if a <= ref * (1 + p.max_price_deviation)), Decimal(0))
        if fill < self.waiting:
            self._fail("routed_only_when_healthy", f"routed to {label}: depth {fill} AUD")

    def _reference(self) -> Decimal | None:
        now, age = at(self.now), self.policy.reference_max_age
        k = self.markets.get(EXCHANGE)
        if k and k.best_bid and k.best_ask and (now - k.checked_at).total_seconds() <= age:
            return (k.best_bid + k.best_ask) / 2
        # The primary's last good mid, as the checker itself saw it.
        good = self._last_good
        if good is not None and (now - good[0]).total_seconds() <= age:
            return good[1]
        mids = [
            (m.best_bid + m.best_ask) / 2
            for n, m in self.markets.items()
            if n != EXCHANGE and m.best_bid and m.best_ask
            and (now - m.checked_at).total_seconds() <= age
        ]  # fmt: skip
        if len(mids) < self.policy.reference_min_sources:
            return None
        return Decimal(statistics.median(mids))

    # -- what the scenarios measure --

    def first_route_after(self, t: float, label: str | None = None) -> float | None:
        for when, to in self.routes.changes:
            if when >= t and to not in (PRIMARY, NONE) and (label is None or to == label):
                return when
        return None

    def returns(self) -> list[float]:
        """When purchases came back to the primary from a secondary."""
        out, previous = [], PRIMARY
        for when, to in self.routes.changes:
            if to == PRIMARY and previous not in (PRIMARY, NONE):
                out.append(when)
            previous = to
        return out


def simulate_failover(
    params: Params, faults: list[Fault], seed: int, horizon: float, **options: Any
) -> FailoverWorld:
    world = FailoverWorld(params, faults, seed, **options)
    world.run(horizon)
    world.finish_routes()
    return world
