"""Issue 10's incidents as scenarios: what each does to the exchange and what it must lead to."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ..stack import (
    DeadlinePassed,
    ExporterProcess,
    KrakenServerProcess,
    SecondaryExchangeProcess,
    Stack,
    http_request,
    wait_until,
)
from .timeline import (
    BACK_ON_PRIMARY,
    PROBATION_OVER,
    ROUTE_WAIT,
    Timeline,
    bought_on,
    routed_to,
)
from .timing import EXCHANGE as EXCHANGE_NAME
from .timing import Timing

# ---- scenarios --------------------------------------------------------------------------------


@dataclass
class Drill:
    """A running stack a scenario acts on."""

    timing: Timing
    stack: Stack
    kraken: KrakenServerProcess
    exporters: list[ExporterProcess]
    timeline: Timeline
    restart: Callable[[int], Awaitable[None]]
    # The scenario's fake secondaries by exchange: set_mode(), set_market(balances=...).
    secondaries: dict[str, SecondaryExchangeProcess] = field(default_factory=dict)

    async def hold(self, shipped_seconds: float) -> None:
        """Let the scenario's time pass (its choreography, not a wait for a result)."""
        await asyncio.sleep(self.timing.s(shipped_seconds))

    def fault(self, mode: str, text: str, **faults: Any) -> None:
        self.set(mode, **faults)
        if not self.timeline.t0:
            self.timeline.t0, self.timeline.t0_wall = time.monotonic(), time.time()
        self.timeline.mark(text)

    def set(self, mode: str, **faults: Any) -> None:
        self.kraken.set_mode(mode)
        status, text = http_request(f"{self.kraken.control_url}/_control/faults", faults)
        if status != 200:
            raise RuntimeError(f"faults {faults}: HTTP {status}: {text}")

    def heal(self, text: str = "Kraken healthy again") -> None:
        self.set("healthy")
        self.timeline.fix(text)

    async def wait_for(self, what: str, shipped_timeout: float) -> None:
        """Until `what` appears in the timeline; past the deadline the scenario goes on and its
        expectations say what never happened."""
        await self.wait_until(lambda: what in self.timeline.first, what, shipped_timeout)

    async def wait_until(self, done: Callable[[], bool], what: str, shipped_timeout: float) -> None:
        """Until `done()` holds of the timeline, as `wait_for`."""

        async def seen() -> bool:
            return done()

        with contextlib.suppress(DeadlinePassed):
            await wait_until(seen, timeout=self.timing.s(shipped_timeout) + 5,
                             interval=max(0.05, self.timing.s(0.5)), what=what)  # fmt: skip


Expectation = Callable[[Timeline], list[str]]


@dataclass(frozen=True)
class Scenario:
    name: str
    case: str  # the case it replays
    act: Callable[[Drill], Awaitable[None]]
    expect: Expectation
    replicas: int = 2
    bad_network_replica: bool = False  # the first replica probes an address that refuses
    # Fake secondary exchanges started beside Kraken and configured `role: secondary`
    # (independentreserve, btcmarkets); the scenario reaches them as `drill.secondaries[name]`.
    secondaries: tuple[str, ...] = ()
    # The figures `make drill` prints under the timeline (shipped seconds against the targets).
    figures: Callable[[Timeline], list[str]] | None = None


def within(timeline: Timeline, what: str, seconds: float) -> list[str]:
    at = timeline.first.get(what)
    if at is None:
        return [f"{what}: never"]
    return [] if at <= seconds else [f"{what} at {at}s, later than {seconds}s"]


def never(timeline: Timeline, what: str) -> list[str]:
    at = timeline.first.get(what)
    return [] if at is None else [f"{what} at {at}s: it should not happen"]


def pages_exactly(timeline: Timeline, expected: dict[str, int]) -> list[str]:
    got = timeline.paged()
    return [] if got == expected else [f"pages {got}, expected {expected}"]


# Replays of issue 10's cases (its "What was seen" list), with the shipped timers scaled.


