"""Failover as a decision: where the primary exchange's purchases go, on evidence. Pure.

    route(current, view, now, policy) -> RouteDecision(route', effects)

It runs beside `decide` (decision.py), in the same executor transaction, on the incident the
decision just produced: while the primary's incident stops purchases, they are routed to the
first secondary that is healthy; otherwise they wait (today's pause). Healthy means, for the AUD
waiting (the stopped exchange's pending and queued purchases):

- `unverified`: its latest recovery check passed within `verified_within` (and its own
  incident, pause and breaker let it buy: `secondary_stopped`);
- `balance`: its AUD balance (read-only key) covers the AUD waiting;
- `price`: its best ask within `max_price_deviation` of the reference price: the primary's last
  good mid while younger than `reference_max_age`, else the median mid of the configured
  exchanges whose quotes are that recent (`no_reference` below `reference_min_sources`);
- `depth`: the asks within that deviation cover the AUD waiting.

Rules: routed purchases stay on the secondary while the primary's incident is open (down, or
on probation after its verified recovery: a flapping primary never reaches normal, so it stays
routed) and come back once the incident closes. A secondary that fails a guard stops the route:
purchases wait. An admin may force a secondary (`override` = its name: routed even while the
primary is fine, still guarded; a blocked force falls back to the primary when it may buy) or
forbid routing (`override` = `none`); an admin hold on the primary's pause or breaker wins over
both: purchases wait. A route that holds keeps its secondary while it stays healthy (no swapping
between secondaries on every decision).

The route's `valid_until` is the secondary's last passing check plus `verified_within`: the gate
stops routing after it even if no decision runs (every replica gone), so a stale route never
sends a purchase to an exchange nobody verified.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from exporter.labels import ROUTE_GUARDS
from exporter.runbook.incident.effects import (
    INFO,
    WARNING,
    Audit,
    Effect,
    Log,
    MakeRetriesDue,
    SetRoute,
)
from exporter.runbook.incident.state import NORMAL, Route

PRIMARY, NONE, AUTO = "primary", "none", "auto"

# The guards that block a route: the closed label set of liquid_abt_purchase_route_blocked.
GUARDS = ROUTE_GUARDS


@dataclass(frozen=True)
class Market:
    """An exchange's latest recovery check (liquid_abt.exchange_verifications), as read."""

    exchange: str
    checked_at: datetime
    ok: bool
    verified_at: datetime | None = None
    best_bid: Decimal | None = None
    best_ask: Decimal | None = None
    asks: tuple[tuple[Decimal, Decimal], ...] = ()
    balance_aud: Decimal | None = None

    @property
    def mid(self) -> Decimal | None:
        if self.best_bid is None or self.best_ask is None:
            return None
        return (self.best_bid + self.best_ask) / 2


@dataclass(frozen=True)
class Secondary:
    """A secondary as failover sees it: its latest check, and whether its own controls stop it
    (its incident open, its purchases paused, its breaker open)."""

    name: str
    market: Market | None = None
    stopped: bool = False


@dataclass(frozen=True)
class RouteView:
    """Everything a routing decision reads, at one instant."""

    phase: str = NORMAL  # the primary's incident phase, after this decision
    paused: bool = False  # the primary's purchases paused
    held: bool = False  # an admin holds the primary's pause or breaker
    primary_market: Market | None = None
    secondaries: tuple[Secondary, ...] = ()
    waiting_aud: Decimal = Decimal(0)


@dataclass(frozen=True)
class RoutingPolicy:
    """The failover config's numbers (seconds; the deviation as a fraction)."""

    enabled: bool = False
    secondaries: tuple[str, ...] = ()
    verified_within: float = 60.0
    max_price_deviation: Decimal = Decimal("0.015")
    reference_max_age: float = 600.0
    reference_min_sources: int = 2

    @classmethod
    def from_config(cls, config: Any) -> RoutingPolicy:
        f = config.failover
        return cls(
            f.active, tuple(f.secondaries), f.verified_within,
            Decimal(str(f.max_price_deviation)), f.reference_max_age, f.reference_min_sources,
        )  # fmt: skip


@dataclass(frozen=True)
class Reference:
    price: Decimal
    source: str  # "<primary> mid" or "median of a, b"


@dataclass(frozen=True)
class RouteDecision:
    route: Route
    effects: tuple[Effect, ...]
    label: str  # primary, a secondary's name, or none: the liquid_abt_purchase_route series
    evidence: dict[str, Any]


