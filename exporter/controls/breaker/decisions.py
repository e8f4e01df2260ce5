"""The decisions: pure functions of a snapshot and the database's clock.

Each records on a Plan what a force, a reset or a config change causes: the transitions, and the
audit notes that are not transitions. Whether to force a state is the incident model's decision
(exporter/runbook/incident/) or an admin's; the breaker only keeps the state and its holds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from exporter.controls.breaker.state import (
    ACTOR_ADMIN,
    Snapshot,
    State,
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