async def _refused(d: Drill) -> None:
    await d.hold(60)
    d.fault("down", "Kraken refuses connections")
    await d.wait_for("retries queued", 180)
    await d.hold(240)
    d.heal()
    await d.wait_for("purchases resumed", 400)
    await d.hold(120)


def _refused_expect(t: Timeline) -> list[str]:
    problems = within(t, "purchases stopped (paused or breaker open)", 60)
    problems += within(t, "retries queued", 120)
    page = t.first_page()
    if page is None or page[1] != "ExchangeApiDown" or page[0] > 120:
        problems.append(f"first page {page}: expected ExchangeApiDown within 120s")
    problems += pages_exactly(t, {"ExchangeApiDown": 1})
    problems += within(t, "purchases resumed", 240 + 300)
    if t.last.get("transitions") != 3:  # CLOSED->OPEN, OPEN->HALF_OPEN, HALF_OPEN->CLOSED
        problems.append(f"{t.last.get('transitions')} breaker transitions, expected 3")
    if t.webhook_latency is None or t.webhook_latency > 15:
        problems.append(f"Prometheus firing -> webhook took {t.webhook_latency}s (over 15s)")
    other = {r: n for r, n in t.reasons.items() if r == "other"}
    if other:
        problems.append(f"failures classified as other: {other}")
    return problems


async def _crossed_book(d: Drill) -> None:
    await d.hold(60)
    d.fault("down", "Kraken refuses connections")
    await d.wait_for("retries queued", 180)
    await d.hold(60)
    d.set("healthy", crossed_book=True)
    d.timeline.mark("Kraken answers again, but its order book is crossed (bid above ask)")
    await d.hold(240)
    d.set("healthy")
    d.timeline.fix("order book sane again")
    await d.wait_for("purchases resumed", 400)


def _crossed_book_expect(t: Timeline) -> list[str]:
    sane = _mark(t, "order book sane again")
    problems = []
    closed = [at for at, text in t.decisions if text.endswith("HALF_OPEN -> CLOSED")]
    if sane is None or any(at < sane for at in closed):
        problems.append(f"the breaker closed at {closed} before the order book was sane ({sane})")
    failures = [at for at, text in t.decisions if text == "verify_recovery failure"]
    if not failures:
        problems.append("no recovery verification failed on the crossed book")
    resumed = t.first.get("purchases resumed")
    if resumed is None or sane is None or resumed < sane:
        problems.append(f"purchases resumed at {resumed}, the book was sane at {sane}")
    return problems + pages_exactly(t, {"ExchangeApiDown": 1})


async def _flapping(d: Drill) -> None:
    await d.hold(60)
    d.fault("down", "Kraken flaps: down 20s, up 40s, for 10 minutes")
    for _ in range(10):
        d.set("down")
        await d.hold(20)
        d.set("healthy")
        await d.hold(40)
    d.timeline.fix("flapping stops")
    await d.wait_for("purchases resumed", 900)
    await d.hold(60)


def _flapping_expect(t: Timeline) -> list[str]:
    problems = []
    problems += t.at_most_one_pause()
    resumed = t.first.get("purchases resumed")
    if resumed is not None and resumed < 600:
        problems.append(f"purchases resumed at {resumed}s, while it still flapped")
    if t.retries_tried_before_resume:
        problems.append(f"{t.retries_tried_before_resume} retries spent while it flapped")
    # The outage pages, once: as ExchangeApiDown when a down window happens to be long enough
    # for its evidence and `for`, otherwise as ExchangeApiFlapping after three of them.
    outage_pages = {"ExchangeApiDown", "ExchangeApiFlapping"} & set(t.paged())
    if len(outage_pages) != 1:
        problems.append(f"pages {t.paged()}: expected ExchangeApiDown or ExchangeApiFlapping")
    # The purchases failed before the exporter noticed may page too, once.
    problems += only_pages(t, {*outage_pages, "BitcoinPurchaseFailureRateHigh"})
    repeated = {name: n for name, n in t.paged().items() if n > 1}
    if repeated:
        problems.append(f"paged again: {repeated}")
    return problems