def remember(current: Route, primary: Market | None) -> Route:
    """Keep the primary's newest good mid on the route: its failing checks carry no quote, and
    the reference must outlive them (run on every decision, routed or not)."""
    if primary is None or primary.mid is None:
        return current
    if current.reference_at is not None and primary.checked_at <= current.reference_at:
        return current
    return replace(current, reference_mid=primary.mid, reference_at=primary.checked_at)


def reference(
    view: RouteView, now: datetime, policy: RoutingPolicy, current: Route | None = None
) -> Reference | None:
    """The primary's last good mid while recent; else the median of the recent mids."""
    age = timedelta(seconds=policy.reference_max_age)
    primary = view.primary_market
    if primary is not None and primary.mid is not None and now - primary.checked_at <= age:
        return Reference(primary.mid, f"{primary.exchange} mid")
    kept = current
    if kept and kept.reference_mid and kept.reference_at and now - kept.reference_at <= age:
        seen = (now - kept.reference_at).total_seconds()
        return Reference(kept.reference_mid, f"{kept.exchange} last good mid, {seen:.0f} s old")
    markets = [s.market for s in view.secondaries if s.market is not None]
    recent = [m for m in markets if m.mid is not None and now - m.checked_at <= age]
    if len(recent) < policy.reference_min_sources:
        return None
    mids = [m.mid for m in recent if m.mid is not None]
    names = ", ".join(m.exchange for m in recent)
    return Reference(Decimal(statistics.median(mids)), f"median of {names}")


def depth_within(market: Market, limit: Decimal) -> Decimal:
    """AUD the asks at or below `limit` would fill."""
    return sum((price * volume for price, volume in market.asks if price <= limit), Decimal(0))


def guard(
    secondary: Secondary, ref: Reference | None, waiting: Decimal, now: datetime,
    policy: RoutingPolicy,
) -> tuple[str | None, str]:  # fmt: skip
    """The first guard the secondary trips (None: healthy), and the evidence in words."""
    name, market = secondary.name, secondary.market
    if secondary.stopped:
        return "secondary_stopped", f"{name}'s own incident, pause or breaker stops it"
    fresh = timedelta(seconds=policy.verified_within)
    if market is None or market.verified_at is None:
        return "unverified", f"{name} was never verified"
    if not market.ok or now - market.verified_at > fresh:
        age = (now - market.verified_at).total_seconds()
        failed = "its latest check failed; " if not market.ok else ""
        return "unverified", (
            f"{name}: {failed}last verified {age:.0f} s ago (within "
            f"{policy.verified_within:g} s required)"
        )
    if market.balance_aud is None or market.balance_aud < waiting:
        have = "unknown" if market.balance_aud is None else f"{market.balance_aud} AUD"
        return "balance", f"{name} balance {have}, {waiting} AUD waiting"
    if ref is None:
        return "no_reference", (
            f"no reference price: no recent primary mid, fewer than "
            f"{policy.reference_min_sources} recent quotes"
        )
    deviation = policy.max_price_deviation
    if market.best_ask is None:
        return "price", f"{name} has no best ask"
    off = abs(market.best_ask - ref.price) / ref.price
    if off > deviation:
        return "price", (
            f"{name} best ask {market.best_ask} is {off:.2%} from the reference {ref.price:.2f} "
            f"({ref.source}; at most {deviation:.2%})"
        )
    covered = depth_within(market, ref.price * (1 + deviation))
    if covered < waiting:
        return "depth", (
            f"{name} asks within {deviation:.2%} of {ref.price:.2f} fill {covered:.2f} AUD, "
            f"{waiting} AUD waiting"
        )
    return None, (
        f"{name} verified {(now - market.verified_at).total_seconds():.0f} s ago, best ask "
        f"{market.best_ask} ({off:.2%} from {ref.price:.2f}, {ref.source}), balance "
        f"{market.balance_aud} AUD and depth {covered:.2f} AUD for {waiting} AUD waiting"
    )


