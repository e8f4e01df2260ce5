"""The notice planner on a simulated clock: blip, outage, maintenance, a 2-hour outage, restarts.

`plan` is pure, so each scenario replays an incident tick by tick (the loop's 5 s cadence) and
keeps what was "inserted" in a dict, as the outbox's unique key would.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from exporter.config import parse_config
from exporter.controls.notices import Notice, NoticeKey
from exporter.runbook.notices.plan import (
    IncidentView,
    NoticePolicy,
    TenantImpact,
    plan,
)

T0 = datetime(2026, 12, 7, 3, 0, tzinfo=UTC)
POLICY = NoticePolicy.from_config(parse_config({}).notices)
TICK = timedelta(seconds=5)  # notices.interval


def minutes(m: float) -> datetime:
    return T0 + timedelta(minutes=m)


class Outbox:
    """What the table would hold: each key once, with its state and when it was inserted."""

    def __init__(self) -> None:
        self.rows: dict[NoticeKey, tuple[Notice, str, datetime]] = {}

    @property
    def queued(self) -> dict[NoticeKey, str]:
        return {key: state for key, (_, state, _) in self.rows.items()}

    def run(
        self, incident_at: Callable[[datetime], list[IncidentView]], start: datetime,
        end: datetime, impacts: Callable[[datetime], list[TenantImpact]] = lambda now: [],
        policy: NoticePolicy = POLICY,
    ) -> None:  # fmt: skip
        now = start
        while now <= end:
            for notice in plan(incident_at(now), self.queued, impacts(now), now, policy):
                assert notice.key not in self.rows
                self.rows[notice.key] = (notice, notice.state, now)
            now += TICK

    def kinds(self) -> list[str]:
        return [notice.kind for notice, _, _ in sorted(self.rows.values(), key=lambda r: r[2])]

    def at(self, kind: str) -> list[datetime]:
        return sorted(at for notice, _, at in self.rows.values() if notice.kind == kind)


def outage(start: datetime, end: datetime | None, **changes: object) -> Callable:
    """The incident as the loop would read it at `now`: open until `end` (then closed)."""

    def view(now: datetime) -> list[IncidentView]:
        if now < start:
            return []
        ended = end if end is not None and now >= end else None
        return [replace(IncidentView(1, "kraken", "unavailable", start, ended), **changes)]

    return view


def test_a_blip_sends_nothing() -> None:
    """Purchases stopped for 40 s (less than notices.started_after): nobody is told."""
    outbox = Outbox()
    outbox.run(outage(T0, T0 + timedelta(seconds=40)), T0 - TICK, minutes(20))
    assert outbox.kinds() == []


def test_an_outage_sends_started_within_a_minute_and_resolved_within_a_minute() -> None:
    outbox = Outbox()
    resumed = minutes(12)
    outbox.run(outage(T0, resumed), T0 - TICK, minutes(30))
    assert outbox.kinds() == ["incident_started", "incident_resolved"]
    (started,) = outbox.at("incident_started")
    (resolved,) = outbox.at("incident_resolved")
    assert timedelta(seconds=45) <= started - T0 <= timedelta(seconds=60)
    assert timedelta(0) <= resolved - resumed <= timedelta(seconds=60)
    notice = outbox.rows[(1, "incident_started", 0, None)][0]
    assert notice.channels == ("app_notification", "email")
    assert notice.message.startswith("We are experiencing temporary issues with Bitcoin purchases")
    assert notice.tenant_id is None and notice.state == "queued"
    resolved_notice = outbox.rows[(1, "incident_resolved", 0, None)][0]
    assert resolved_notice.message == (
        "Bitcoin purchase services have been restored. Thank you for your patience."
    )


def test_a_two_hour_outage_sends_ongoing_every_30_minutes_and_none_extra() -> None:
    outbox = Outbox()
    outbox.run(outage(T0, minutes(120)), T0 - TICK, minutes(140))
    assert outbox.kinds() == [
        "incident_started", "incident_ongoing", "incident_ongoing", "incident_ongoing",
        "incident_resolved",
    ]  # fmt: skip
    for number, at in enumerate(outbox.at("incident_ongoing"), start=1):
        assert abs(at - minutes(30 * number)) <= timedelta(minutes=1), (number, at)
    assert [key[2] for key in outbox.rows if key[1] == "incident_ongoing"] == [1, 2, 3]
    ongoing = outbox.rows[(1, "incident_ongoing", 2, None)][0]
    assert ongoing.channels == ("app_notification",)
    assert ongoing.message.endswith("Estimated resolution: unknown")


def test_maintenance_with_an_estimate_names_the_time() -> None:
    """An admin paused with an estimated duration of 2 h: the ongoing notice says when."""
    estimate = minutes(120)
    outbox = Outbox()
    view = outage(T0, minutes(95), cause="maintenance", estimated_end=estimate)
    outbox.run(view, T0, minutes(100))
    first = outbox.rows[(1, "incident_ongoing", 1, None)][0]
    assert first.message.endswith("Estimated resolution: 2026-12-07 05:00 UTC")
    assert first.context["estimatedResolution"] == estimate.isoformat()
    assert first.context["cause"] == "maintenance"
    assert outbox.kinds()[-1] == "incident_resolved"


def test_an_estimate_that_has_passed_is_unknown_not_a_time_in_the_past() -> None:
    view = IncidentView(1, "kraken", "maintenance", T0, None, estimated_end=minutes(20))
    started = {(1, "incident_started", 0, None): "sent"}
    (notice,) = plan([view], started, [], minutes(30), POLICY)
    assert notice.message.endswith("Estimated resolution: unknown")


def test_a_restart_mid_incident_plans_nothing_twice() -> None:
    """A planner started again (a new replica, a restart) reads what is queued: no duplicates,
    and ongoing notices it missed while away are not sent in a burst."""
    outbox = Outbox()
    view = outage(T0, None)
    outbox.run(view, T0, minutes(31))
    assert outbox.kinds() == ["incident_started", "incident_ongoing"]
    before = dict(outbox.rows)
    # Every replica away from minute 31 to 95: one ongoing (the 90-minute one), not two.
    outbox.run(view, minutes(95), minutes(96))
    assert set(outbox.rows) - set(before) == {(1, "incident_ongoing", 3, None)}
    # Running the planner again over the same minute (another replica) adds nothing.
    for now in (minutes(95), minutes(96)):
        assert plan(view(now), outbox.queued, [], now, POLICY) == []


def test_purchase_failed_once_per_tenant_after_the_blip_and_not_if_the_retry_bought() -> None:
    failed = minutes(1)

    def impacts(now: datetime) -> list[TenantImpact]:
        found = [TenantImpact(1, "t1", failed, None, ("p1",))]
        if now < minutes(4):  # t2's purchase was bought on retry 3 minutes after it failed
            found.append(TenantImpact(1, "t2", failed, None, ("p2",)))
        return found

    outbox = Outbox()
    outbox.run(outage(T0, None), T0, minutes(40), impacts)
    failed_keys = [key for key in outbox.rows if key[1] == "purchase_failed"]
    assert failed_keys == [(1, "purchase_failed", 0, "t1")]
    notice, _, at = outbox.rows[(1, "purchase_failed", 0, "t1")]
    assert failed + POLICY.blip <= at <= failed + POLICY.blip + TICK
    assert notice.message == (
        "Your Bitcoin purchase could not be completed. Your funds are safe: we will retry it "
        "automatically (as soon as purchases resume). Questions? Contact "
        "support@liquidtreasury.business."
    )
    assert notice.context["template"] == "bitcoin_purchase_failure"
    assert notice.context["supportContact"] == "support@liquidtreasury.business"
    assert notice.context["purchaseIds"] == ["p1"]


def test_purchase_failed_after_the_incident_names_the_next_retry_time() -> None:
    view = IncidentView(1, "kraken", "unavailable", T0, minutes(10))
    retry = minutes(16)
    impact = TenantImpact(1, "t1", minutes(9), retry, ("p1",))
    (notice,) = plan([view], {}, [impact], minutes(14.5), POLICY)
    assert "(next attempt at 2026-12-07 03:16 UTC)" in notice.message
    assert notice.context["nextRetryAt"] == retry.isoformat()


def test_an_operator_who_cancels_incident_started_stops_the_follow_ups() -> None:
    view = IncidentView(1, "kraken", "unavailable", T0, None)
    cancelled = {(1, "incident_started", 0, None): "cancelled"}
    assert plan([view], cancelled, [], minutes(31), POLICY) == []
    closed = replace(view, ended_at=minutes(40))
    assert plan([closed], cancelled, [], minutes(40.5), POLICY) == []


def test_a_held_incident_holds_what_is_planned_for_it_next() -> None:
    view = IncidentView(1, "kraken", "unavailable", T0, None)
    held = {(1, "incident_started", 0, None): "held"}
    impact = TenantImpact(1, "t1", minutes(1), None, ("p1",))
    notices = plan([view], held, [impact], minutes(31), POLICY)
    assert {(n.kind, n.state) for n in notices} == {
        ("incident_ongoing", "held"), ("purchase_failed", "held"),
    }  # fmt: skip


def test_hold_new_holds_every_notice_for_an_operator_to_release() -> None:
    policy = replace(POLICY, hold_new=True)
    view = IncidentView(1, "kraken", "unavailable", T0, None)
    (notice,) = plan([view], {}, [], minutes(1), policy)
    assert (notice.kind, notice.state) == ("incident_started", "held")


def test_failover_says_purchases_continue_on_the_secondary() -> None:
    """The routing hook: an incident routed to a secondary exchange uses the *_routed texts."""
    view = IncidentView(1, "kraken", "unavailable", T0, None, routed_to="independentreserve")
    (started,) = plan([view], {}, [], minutes(1), POLICY)
    assert "Your purchases continue on independentreserve" in started.message
    assert started.context["template"] == "incident_started_routed"
    queued = {(1, "incident_started", 0, None): "sent"}
    impact = TenantImpact(1, "t1", minutes(1), minutes(40), ("p1",))
    ongoing, failed = plan([view], queued, [impact], minutes(30), POLICY)
    assert ongoing.message.startswith(
        "Your Bitcoin purchases continue on independentreserve while kraken remains unavailable"
    )
    # Routed: the retry does not wait for kraken to resume.
    assert "(next attempt at 2026-12-07 03:40 UTC)" in failed.message


def test_templates_from_the_config_replace_the_runbook_wording() -> None:
    config = parse_config({"notices": {"support_contact": "help@example.com", "templates": {
        "incident_started": {"channels": ["email"], "message": "{exchange} is down."},
    }}})  # fmt: skip
    policy = NoticePolicy.from_config(config.notices)
    view = IncidentView(1, "kraken", "unavailable", T0, None)
    (started,) = plan([view], {}, [], minutes(1), policy)
    assert (started.channels, started.message) == (("email",), "kraken is down.")
    # The templates not named keep the runbook's wording.
    assert policy.templates["incident_resolved"].message.startswith("Bitcoin purchase services")