async def _sporadic(d: Drill) -> None:
    await d.hold(60)
    d.fault("healthy", "4% of requests hang, 10% are rate limited", hang_ratio=0.04,
            rate_limit_ratio=0.1)  # fmt: skip
    await d.hold(600)
    d.heal()
    await d.hold(60)


def _quiet_expect(t: Timeline) -> list[str]:
    problems = never(t, "purchases stopped (paused or breaker open)")
    problems += pages_exactly(t, {})
    if t.last.get("transitions"):
        problems.append(f"{t.last['transitions']} breaker transitions, expected none")
    return problems


def _sporadic_expect(t: Timeline) -> list[str]:
    """Sporadic failures never stop the business nor page "API down". (14 % of purchases do
    fail, so the runbook's failure-rate or rate-limit page is right: that is for a person.)"""
    problems = never(t, "purchases stopped (paused or breaker open)")
    if "ExchangeApiDown" in t.paged():
        problems.append(f"pages {t.paged()}: ExchangeApiDown while the API answered")
    if t.last.get("transitions"):
        problems.append(f"{t.last['transitions']} breaker transitions, expected none")
    return problems


async def _rate_limited(d: Drill) -> None:
    await d.hold(60)
    d.fault("rate_limited", "every call rate limited (EAPI:Rate limit exceeded)")
    await d.hold(180)
    d.heal("rate limiting stops")
    await d.wait_for("API rate restored", 120)
    await d.hold(30)


def only_pages(timeline: Timeline, allowed: set[str]) -> list[str]:
    other = {name: n for name, n in timeline.paged().items() if name not in allowed}
    return (
        [f"paged {other}, which is not the cause ({', '.join(sorted(allowed)) or 'none'})"]
        if other
        else []
    )


def _rate_limited_expect(t: Timeline) -> list[str]:
    problems = never(t, "purchases stopped (paused or breaker open)")
    problems += only_pages(t, {"ExchangeApiRateLimited"})
    if t.last.get("transitions"):
        problems.append(f"{t.last['transitions']} breaker transitions, expected none")
    problems += within(t, "API rate lowered", 60)
    lowered, restored = t.first.get("API rate lowered"), t.first.get("API rate restored")
    if restored is None or lowered is None or restored > 180 + 60:
        problems.append(f"API rate restored at {restored}s, expected within 60s of 180s")
    return problems


async def _maintenance(d: Drill) -> None:
    await d.hold(60)
    d.fault("maintenance", "Kraken in maintenance (status maintenance)")
    await d.wait_for("purchases stopped (paused or breaker open)", 120)
    await d.hold(180)
    d.heal("maintenance over")
    await d.wait_for("purchases resumed", 400)


def _maintenance_expect(t: Timeline) -> list[str]:
    problems = within(t, "purchases stopped (paused or breaker open)", 60)
    problems += pages_exactly(t, {"ExchangeMaintenance": 1})
    problems += within(t, "purchases resumed", 180 + 300)
    return problems


async def _invalid_key(d: Drill) -> None:
    await d.hold(60)
    d.fault("invalid_key", "Kraken refuses our key (EAPI:Invalid key on private calls)")
    await d.hold(300)
    d.heal("a valid key again")
    await d.hold(60)


def _invalid_key_expect(t: Timeline) -> list[str]:
    return pages_exactly(t, {"ExchangeApiAuthFailures": 1}) + never(
        t, "purchases stopped (paused or breaker open)"
    )


async def _restart(d: Drill) -> None:
    await d.hold(60)
    d.fault("down", "Kraken refuses connections")
    await d.wait_for("retries queued", 180)
    await d.hold(30)
    d.timeline.mark("every exporter killed; restarted 31s later")
    await d.restart(31)
    d.timeline.mark("every exporter back")
    await d.hold(120)
    d.heal()
    await d.wait_for("purchases resumed", 400)


def _mark(t: Timeline, text: str) -> float | None:
    return next((at for at, said in t.marks if said == text), None)