def route(current: Route, view: RouteView, now: datetime, policy: RoutingPolicy) -> RouteDecision:
    """The route of the primary's purchases; see the module docstring."""
    current = remember(current, view.primary_market)
    primary_may_buy = view.phase == NORMAL and not view.paused
    stopped = view.phase != NORMAL
    ref = reference(view, now, policy, current)
    evidence: dict[str, Any] = {
        "phase": view.phase, "paused": view.paused, "held": view.held,
        "waiting_aud": str(view.waiting_aud), "override": current.override,
        "reference": None if ref is None else {"price": str(ref.price), "source": ref.source},
    }  # fmt: skip
    forced = current.override not in (None, NONE)
    target: Secondary | None = None
    blocked: str | None = None
    why = ""
    if not policy.enabled:
        why = "failover is not configured"
    elif view.held:
        blocked, why = (
            ("admin_hold", "an admin holds the primary's purchases")
            if stopped or forced or view.paused
            else (None, "")
        )
    elif current.override == NONE:
        if stopped:
            blocked, why = "admin_forbids", "an admin forbids routing"
    elif forced or stopped:
        target, blocked, why, checks = _choose(current, view, ref, now, policy)
        evidence["secondaries"] = checks
    label = target.name if target else (PRIMARY if primary_may_buy else NONE)
    if target is None and not why:
        why = "the primary may buy" if primary_may_buy else "purchases wait"
    effects = _effects(current, view, target, blocked, why, label, now, evidence, policy)
    routed_to = target.name if target else None
    until = None
    if target is not None and target.market is not None and target.market.verified_at:
        until = target.market.verified_at + timedelta(seconds=policy.verified_within)
    changed = routed_to != current.routed_to
    new = replace(
        current, routed_to=routed_to, since=now if changed else current.since,
        valid_until=until, reason=why, blocked_guard=blocked,
        failovers=current.failovers + (1 if changed and routed_to else 0),
    )  # fmt: skip
    return RouteDecision(new, effects, label, evidence)


def _choose(
    current: Route, view: RouteView, ref: Reference | None, now: datetime, policy: RoutingPolicy
) -> tuple[Secondary | None, str | None, str, list[dict[str, Any]]]:
    """The secondary to route to (a forced one, else the current one while healthy, else the
    first healthy by preference), or the guard of the first that was refused."""
    known = {s.name: s for s in view.secondaries}
    if current.override not in (None, NONE):
        names = [current.override]
    else:
        names = list(policy.secondaries)
        if current.routed_to in names:  # sticky while healthy
            names.remove(current.routed_to)
            names.insert(0, current.routed_to)
    checks: list[dict[str, Any]] = []
    first: tuple[str, str] | None = None
    for name in names:
        secondary = known.get(name, Secondary(name))
        tripped, words = guard(secondary, ref, view.waiting_aud, now, policy)
        checks.append({"exchange": name, "guard": tripped, "evidence": words})
        if tripped is None:
            return secondary, None, words, checks
        first = first or (tripped, words)
    assert first is not None
    return None, first[0], first[1], checks


def _effects(
    current: Route, view: RouteView, target: Secondary | None, blocked: str | None, why: str,
    label: str, now: datetime, evidence: dict[str, Any], policy: RoutingPolicy,
) -> tuple[Effect, ...]:  # fmt: skip
    """Audit and log a change of route or of the guard that blocks one; a route that holds only
    refreshes its validity (SetRoute, no audit)."""
    routed_to = target.name if target else None
    changed = routed_to != current.routed_to
    new_block = blocked != current.blocked_guard
    if not changed and not new_block:
        if routed_to is not None:
            return (SetRoute(routed_to, why, blocked, audited=False),)
        return ()
    detail = {**evidence, "route": label, "blocked_guard": blocked}
    if routed_to is not None:
        words = f"purchases routed from {current.exchange} to {routed_to}: {why}"
        if not changed:
            words = f"purchases stay on {routed_to}: {why}"
        action, level = "route_purchases", WARNING
    elif current.routed_to is not None:
        words = f"purchases no longer routed to {current.routed_to} ({label}): {why}"
        action, level = "route_purchases", (WARNING if label == NONE else INFO)
    elif blocked is not None:
        words = f"purchases not routed ({label}): {blocked}: {why}"
        action, level = "route_blocked", WARNING
    else:
        words = f"purchases not routed ({label}): {why}"
        action, level = "route_cleared", INFO
    effects: list[Effect] = [
        SetRoute(routed_to, words, blocked),
        Audit(action, words, detail=detail),
        Log(level, words, {"route": label, "blocked_guard": blocked, "evidence": why}),
    ]
    if routed_to is not None and changed:
        effects.append(MakeRetriesDue(words))  # queued retries follow the route
    return tuple(effects)
