"""The decisions: pure functions of a snapshot and the database's clock.

Each records on a Plan what a result, a force, a reset or a config change causes: the
transitions, and the audit notes that are not transitions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from exporter.controls.breaker.state import (
    ACTOR_ADMIN,
    ACTOR_AUTOMATION,
    Snapshot,
    State,
    roll_window,
)


@dataclass(frozen=True)
class Step:
    from_state: State
    to_state: State
    actor: str
    cause: str
    trigger: str


@dataclass(frozen=True)
class _Note:
    """An audit entry that is not a transition: a hold, zeroed counts, new settings, a refusal."""

    action: str
    result: str
    actor: str
    cause: str | None
    detail: dict[str, Any]


@dataclass
class Plan:
    snapshot: Snapshot
    steps: list[Step] = field(default_factory=list)
    notes: list[_Note] = field(default_factory=list)

    def transition(self, to: State, now: datetime, actor: str, cause: str, trigger: str) -> None:
        s = self.snapshot
        self.steps.append(Step(s.state, to, actor, cause, trigger))
        hold = actor == ACTOR_ADMIN and to is State.OPEN and trigger == "forced"
        s = replace(s, state=to, state_changed_at=now, manual_hold=hold)
        if to is State.CLOSED:  # a closed breaker starts counting afresh
            s = replace(s, failure_count=0, call_count=0, window_started_at=None)
        self.snapshot = s

    def refuse(self, action: str, actor: str, cause: str | None, requested: str) -> None:
        detail = {"requested": requested, "state": self.snapshot.state.api, "why": "manual hold"}
        self.notes.append(_Note(action, "refused", actor, cause, detail))


Decision = Callable[[Plan, datetime], None]


def decide_recovery(plan: Plan, now: datetime) -> None:
    s = plan.snapshot
    if s.recovery_due(now):
        cause = f"recovery timeout of {s.recovery_timeout_ms} ms elapsed"
        plan.transition(State.HALF_OPEN, now, ACTOR_AUTOMATION, cause, "recovery_timeout")


def decide_result(ok: bool, actor: str, cause: str) -> Decision:
    def decide(plan: Plan, now: datetime) -> None:
        s = plan.snapshot
        plan.snapshot = replace(s, last_success_at=now) if ok else replace(s, last_failure_at=now)
        # A result that arrives after the recovery timeout is the trial call.
        decide_recovery(plan, now)
        if plan.snapshot.state is State.HALF_OPEN:
            _decide_trial(plan, now, ok, actor, cause)
        elif plan.snapshot.state is State.CLOSED:
            _decide_count(plan, now, ok, actor, cause)
        # OPEN: calls are not counted; only the timestamps above move.

    return decide


def _decide_trial(plan: Plan, now: datetime, ok: bool, actor: str, cause: str) -> None:
    if ok:
        plan.transition(State.CLOSED, now, actor, f"trial call succeeded: {cause}", "trial_success")
        return
    s = plan.snapshot
    plan.snapshot = replace(s, failure_count=s.failure_count + 1, call_count=s.call_count + 1)
    plan.transition(State.OPEN, now, actor, f"trial call failed: {cause}", "trial_failure")


def _decide_count(plan: Plan, now: datetime, ok: bool, actor: str, cause: str) -> None:
    s = roll_window(plan.snapshot, now)
    if ok:
        plan.snapshot = replace(s, call_count=s.call_count + 1) if s.window_started_at else s
        return
    s = replace(
        s, failure_count=s.failure_count + 1, call_count=s.call_count + 1,
        window_started_at=s.window_started_at or now,
    )  # fmt: skip
    plan.snapshot = s
    # `>=`: a threshold lowered below the current count opens on the next failure.
    if s.failure_count >= s.failure_threshold:
        why = (
            f"{s.failure_count} failures within the {s.monitoring_window_ms} ms monitoring window "
            f"reached the threshold of {s.failure_threshold}; last: {cause}"
        )
        plan.transition(State.OPEN, now, actor, why, "threshold")


def decide_force(target: State, actor: str, cause: str) -> Decision:
    def decide(plan: Plan, now: datetime) -> None:
        s = plan.snapshot
        if target is s.state:
            if actor == ACTOR_ADMIN and target is State.OPEN and not s.held:
                # An admin confirming an OPEN that automation made: keep it open from now on.
                plan.snapshot = replace(s, manual_hold=True)
                plan.notes.append(_Note("breaker_hold", "success", actor, cause, {"state": "OPEN"}))
            return
        if s.held and actor != ACTOR_ADMIN:
            plan.refuse("breaker_force_state", actor, cause, target.api)
            return
        plan.transition(target, now, actor, cause, "forced")

    return decide


def decide_reset(actor: str, cause: str) -> Decision:
    def decide(plan: Plan, now: datetime) -> None:
        s = plan.snapshot
        if s.held and actor != ACTOR_ADMIN:
            plan.refuse("breaker_reset", actor, cause, "CLOSED")
        elif s.state is not State.CLOSED:
            plan.transition(State.CLOSED, now, actor, cause, "reset")
        elif s.failure_count or s.call_count or s.window_started_at:
            plan.snapshot = replace(s, failure_count=0, call_count=0, window_started_at=None)
            detail = {"failure_count": s.failure_count, "call_count": s.call_count}
            plan.notes.append(_Note("breaker_reset", "success", actor, cause, detail))

    return decide


def decide_config(changes: dict[str, int], actor: str, cause: str | None) -> Decision:
    def decide(plan: Plan, now: datetime) -> None:
        s = plan.snapshot
        changed: dict[str, Any] = {k: v for k, v in changes.items() if getattr(s, k) != v}
        if changed:
            before = {k: getattr(s, k) for k in changed}
            plan.snapshot = replace(s, **changed)
            detail = {"before": before, "after": changed}
            plan.notes.append(_Note("breaker_config", "success", actor, cause, detail))

    return decide