def _restart_expect(t: Timeline) -> list[str]:
    killed, back = (
        _mark(t, "every exporter killed; restarted 31s later"),
        _mark(t, "every exporter back"),
    )
    healed = _mark(t, "Kraken healthy again")
    expected = {"ExchangeApiDown": 1}
    if killed is not None and back is not None and back - killed >= 120:
        # Starting a process takes the same seconds at any scale: when the restart itself took
        # over 2 shipped minutes, LiquidAbtExporterDown is right to page.
        expected["LiquidAbtExporterDown"] = 1
    problems = pages_exactly(t, expected)
    early = [name for at, name, s in t.pages
             if s == "resolved" and name == "ExchangeApiDown" and (healed is None or t.at(at) < healed)]  # fmt: skip
    if early:
        problems.append(f"ExchangeApiDown resolved while Kraken was down ({len(early)} times)")
    return problems + within(t, "purchases resumed", (healed or 240) + 300)


async def _isolated(d: Drill) -> None:
    await d.hold(60)
    d.fault("healthy", "replica 1 cannot reach Kraken; replica 2 can")
    await d.hold(240)


def _isolated_expect(t: Timeline) -> list[str]:
    problems = _quiet_expect(t)
    if not t.isolated_seen:
        problems.append("replica 1 never said it was isolated (liquid_abt_exchange_isolated)")
    return problems


# ---- failover (issue 22): Kraken down with a verified secondary ---------------------------------

SECONDARY = "independentreserve"
STOPPED = "purchases stopped (paused or breaker open)"


def _closed(t: Timeline) -> float | None:
    """When Kraken's incident closed (its probation over), from the audit log."""
    return next((at for at, text in t.decisions if text.startswith("incident_closed")), None)


def _delta(later: float | None, earlier: float | None) -> float | None:
    return None if later is None or earlier is None else round(later - earlier, 1)


def _failover_numbers(t: Timeline) -> dict[str, float | None]:
    routed = t.first.get(routed_to(SECONDARY))
    return {
        "routed after Kraken died": routed,
        "routed after purchases stopped": _delta(routed, t.first.get(STOPPED)),
        "first purchase on the secondary after Kraken died": t.first.get(bought_on(SECONDARY)),
        "back on Kraken after its probation ended": _delta(t.first.get(BACK_ON_PRIMARY),
                                                            _closed(t)),
    }  # fmt: skip


# The targets, shipped seconds.
FAILOVER_TARGETS = {
    "routed after Kraken died": 60.0,
    "routed after purchases stopped": 10.0,
    "first purchase on the secondary after Kraken died": 60.0,
    "back on Kraken after its probation ended": 30.0,
}
# The same outage without a secondary (the `refused` scenario) pages this, once.
PAGES_WITHOUT_SECONDARY = {"ExchangeApiDown": 1}


def _failover_figures(t: Timeline) -> list[str]:
    lines = []
    for what, seconds in _failover_numbers(t).items():
        got = "never" if seconds is None else f"{seconds:.1f}s"
        lines.append(f"{what}: {got} (target <= {FAILOVER_TARGETS[what]:.0f}s)")
    waits = [at for at, to in t.route_changes if to is None]
    lines.append(f"purchases bought on {SECONDARY}: {t.bought_on.get(SECONDARY, 0)} "
                 f"(failed there: {t.failed_on.get(SECONDARY, 0)}); on Kraken: "
                 f"{t.bought_on.get(EXCHANGE_NAME, 0)} (failed: {t.failed_on.get(EXCHANGE_NAME, 0)})")  # fmt: skip
    lines.append(f"the gate said wait (buy_on NULL) at: {waits or 'never'}")
    lines.append(f"pages {t.paged() or 'none'}; the same outage without a secondary pages "
                 f"{PAGES_WITHOUT_SECONDARY}")  # fmt: skip
    return lines


