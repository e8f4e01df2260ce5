"""The invariants of DESIGN.md's "Incident decisions", checked after every step of a simulation.

The checker keeps its own account of the incident from what it can observe (the evidence every
step was decided on, the effects the executor applied, the admin's actions, the pages) and never
reads the core's state: a core that forgets a rule cannot also forget to be checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from exporter.controls.breaker import State
from exporter.runbook.incident import effects as fx
from exporter.runbook.incident.state import DOWN, NORMAL, PROBATION, backoff
from tests.simulator.core import decisions
from tests.simulator.faults import PAGE_CAUSES, Kind

if TYPE_CHECKING:
    from tests.simulator.world import World

# Faults that may stop purchases: anything else stopping them is a needless stop.
STOPPING = frozenset({Kind.OUTAGE, Kind.HANG, Kind.MAINTENANCE, Kind.CANCEL_ONLY, Kind.POST_ONLY})

# What the shipped product does not do yet, each shown by a test of its own
# (tests/test_incident_simulation.py):
# - the pages are Prometheus's, from each replica's status gauge, and a replica cut off keeps the
#   last status it read ("online"): maintenance seen while one replica is cut off pages as
#   ExchangeApiDown. The incident model itself counts only statuses read by answered rounds
#   (evidence.judge), so it stops purchases for maintenance and says so.
ISOLATED_MAINTENANCE = frozenset({Kind.MAINTENANCE})

INVARIANTS = (
    "no_resume_on_failing_evidence",
    "stop_on_quorate_evidence",
    "one_page_per_cause",
    "no_resume_without_verification",
    "relapse_backoff",
    "admin_hold_wins",
    "bounded_breaker_changes",
    "no_needless_stop",
)


class Violation(AssertionError):
    def __init__(self, invariant: str, t: float, detail: str, world: World | None = None) -> None:
        faults = "; ".join(str(f) for f in world.faults) if world else ""
        super().__init__(f"{invariant} at t={t:.1f}s: {detail}\n  faults: {faults}")
        self.invariant = invariant
        self.t = t


@dataclass
class Invariants:
    """One run's checker. `skip` names invariants a test leaves out on purpose."""

    skip: frozenset[str] = frozenset()
    # Read the evidence with the production's judge here too, rather than trusting the verdict
    # the core decided on: catches a core that misreads it, at the price of a second judge.
    independent: bool = True
    phase: str = NORMAL  # the checker's own: normal, down, probation
    opened_at: float = 0.0
    failures: int = 0  # relapses and failed verifications, carried over like the core's
    next_attempt: float = float("-inf")
    last_closed: float | None = None
    verified: bool = False  # a verification passed since the last open / relapse / failure
    lease: object = None
    transitions: int = 0
    attempts: int = 0
    paged: set[str] = field(default_factory=set)
    hold: bool = False
    pages: int = 0

    def fail(self, world: World, name: str, detail: str) -> None:
        if name not in self.skip:
            raise Violation(name, world.now, detail, world)

    # -- hooks the world calls --

    def on_admin(self, world: World, hold: bool) -> None:
        self.hold = hold

    def on_effect(self, world: World, effect: fx.Effect, applied: bool) -> None:
        now = world.now
        if isinstance(effect, fx.Pause) and self.phase == NORMAL:
            soon = (
                self.last_closed is not None and now - self.last_closed < world.p.monitoring_window
            )
            self.failures = self.failures + 1 if soon else 0
            self.next_attempt = now + self._backoff(world) if self.failures else float("-inf")
            self.phase, self.opened_at, self.verified = DOWN, now, False
            self.transitions = self.attempts = 0
            self.paged = set()
            if not world.overlapping(STOPPING, now - 120, now):
                self.fail(world, "no_needless_stop", f"purchases stopped ({effect.cause}) with "
                          f"no outage, maintenance or restriction in the last 120 s")  # fmt: skip
        elif isinstance(effect, fx.StartVerification):
            self.lease = effect.lease.token
            self.attempts += 1
            if now < self.next_attempt:
                self.fail(world, "relapse_backoff", f"verification started "
                          f"{self.next_attempt - now:.1f}s before the backoff of failure "
                          f"{self.failures} was over")  # fmt: skip
            if world.held_breaker:
                self.fail(world, "admin_hold_wins", "verification started under a held breaker")
        elif isinstance(effect, fx.SetBreaker) and applied:
            self.transitions += 1
            bound = self._transition_bound(world, now - self.opened_at)
            if self.phase != NORMAL and self.transitions > bound:
                self.fail(world, "bounded_breaker_changes", f"{self.transitions} breaker changes "
                          f"in {now - self.opened_at:.0f}s of incident (bound {bound})")  # fmt: skip
        elif isinstance(effect, fx.Resume):
            verdict = world.verdict
            assert verdict is not None
            if verdict.cause is not None or verdict.down:
                self.fail(
                    world,
                    "no_resume_on_failing_evidence",
                    f"resumed while the evidence says {verdict.cause}: {verdict.detail}",
                )
            if not self.verified:
                self.fail(
                    world,
                    "no_resume_without_verification",
                    f"resumed without a verification passed since {self.opened_at:.1f}s",
                )
            self.phase, self.verified = NORMAL, False

    def after_step(
        self, world: World, event: decisions.Event, decision: decisions.Decision
    ) -> None:
        now, verdict, c = world.now, world.verdict, world.controls
        assert verdict is not None
        if isinstance(event, decisions.VerificationDone):
            if event.token == self.lease and self.phase == DOWN:
                self.lease = None
                if not event.result.ok:
                    self._failure(world)
                elif not world.held_breaker:  # a held breaker keeps a passed one from closing
                    self.phase, self.verified, self.last_closed = PROBATION, True, now
        elif self.phase == PROBATION and verdict.cause is not None:
            self.phase, self.verified = DOWN, False
            self._failure(world)
        if verdict.cause is not None and not c.paused:
            self.fail(
                world,
                "stop_on_quorate_evidence",
                f"purchases flow while the evidence says {verdict.cause}: {verdict.detail}",
            )
        if self.hold and not (c.paused and c.breaker == State.OPEN):
            self.fail(world, "admin_hold_wins", f"an admin holds purchases, yet paused="
                      f"{c.paused} and the breaker is {c.breaker}")  # fmt: skip

    def on_page(self, world: World, alert: str, cause: str) -> None:
        self.pages += 1
        now, p = world.now, world.p
        lookback = now - (max(p.alert_delay, p.status_alert_delay, p.auth_alert_delay) + 120)
        why = [f for f in world.faults if cause in PAGE_CAUSES.get(f.kind, ()) and
               f.start <= now and f.end >= lookback]  # fmt: skip
        if (
            not why
            and cause == "unavailable"
            and world.overlapping(ISOLATED_MAINTENANCE, lookback, now)
        ):
            # Known gap (above): the page names the wrong cause; purchases stop for maintenance.
            why = [f for f in world.faults if f.kind is Kind.MAINTENANCE]
        if not why:
            self.fail(
                world,
                "one_page_per_cause",
                f"{alert} paged {cause}, and no fault of that cause was injected",
            )
        if self.phase != NORMAL:
            self.paged.add(cause)
            since = self.opened_at - (now - lookback)
            injected = {c for f in world.faults if f.start <= now and f.end >= since
                        for c in PAGE_CAUSES.get(f.kind, ())}  # fmt: skip
            if len(self.paged) > max(1, len(injected)):
                self.fail(
                    world,
                    "one_page_per_cause",
                    f"this incident paged {sorted(self.paged)}, injected {sorted(injected)}",
                )

    def finish(self, world: World) -> None:
        pass

    # -- the checker's own arithmetic --

    def _failure(self, world: World) -> None:
        self.failures += 1
        self.next_attempt = world.now + self._backoff(world)

    def _backoff(self, world: World) -> float:
        # Rounded down a little: the core adds the backoff to the same float clock.
        return backoff(world.p.recovery_timeout, self.failures, world.p.backoff_max) - 1e-6

    @staticmethod
    def _transition_bound(world: World, duration: float) -> int:
        """Open, then at most three changes per verification attempt (half-open, closed or
        open, a relapse's open); attempts are spaced by recovery_timeout then the backoff."""
        p = world.p
        attempts, t = 1, p.recovery_timeout
        while t <= duration:
            t += max(p.recovery_timeout, backoff(p.recovery_timeout, attempts, p.backoff_max))
            attempts += 1
        return 1 + 3 * attempts
