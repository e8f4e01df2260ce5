"""Customer notices over the incident simulator: the production's core decides when purchases
stop and resume (tests/simulator/), the production's planner decides the notices, and each
incident's notices are checked against the issue's targets: started within 60 s of the stop
(none for an incident shorter than notices.started_after), ongoing on every half hour ± 1 minute
and none extra, resolved within 60 s of purchases flowing again, each notice once.

The world runs up to each planner round, and the planner reads what the database would hold at
that moment: the rows of the loop's IN_VIEW_SQL (the incident periods the executor wrote, the
exchange's pause as pause.py keeps it), turned into the planner's view by the loop's own
`incident_view`, the tenants whose failed purchases are not bought yet (TENANT_FAILURES_SQL),
and what the outbox already holds. The issue's scenarios each have a test below: a blip, an
outage, maintenance with an estimate, a 2-hour outage, a restart mid-incident, failover; then
generated hours.

Pure and seeded, like the simulator: no database, no sleeping.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import pytest

from exporter.config import parse_config
from exporter.controls.notices import Notice, NoticeKey
from exporter.runbook.incident import effects as fx
from exporter.runbook.incident.routing import NONE, PRIMARY
from exporter.runbook.notices.loop import estimate_seconds, incident_view
from exporter.runbook.notices.plan import NoticePolicy, TenantImpact, plan, when
from tests.simulator import Fault, Kind, Params, World, random_timeline
from tests.simulator.failover import FailoverWorld, SecondarySpec
from tests.simulator.world import GENERATED, at

pytestmark = pytest.mark.unit

SHIPPED = Params.shipped()
CONFIG = parse_config({})
POLICY = NoticePolicy.from_config(CONFIG.notices)
TICK = CONFIG.notices.interval
FOLLOW_UP = timedelta(seconds=CONFIG.notices.follow_up)
# What the automation's own pause writes as its estimate: a placeholder, never told customers.
AUTOMATION_ESTIMATE = CONFIG.receiver.pause_estimated_duration
MARGIN = SHIPPED.probe_interval + SHIPPED.timeout  # app.probe_margin with Kraken alone
TENANTS = 3  # the platform's purchases go to these tenants in turn
IR, BM = "independentreserve", "btcmarkets"
# The targets are the issue's, not the policy's: a changed default fails here.
EVERY = timedelta(minutes=30)
MINUTE = timedelta(seconds=60)


@dataclass
class Period:
    """A row of liquid_abt.incident_periods, and when purchases stopped and flowed again."""

    id: int
    cause: str
    started_at: datetime
    stopped_at: datetime  # the executor opened it: purchases stopped
    ended_at: datetime | None = None
    # Purchases flow again: the automation's resume that closed it, or an admin's resume of the
    # hold that kept them paused past its end.
    resumed_at: datetime | None = None


@dataclass(frozen=True)
class PauseRow:
    """liquid_abt.exchange_controls while purchases are paused, as controls/pause.py keeps it."""

    paused_at: datetime
    manual_hold: bool = False
    estimated_duration: str | None = AUTOMATION_ESTIMATE


class Noticed(World):
    """The simulated world, keeping what the notice loop reads: the incident periods as the
    executor writes them, the pause row, and the platform's failed purchases until bought.

    `admin_pauses` are an operator's `admin pause kraken --estimated-duration ...` (a manual hold
    on the pause, the breaker left to the automation) from `start` to `end`, when the operator
    resumes; the simulator's own `Kind.HOLD` also forces the breaker open."""

    def __init__(
        self, *args: Any, admin_pauses: Sequence[tuple[float, float, str]] = (), **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.periods: list[Period] = []
        self.pause: PauseRow | None = None
        # (created_at, tenant, purchase id) of failed purchases not bought yet.
        self.failed: list[tuple[datetime, str, str]] = []
        self.failed_tenants: set[str] = set()  # every tenant a purchase failed for
        self._purchases = 0
        self._due_seen = 0
        self.platform_calls = _Purchases(self, self.platform_calls.maxlen)
        for start, end, estimate in admin_pauses:
            self._at(start, "admin_pause", estimate)
            self._at(end, "admin_resume")

    def routed(self) -> str | None:
        """Where the gate sends the exchange's purchases (route_store.routed_to)."""
        return None

    # -- the executor and the admin, as they write the rows the loop reads --

    def apply(self, effect: fx.Effect) -> None:
        was = self.controls.paused
        super().apply(effect)
        now = at(self.now)
        if isinstance(effect, fx.OpenPeriod):
            self.periods.append(Period(len(self.periods) + 1, effect.cause, effect.started_at, now))
        elif isinstance(effect, fx.ClosePeriod):
            for period in self.periods:
                if period.ended_at is None:
                    period.ended_at = effect.ended_at
                    # Resume comes before ClosePeriod in the same decision; a hold refuses it.
                    period.resumed_at = None if self.controls.paused else now
        self._paused(was, AUTOMATION_ESTIMATE, manual=False)

    def _on_hold(self, on: bool) -> None:
        was = self.controls.paused
        super()._on_hold(on)
        self._paused(was, None, manual=True)

    def _on_admin_pause(self, estimate: str) -> None:
        c = self.controls
        was = c.paused
        c.paused = c.pause_hold = True
        self._paused(was, estimate, manual=True)

    def _on_admin_resume(self) -> None:
        was = self.controls.paused
        self.controls.paused = self.controls.pause_hold = False
        self._paused(was, None, manual=True)

    def _paused(self, was: bool, estimate: str | None, *, manual: bool) -> None:
        """pause.py: a new pause starts the row; pausing an automatic pause by hand makes it a
        manual hold with the admin's estimate and keeps its start; a resume clears the row."""
        now, paused = at(self.now), self.controls.paused
        if paused and not was:
            self.pause = PauseRow(now, manual, estimate)
        elif paused and manual and self.pause is not None and not self.pause.manual_hold:
            self.pause = replace(self.pause, manual_hold=True, estimated_duration=estimate)
        elif was and not paused:
            self.pause = None
            for period in self.periods:
                if period.ended_at is not None and period.resumed_at is None:
                    period.resumed_at = now

    # -- the platform's purchases --

    def failed_purchase(self, created: float) -> None:
        self._purchases += 1
        tenant = f"tenant-{self._purchases % TENANTS}"
        self.failed.append((at(created), tenant, f"p{self._purchases}"))
        self.failed_tenants.add(tenant)

    def settle(self) -> None:
        """The platform buys the queued retries once they are due (MakeRetriesDue: at the
        resume, or when purchases are routed) and the gate names an exchange to buy on."""
        c = self.controls
        if c.retries_due > self._due_seen and (not c.paused or self.routed() is not None):
            self.failed.clear()
            self._due_seen = c.retries_due


class _Purchases(deque[tuple[float, str | None]]):
    """The world's log of the platform's calls, which also records each failed purchase."""

    def __init__(self, world: Noticed, maxlen: int | None) -> None:
        super().__init__((), maxlen)
        self.world = world

    def append(self, call: tuple[float, str | None]) -> None:
        super().append(call)
        if call[1] is not None:
            self.world.failed_purchase(call[0])


class NoticedFailover(Noticed, FailoverWorld):
    """Failover's world (secondaries, the routing decision after every incident decision)."""

    def routed(self) -> str | None:
        return None if self.label in (PRIMARY, NONE) else self.label


# -- what the loop reads --


def rows(world: Noticed, now: datetime, queued: dict[NoticeKey, str]) -> list[dict[str, Any]]:
    """IN_VIEW_SQL: the incidents open or closed within notices.follow_up, each with the
    exchange's pause row while purchases are paused; the latest one, closed while an operator's
    hold keeps purchases paused (`held_open`), or closed with its incident_resolved still owed
    and purchases resumed since (the audit log's resume_purchases after its end)."""
    pause = world.pause
    latest = world.periods[-1].id if world.periods else None
    found = []
    for p in world.periods:
        closed = p.ended_at is not None and p.id == latest
        held_open = bool(
            closed and pause and pause.manual_hold and p.ended_at and pause.paused_at <= p.ended_at
        )
        owed = (
            queued.get((p.id, "incident_started", 0, None)) not in (None, "cancelled")
            and (p.id, "incident_resolved", 0, None) not in queued
        )
        recent = p.ended_at is None or p.ended_at > now - FOLLOW_UP
        resumed_after = (
            p.resumed_at is not None and p.ended_at is not None and (p.resumed_at > p.ended_at)
        )
        if not (recent or held_open or (closed and owed and resumed_after)):
            continue
        found.append({
            "id": p.id, "exchange": "kraken", "cause": p.cause, "started_at": p.started_at,
            "ended_at": p.ended_at,
            "manual_hold": pause.manual_hold if pause else None,
            "paused_at": pause.paused_at if pause else None,
            "pause_estimated_duration": pause.estimated_duration if pause else None,
            "held_open": held_open,
        })  # fmt: skip
    return found


def impacts(world: Noticed, found: Iterable[dict[str, Any]], now: datetime) -> list[TenantImpact]:
    """TENANT_FAILURES_SQL: per incident and tenant, the failed purchases not bought yet, from
    `MARGIN` before the incident started to its end."""
    out = []
    for row in found:
        since = row["started_at"] - timedelta(seconds=MARGIN)
        until = row["ended_at"] or now
        tenants: dict[str, list[tuple[datetime, str]]] = {}
        for created, tenant, purchase in world.failed:
            if since <= created <= until:
                tenants.setdefault(tenant, []).append((created, purchase))
        for tenant, mine in sorted(tenants.items()):
            ids = tuple(p for _, p in sorted(mine))
            out.append(TenantImpact(row["id"], tenant, min(mine)[0], None, ids))
    return out


@dataclass(frozen=True)
class Planner:
    """One replica's notice loop: a round every TICK from `offset`; dead during `down` (a
    restart). It keeps nothing between rounds: a restarted one reads the outbox like the rest."""

    offset: float = 0.0
    down: tuple[tuple[float, float], ...] = ()

    def up(self, t: float) -> bool:
        return not any(start <= t < end for start, end in self.down)


@dataclass
class Outbox:
    """liquid_abt.customer_notices: each key once, with when it was inserted."""

    rows: dict[NoticeKey, tuple[Notice, datetime]] = field(default_factory=dict)

    def of(self, kind: str) -> list[Notice]:
        return [n for n, _ in sorted(self.rows.values(), key=lambda r: r[1]) if n.kind == kind]

    def kinds(self) -> list[str]:
        return [n.kind for n, _ in sorted(self.rows.values(), key=lambda r: r[1])]


def replay(world: Noticed, horizon: float, planners: Sequence[Planner] = (Planner(),)) -> Outbox:
    """Runs the world and the planners' rounds in time order; what one inserts the next reads."""
    rounds = sorted(
        (p.offset + k * TICK, i)
        for i, p in enumerate(planners) for k in range(int((horizon - p.offset) // TICK) + 1)
    )  # fmt: skip
    outbox = Outbox()
    for t, i in rounds:
        world.run(t)
        world.settle()
        if not planners[i].up(t):
            continue
        now = at(t)
        queued = {key: notice.state for key, (notice, _) in outbox.rows.items()}
        found = rows(world, now, queued)
        views = [incident_view(r, world.routed() if r["ended_at"] is None else None) for r in found]
        for notice in plan(views, queued, impacts(world, found, now), now, POLICY):
            assert notice.key not in outbox.rows, f"planned twice: {notice.key}"
            outbox.rows[notice.key] = (notice, now)
    world.run(horizon)
    return outbox


def check(world: Noticed, outbox: Outbox, horizon: float) -> dict[str, int]:
    """The issue's targets for every incident period; returns what was counted."""
    counted = {"periods": 0, "started": 0, "ongoing": 0, "resolved": 0, "purchase_failed": 0}
    end = at(horizon)
    for period in world.periods:
        pid, started = period.id, period.started_at
        counted["periods"] += 1
        mine = {key: sent for key, (_, sent) in outbox.rows.items() if key[0] == pid}
        counted["purchase_failed"] += sum(1 for key in mine if key[1] == "purchase_failed")
        resumed = period.resumed_at
        lasted = (resumed or end) - started
        if resumed is not None and lasted < POLICY.started_after:
            assert mine == {}, f"period {pid} lasted {lasted}: a blip tells nobody"
            continue
        if resumed is None and end - started < POLICY.started_after + timedelta(seconds=TICK):
            continue  # the run ended before it was due
        started_at = mine.get((pid, "incident_started", 0, None))
        assert started_at is not None and started_at - period.stopped_at <= MINUTE, (
            pid, started_at, period,
        )  # fmt: skip
        counted["started"] += 1
        last = resumed or end
        due = [started + n * EVERY for n in range(1, 10)]
        expected = [n for n, d in enumerate(due, start=1) if d + timedelta(seconds=TICK) <= last]
        ongoing = sorted(key[2] for key in mine if key[1] == "incident_ongoing")
        assert ongoing in (expected, [*expected, len(expected) + 1]), (pid, ongoing, expected)
        for n in ongoing:
            sent = mine[(pid, "incident_ongoing", n, None)]
            assert abs(sent - due[n - 1]) <= MINUTE, (pid, n, sent)
        counted["ongoing"] += len(ongoing)
        resolved = mine.get((pid, "incident_resolved", 0, None))
        if resumed is None:
            assert resolved is None, (
                f"period {pid}: resolved at {resolved}, purchases still stopped"
            )
            continue
        assert resolved is not None, f"period {pid}: purchases resumed at {resumed}, no resolved"
        assert timedelta(0) <= resolved - resumed <= MINUTE, (pid, resolved, resumed)
        counted["resolved"] += 1
    return counted


def simulate(
    faults: list[Fault], seed: int, horizon: float, planners: Sequence[Planner] = (Planner(),),
    **options: Any,
) -> tuple[Noticed, Outbox, dict[str, int]]:  # fmt: skip
    world = Noticed(SHIPPED, faults, seed, **options)
    outbox = replay(world, horizon, planners)
    return world, outbox, check(world, outbox, horizon)


# -- the scenarios --


def test_a_blip_in_the_simulator_tells_nobody() -> None:
    """A 3 s outage: the incident model's hysteresis stops nothing, so nobody hears of it."""
    world, outbox, counted = simulate([Fault(Kind.OUTAGE, 50.0, 53.0)], 2, 1800.0)
    assert world.record.stops == [] and outbox.rows == {}
    assert counted["periods"] == 0


def test_a_ten_minute_outage_in_the_simulator_tells_started_then_resolved() -> None:
    """Purchases stop, customers hear within a minute, and again within a minute of the resume;
    each tenant whose failed purchase waited more than notices.blip hears once."""
    world, outbox, counted = simulate([Fault(Kind.OUTAGE, 60.0, 660.0)], 1, 1800.0)
    assert counted == {"periods": 1, "started": 1, "ongoing": 0, "resolved": 1,
                       "purchase_failed": TENANTS}  # fmt: skip
    assert outbox.kinds()[0] == "incident_started" and outbox.kinds()[-1] == "incident_resolved"
    (started,) = outbox.of("incident_started")
    assert started.message.startswith("We are experiencing temporary issues with Bitcoin")
    assert started.context["cause"] == "unavailable"
    for notice in outbox.of("purchase_failed"):
        assert "(as soon as purchases resume)" in notice.message


def test_a_two_hour_outage_in_the_simulator_tells_customers_on_time() -> None:
    world, outbox, counted = simulate([Fault(Kind.OUTAGE, 60.0, 60.0 + 2 * 3600)], 1, 3 * 3600.0)
    assert counted == {"periods": 1, "started": 1, "ongoing": 4, "resolved": 1,
                       "purchase_failed": TENANTS}  # fmt: skip
    for notice in outbox.of("incident_ongoing"):
        assert notice.message.endswith("Estimated resolution: unknown")


def test_maintenance_with_an_estimate_in_the_simulator_names_the_time_until_it_passes() -> None:
    """Kraken goes into maintenance; the automation stops purchases; an operator holds them with
    an estimate of 40 minutes. Kraken overruns: the first ongoing names the estimated time, the
    second (the estimate passed) says unknown. Kraken comes back and the incident closes, while
    the operator's hold keeps purchases paused for 20 minutes more: customers are told it is
    resolved when purchases flow, not before."""
    horizon = 7200.0
    world = Noticed(SHIPPED, [Fault(Kind.MAINTENANCE, 300.0, 4000.0)], 3,
                    admin_pauses=[(600.0, 5400.0, "40 minutes")])  # fmt: skip
    outbox = replay(world, horizon)
    counted = check(world, outbox, horizon)
    assert counted == {"periods": 1, "started": 1, "ongoing": 2, "resolved": 1,
                       "purchase_failed": TENANTS}  # fmt: skip
    (period,) = world.periods
    assert period.cause == "maintenance"
    assert period.ended_at is not None and period.resumed_at == at(5400.0)
    (started,) = outbox.of("incident_started")
    # Before the operator's estimate, the automation's own placeholder is not an estimate.
    assert started.context["estimatedResolution"] is None
    assert started.context["cause"] == "maintenance"
    first, second = outbox.of("incident_ongoing")
    [paused_at] = world.record.stops  # the operator's hold kept the automation's pause start
    estimate = at(paused_at) + timedelta(seconds=estimate_seconds("40 minutes") or 0)
    assert first.message.endswith(f"Estimated resolution: {when(estimate)}"), first.message
    assert first.context["estimatedResolution"] == estimate.isoformat()
    assert second.message.endswith("Estimated resolution: unknown")
    assert second.context["estimatedResolution"] is None


def test_a_restart_mid_incident_in_the_simulator_plans_nothing_twice_and_loses_nothing() -> None:
    """Two replicas plan; the probing replicas restart mid-incident (the simulator's restart
    fault), and so do the planners, one at a time and both at once across the first ongoing's
    half hour. A planner keeps nothing between rounds, so a restarted one reads the outbox: no
    notice twice, every one due once, and the targets hold."""
    horizon = 5400.0
    faults = [
        Fault(Kind.OUTAGE, 60.0, 60.0 + 65 * 60),
        Fault(Kind.RESTART, 90.0, 90.0, replica=0),
        Fault(Kind.RESTART, 1860.0, 1860.0, replica=1),
    ]
    planners = (
        Planner(0.0, down=((80.0, 200.0), (1830.0, 1880.0))),
        Planner(2.5, down=((110.0, 120.0), (1840.0, 1890.0), (4000.0, 4020.0))),
    )
    world, outbox, counted = simulate(faults, 4, horizon, planners)
    assert counted == {"periods": 1, "started": 1, "ongoing": 2, "resolved": 1,
                       "purchase_failed": len(world.failed_tenants)}  # fmt: skip
    # Both planners were dead when the first ongoing fell due: it waited for the first back.
    (period,) = world.periods
    first = outbox.rows[(period.id, "incident_ongoing", 1, None)][1]
    assert at(1840.0) < period.started_at + EVERY < at(1880.0) <= first
    # The same run, one planner that never restarts: the same notices.
    again = replay(Noticed(SHIPPED, faults, 4), horizon)
    assert set(again.rows) == set(outbox.rows)


def test_failover_in_the_simulator_says_purchases_continue_on_the_secondary() -> None:
    """Kraken dies for 40 minutes beside healthy Independent Reserve and BTC Markets (two, so
    that their prices are a reference once Kraken's last one ages out): the notices say
    purchases continue on the first, and the failed purchases, bought there within seconds,
    tell nobody they failed. Without the secondaries, the same outage tells every tenant."""
    horizon, faults = 3600.0, [Fault(Kind.OUTAGE, 100.0, 2500.0)]
    secondaries = (SecondarySpec(IR), SecondarySpec(BM))
    world = NoticedFailover(SHIPPED, faults, 1, secondaries=secondaries)
    outbox = replay(world, horizon)
    counted = check(world, outbox, horizon)
    assert counted == {"periods": 1, "started": 1, "ongoing": 1, "resolved": 1,
                       "purchase_failed": 0}  # fmt: skip
    assert [label for _, label in world.routes.changes] == [IR, PRIMARY]
    assert world.failed_tenants, "no purchase failed before the route: this proves nothing"
    (started,) = outbox.of("incident_started")
    assert "Your purchases continue on independentreserve" in started.message
    assert started.context["routedTo"] == IR
    (ongoing,) = outbox.of("incident_ongoing")
    assert ongoing.message.startswith(
        "Your Bitcoin purchases continue on independentreserve while kraken remains unavailable"
    )
    # The control: the same outage without failover: every tenant waits for the resume.
    alone = Noticed(SHIPPED, faults, 1)
    without = replay(alone, horizon)
    assert check(alone, without, horizon)["purchase_failed"] == len(alone.failed_tenants) > 0
    assert "continue on" not in without.of("incident_started")[0].message


@pytest.mark.timeout(300)
def test_generated_hours_keep_the_notice_invariants() -> None:
    """Hour-long generated timelines (outages, flapping, maintenance, relapses, restarts, holds)
    of at most 5 minutes each, three per hour: every period's notices on time, none twice."""
    totals = {"periods": 0, "started": 0, "ongoing": 0, "resolved": 0, "purchase_failed": 0}
    horizon = 3600.0
    for seed in range(12):
        rng = random.Random(seed)
        faults = [
            f for _ in range(3)
            for f in random_timeline(rng, horizon, SHIPPED.replicas, GENERATED, 300.0)
        ]  # fmt: skip
        for name, count in simulate(faults, seed, horizon)[2].items():
            totals[name] += count
    # The generator must keep producing incidents, or this proves nothing.
    assert totals["started"] >= 10 and totals["resolved"] >= 5, totals