def _failover_expect(t: Timeline) -> list[str]:
    problems = within(t, STOPPED, 60)
    for what, seconds in _failover_numbers(t).items():
        if seconds is None:
            problems.append(f"{what}: never")
        elif seconds > FAILOVER_TARGETS[what] or seconds < 0:
            problems.append(f"{what}: {seconds}s, target {FAILOVER_TARGETS[what]}s")
    other = [to for _, to in t.route_changes if to not in (None, EXCHANGE_NAME, SECONDARY)]
    if other:
        problems.append(f"routed to {other}")
    problems += t.bought_there_unfailed(SECONDARY)
    healed = _mark(t, "Kraken healthy again")
    back = t.first.get(BACK_ON_PRIMARY)
    if back is not None and healed is not None and back < healed:
        problems.append(f"back on Kraken at {back}s, before it healed at {healed}s")
    over = t.first.get(PROBATION_OVER)
    if back is not None and over is not None and back + 2 < over:
        problems.append(f"back on Kraken at {back}s, its probation ended at {over}s")
    return problems + pages_exactly(t, PAGES_WITHOUT_SECONDARY)


def _waits_after(t: Timeline, since: float | None) -> float | None:
    """When the gate first said wait (buy_on NULL) after `since`."""
    if since is None:
        return None
    return next((at for at, to in t.route_changes if to is None and at >= since), None)


SECONDARY_FAILS = f"{SECONDARY} refuses connections too"


async def _secondary_fails(d: Drill) -> None:
    await d.hold(60)
    d.fault("down", "Kraken refuses connections")
    await d.wait_for(routed_to(SECONDARY), 120)
    await d.hold(60)
    d.secondaries[SECONDARY].set_mode("down")
    d.timeline.mark(SECONDARY_FAILS)
    failed = d.timeline.marks[-1][0]
    # Both down: Kraken stays down until purchases wait (or the expectation's 60 s are over),
    # then a minute more.
    await d.wait_until(lambda: _waits_after(d.timeline, failed) is not None,
                       "purchases wait (buy_on NULL) after the secondary failed", 60)  # fmt: skip
    await d.hold(60)
    d.heal()
    await d.wait_for("purchases resumed", 400)
    await d.hold(60)


def _secondary_fails_figures(t: Timeline) -> list[str]:
    failed = _mark(t, SECONDARY_FAILS)
    waits = _waits_after(t, failed)
    return [
        f"routed after Kraken died: {t.first.get(routed_to(SECONDARY))}s (target <= 60s)",
        f"purchases wait (buy_on NULL) {_delta(waits, failed)}s after {SECONDARY} failed "
        f"(at {failed}s)",
        f"purchases bought on {SECONDARY}: {t.bought_on.get(SECONDARY, 0)}, failed there "
        f"(while it was down and still routed): {t.failed_on.get(SECONDARY, 0)}",
        f"back on Kraken after its probation ended: "
        f"{_delta(t.first.get(BACK_ON_PRIMARY), _closed(t))}s (target <= 30s)",
        f"pages {t.paged() or 'none'}: {t.paged_by_exchange()}",
    ]


def _secondary_fails_expect(t: Timeline) -> list[str]:
    problems = within(t, routed_to(SECONDARY), 60)
    failed = _mark(t, SECONDARY_FAILS)
    waits = _waits_after(t, failed)
    # A route is followed while its secondary's last passing check is younger than
    # failover.verified_within (60 s): the longest a dead secondary can keep it.
    if waits is None or failed is None or waits - failed > 60:
        problems.append(f"purchases wait at {waits}s, {SECONDARY} failed at {failed}s")
    # It stays down to the end: a route to it after the wait is a route to a dead exchange.
    if any(to == SECONDARY for at, to in t.route_changes if waits is not None and at > waits):
        problems.append(f"routed to {SECONDARY} again while it was down: {t.route_changes}")
    closed, back = _closed(t), t.first.get(BACK_ON_PRIMARY)
    if back is None or closed is None or back + 2 < closed:
        problems.append(f"back on Kraken at {back}s, its incident closed at {closed}s")
    if t.paged_by_exchange().get(f"ExchangeApiDown {EXCHANGE_NAME}") != 1:
        problems.append(f"pages {t.paged_by_exchange()}: expected ExchangeApiDown kraken once")
    return problems + only_pages(t, {"ExchangeApiDown"})


async def _price_spike(d: Drill) -> None:
    """`refused` with the secondary quoting 5 % above Kraken from the start: its price guard
    (1.5 %) must keep purchases off it, so they wait as without a secondary."""
    d.secondaries[SECONDARY].set_mode("price_spike")
    await d.hold(60)
    d.fault("down", f"Kraken refuses connections ({SECONDARY} quotes 5 % above it all along)")
    await d.wait_for("retries queued", 180)
    await d.hold(240)
    d.heal()
    await d.wait_for("purchases resumed", 400)
    await d.hold(120)


def _price_spike_expect(t: Timeline) -> list[str]:
    problems = within(t, STOPPED, 60)
    routes = {to for _, to in t.route_changes} - {None, EXCHANGE_NAME}
    if routes:
        problems.append(f"routed to {routes} over the price guard")
    if t.bought_on.get(SECONDARY) or t.failed_on.get(SECONDARY):
        problems.append(f"purchases tried on {SECONDARY}: {t.bought_on}, {t.failed_on}")
    if ROUTE_WAIT not in t.first:
        problems.append("the gate never said wait (buy_on NULL)")
    blocked = [text for _, text in t.decisions if "blocked: price" in text]
    if not blocked:
        problems.append("no route_blocked by the price guard in the audit log")
    problems += within(t, "purchases resumed", 240 + 300)
    return problems + pages_exactly(t, PAGES_WITHOUT_SECONDARY)


def _price_spike_figures(t: Timeline) -> list[str]:
    blocked = [f"{at}s {text}" for at, text in t.decisions if text.startswith("route_")]
    return [
        f"purchases stopped {t.first.get(STOPPED)}s after Kraken died; buy_on NULL from "
        f"{t.first.get(ROUTE_WAIT)}s; routes: {sorted({str(to) for _, to in t.route_changes})}",
        f"route decisions: {blocked or 'none'}",
        f"pages {t.paged() or 'none'}; without a secondary: {PAGES_WITHOUT_SECONDARY}",
    ]


FLAPS = 5
FLAPPING_STOPS = "flapping stops"


async def _failover_flapping(d: Drill) -> None:
    """`flapping`'s pattern (down 20 s, up 40 s), for 5 minutes, beside a healthy Independent
    Reserve: each up window is shorter than recovery plus probation, so Kraken's incident never
    closes and purchases stay on the secondary until the flapping stops."""
    await d.hold(60)
    d.fault("down", f"Kraken flaps: down 20s, up 40s, for {FLAPS} minutes ({SECONDARY} healthy)")
    for _ in range(FLAPS):
        d.set("down")
        await d.hold(20)
        d.set("healthy")
        await d.hold(40)
    d.timeline.fix(FLAPPING_STOPS)
    await d.wait_for(BACK_ON_PRIMARY, 900)
    await d.hold(60)


def route_sequence(t: Timeline) -> list[str | None]:
    """The gate's buy_on from its first route to another exchange on, each change once. Before
    it, Kraken or a wait (buy_on NULL): the secondary may not be verified yet when Kraken stops
    (`within` says how soon it was routed)."""
    changes = [to for _, to in t.route_changes]
    while changes and changes[0] in (EXCHANGE_NAME, None):
        changes.pop(0)
    return changes


def _flapping_pages(t: Timeline) -> list[str]:
    """As `flapping` without a secondary: the outage pages once, as ExchangeApiDown or
    ExchangeApiFlapping (the purchases failed before the stop may page once too); never the
    secondary."""
    outage = {"ExchangeApiDown", "ExchangeApiFlapping"} & set(t.paged())
    problems = [] if len(outage) == 1 else [
        f"pages {t.paged()}: expected ExchangeApiDown or ExchangeApiFlapping"]  # fmt: skip
    problems += only_pages(t, {*outage, "BitcoinPurchaseFailureRateHigh"})
    repeated = {name: n for name, n in t.paged().items() if n > 1}
    if repeated:
        problems.append(f"paged again: {repeated}")
    secondary = [key for key in t.paged_by_exchange() if key.endswith(f" {SECONDARY}")]
    if secondary:
        problems.append(f"paged for {SECONDARY}: {secondary}")
    return problems


def _failover_flapping_expect(t: Timeline) -> list[str]:
    problems = within(t, routed_to(SECONDARY), 60)
    if route_sequence(t) != [SECONDARY, EXCHANGE_NAME]:
        problems.append(f"the gate's buy_on went {t.route_changes}: expected {SECONDARY} once, "
                        "then back on kraken once")  # fmt: skip
    stops, closed = _mark(t, FLAPPING_STOPS), _closed(t)
    back = t.first.get(BACK_ON_PRIMARY)
    if back is None or stops is None or back < stops:
        problems.append(f"back on Kraken at {back}s, the flapping stopped at {stops}s")
    if back is None or closed is None or back + 2 < closed:
        problems.append(f"back on Kraken at {back}s, its incident closed at {closed}s")
    elif back - closed > FAILOVER_TARGETS["back on Kraken after its probation ended"]:
        problems.append(f"back on Kraken {back - closed:.1f}s after its probation ended")
    problems += t.bought_there_unfailed(SECONDARY)
    problems += t.at_most_one_pause()
    return problems + _flapping_pages(t)


def _failover_flapping_figures(t: Timeline) -> list[str]:
    back, stops = t.first.get(BACK_ON_PRIMARY), _mark(t, FLAPPING_STOPS)
    changes = ", ".join(f"{to or 'NULL'} at {at}s" for at, to in t.route_changes)
    return [
        f"routed to {SECONDARY} {t.first.get(routed_to(SECONDARY))}s after the first flap "
        "(target <= 60s)",
        f"the gate's buy_on: {changes}",
        f"back on Kraken {_delta(back, stops)}s after the flapping stopped, "
        f"{_delta(back, _closed(t))}s after its probation ended (target <= 30s)",
        f"purchases bought on {SECONDARY}: {t.bought_on.get(SECONDARY, 0)} (failed there: "
        f"{t.failed_on.get(SECONDARY, 0)}); on Kraken: {t.bought_on.get(EXCHANGE_NAME, 0)} "
        f"(failed: {t.failed_on.get(EXCHANGE_NAME, 0)}); pauses {t.last.get('pauses', 0)}",
        f"pages {t.paged() or 'none'}; `flapping` without a secondary pages ExchangeApiDown or "
        "ExchangeApiFlapping, once",
    ]


SCENARIOS: dict[str, Scenario] = {s.name: s for s in [
    Scenario("refused", "1, 8, 11, 12", _refused, _refused_expect),
    Scenario("crossed-book", "2", _crossed_book, _crossed_book_expect),
    Scenario("flapping", "7", _flapping, _flapping_expect),
    Scenario("sporadic", "3", _sporadic, _sporadic_expect),
    Scenario("rate-limited", "4", _rate_limited, _rate_limited_expect),
    Scenario("maintenance", "5", _maintenance, _maintenance_expect),
    Scenario("invalid-key", "6", _invalid_key, _invalid_key_expect),
    Scenario("restart", "9", _restart, _restart_expect),
    Scenario("isolated-replica", "10", _isolated, _isolated_expect, bad_network_replica=True),
    # Issue 22: the same outage as `refused`, with a healthy Independent Reserve beside Kraken.
    Scenario("failover", "1 (issue 22)", _refused, _failover_expect, secondaries=(SECONDARY,),
             figures=_failover_figures),
    Scenario("failover-secondary-fails", "issue 22", _secondary_fails, _secondary_fails_expect,
             secondaries=(SECONDARY,), figures=_secondary_fails_figures),
    Scenario("failover-price-spike", "issue 22", _price_spike, _price_spike_expect,
             secondaries=(SECONDARY,), figures=_price_spike_figures),
    Scenario("failover-flapping", "7 (issue 22)", _failover_flapping, _failover_flapping_expect,
             secondaries=(SECONDARY,), figures=_failover_flapping_figures),
]}  # fmt: skip
