"""The imperative shell of the incident model: gather the evidence, decide, apply the effects.

One decision is one transaction under the exchange's advisory lock (alert_states.lock_exchange):
the clock is read once, the probe round (if any) recorded, the incident row and the breaker row
read once and locked, the evidence read at that instant; `decide` (decision.py) runs; the effects
are applied in order; the row is written back. Metrics and log lines are announced only once it
committed (after_commit), so a decision that rolled back says nothing.

DryRunExecutor (dry_run.py) overrides the three things that touch state: where the incident row
lives, and what an effect does.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime

import asyncpg

from exporter.config import Config
from exporter.controls import api_rate, audit, retry_queue
from exporter.controls import pause as controls
from exporter.controls.breaker import ACTOR_AUTOMATION, BreakerStore, Snapshot
from exporter.database.transactions import after_commit
from exporter.runbook.alert_states import lock_exchange, outage_alertnames, still_firing
from exporter.runbook.evidence import live_observations, platform_calls, record_round
from exporter.runbook.incident import route_store, routing, store
from exporter.runbook.incident.decision import Decision, Event, Evidence, decide
from exporter.runbook.incident.effects import (
    Audit,
    BreakerEvidence,
    ClosePeriod,
    Effect,
    Log,
    MakeRetriesDue,
    OpenPeriod,
    Pause,
    QueueRetries,
    RecordVerification,
    Resume,
    SetApiRate,
    SetBreaker,
    SetRoute,
    StartVerification,
)
from exporter.runbook.incident.state import NORMAL, Breaker, Incident, Policy, Route
from exporter.runbook.metrics import ActionMetrics, IncidentMetrics
from exporter.runbook.platform_watch import PlatformReading, RetryWindow, read_platform
from exporter.signals.classify import ReasonClassifier
from exporter.signals.exchange import RoundResult

# The incident model's log lines keep the logger name they had before the package split.
log = logging.getLogger("exporter.runbook.incident")


@dataclass
class Applying:
    """What one decision's effects change as they are applied: the breaker row."""

    exchange: str | None
    snapshot: Snapshot | None
    now: datetime | None


class Executor:
    """Applies decisions for every exchange; one per process (the state is in PostgreSQL)."""

    def __init__(
        self,
        config: Config,
        breakers: BreakerStore,
        actions: ActionMetrics,
        metrics: IncidentMetrics,
        policy: Callable[[str], Policy],
        *,
        replica: str,
        rng: random.Random | None = None,
        new_token: Callable[[], uuid.UUID] = uuid.uuid4,
    ) -> None:
        self._config = config
        self._breakers = breakers
        self._actions = actions
        self._metrics = metrics
        self._policy = policy
        self._replica = replica
        self._rng = rng or random.Random()
        self._new_token = new_token
        self._classifier = ReasonClassifier(config.purchases.failure_reasons)
        self._isolated: set[str] = set()
        self._routing = routing.RoutingPolicy.from_config(config)

    # -- one decision --

    async def decide(
        self, connection: asyncpg.Connection, exchange: str, event: Event,
        round_result: RoundResult | None = None,
    ) -> Decision:  # fmt: skip
        """Lock, read the evidence once, decide, apply: inside the caller's transaction."""
        await lock_exchange(connection, exchange)
        now: datetime = await connection.fetchval("SELECT clock_timestamp()")
        if round_result is not None:
            await record_round(connection, exchange, round_result, self._replica, now)
        incident = await self._load(connection, exchange)
        snapshot = await self._breakers.state(connection, exchange)
        evidence = await self._evidence(connection, exchange, event, snapshot, incident, now)
        decision = decide(incident, evidence, now, self._policy(exchange))
        applying = Applying(exchange, snapshot, now)
        for effect in decision.effects:
            await self._apply(connection, applying, effect)
        if decision.incident != incident:
            await self._save(connection, decision.incident)
        if exchange == self._config.failover.primary and self._routing.enabled:
            await self._route(connection, applying, decision.incident, now)
        after_commit(lambda: self._announce(exchange, decision))
        return decision

    async def _route(
        self, connection: asyncpg.Connection, applying: Applying, incident: Incident,
        now: datetime,
    ) -> routing.RouteDecision | None:  # fmt: skip
        """Failover, beside the decision and in its transaction: where the primary's purchases
        go now (routing.py). Nothing to read while the primary is normal and nothing is routed,
        blocked or overridden but the primary's last good mid (the next outage's reference): the
        common case costs two primary-key lookups."""
        exchange = incident.exchange
        current = await self._load_route(connection, exchange)
        primary = (await route_store.markets(connection, [exchange])).get(exchange)
        idle = current.routed_to is None and current.blocked_guard is None
        if incident.phase == NORMAL and idle and current.override is None:
            kept = routing.remember(current, primary)  # the reference for the next outage
            if kept != current:
                await self._save_route(connection, kept)
            return None
        controls_row = await controls.status(connection, exchange)
        held = controls_row.manual_hold or bool(applying.snapshot and applying.snapshot.held)
        f = self._config.failover
        view = routing.RouteView(
            phase=incident.phase, paused=await self._paused(connection, exchange, incident),
            held=held, primary_market=primary,
            secondaries=await route_store.secondaries(connection, list(f.secondaries)),
            waiting_aud=await route_store.waiting_aud(
                connection, exchange, self._config.purchases.retry_window),
        )  # fmt: skip
        decided = routing.route(current, view, now, self._routing)
        for effect in decided.effects:
            await self._apply(connection, applying, effect)
        if decided.route != current:
            await self._save_route(connection, decided.route)
        return decided

    async def _load_route(self, connection: asyncpg.Connection, exchange: str) -> Route:
        return await route_store.lock(connection, exchange)

    async def _save_route(self, connection: asyncpg.Connection, route: Route) -> None:
        await route_store.save(connection, route)

    async def act(
        self, connection: asyncpg.Connection, exchange: str | None, effects: list[Effect]
    ) -> None:
        """Apply effects that are not an incident decision (an alert's own runbook action, such
        as queueing retries for a high failure rate), the same way, dry run included."""
        applying = Applying(exchange, None, None)
        for effect in effects:
            await self._apply(connection, applying, effect)

    async def watch_platform(
        self, pool: asyncpg.Pool, exchange: str, *, failures: bool = False
    ) -> PlatformReading:
        """The platform's latest `platform_min_calls` calls (and, with `failures`, its failed
        purchases not queued yet): read without a lock or a decision, in one statement, so the
        platform watch costs one transaction."""
        cfg, purchases = self._config.incident, self._config.purchases
        retry = RetryWindow(purchases.retry_max_count, purchases.retry_window)
        return await read_platform(
            pool, exchange, self._classifier, window=cfg.platform_window,
            calls=cfg.platform_min_calls, retry=retry if failures else None,
        )  # fmt: skip

    async def _evidence(
        self, connection: asyncpg.Connection, exchange: str, event: Event, snapshot: Snapshot,
        incident: Incident, now: datetime,
    ) -> Evidence:  # fmt: skip
        cfg = self._config.incident
        live = await live_observations(connection, exchange, cfg.replica_stale_after, now)
        platform = await platform_calls(
            connection, exchange, self._classifier, cfg.platform_window, now
        )
        firing = not live and await still_firing(
            connection, exchange, outage_alertnames(self._config)
        )
        return Evidence(
            event, tuple(live), platform, Breaker.of(snapshot), firing, self._replica,
            self._new_token(), await self._paused(connection, exchange, incident),
        )  # fmt: skip

    async def _paused(
        self, connection: asyncpg.Connection, exchange: str, incident: Incident
    ) -> bool:
        """Whether the exchange's purchases are paused (the dry run's incident says what it
        would have paused)."""
        return (await controls.status(connection, exchange)).purchases_paused

    # -- where the incident row lives (the dry run keeps its own) --

    async def _load(self, connection: asyncpg.Connection, exchange: str) -> Incident:
        return await store.lock(connection, exchange)

    async def _save(self, connection: asyncpg.Connection, incident: Incident) -> None:
        await store.save(connection, incident)

    # -- the effects --

    async def _apply(
        self, connection: asyncpg.Connection, applying: Applying, effect: Effect
    ) -> None:
        result = await self._do(connection, applying, effect)
        action = effect.action
        if action is not None:
            after_commit(lambda: self._actions.actions.labels(action, result).inc())

    async def _do(self, connection: asyncpg.Connection, applying: Applying, effect: Effect) -> str:
        """Apply one effect; returns its result for the action counter."""
        exchange = applying.exchange
        match effect:
            case SetBreaker():
                assert exchange and applying.snapshot is not None and applying.now is not None
                applying.snapshot = await self._breakers.force_locked(
                    connection, applying.snapshot, applying.now, effect.state, ACTOR_AUTOMATION,
                    effect.cause, effect.fingerprint,
                )  # fmt: skip
            case Pause():
                assert exchange
                await controls.pause(
                    connection, exchange, reason=effect.reason,
                    estimated_duration=self._config.receiver.pause_estimated_duration,
                    actor=ACTOR_AUTOMATION, cause=effect.cause, fingerprint=effect.fingerprint,
                )  # fmt: skip
            case Resume():
                assert exchange
                resumed = await controls.resume(
                    connection, exchange, actor=ACTOR_AUTOMATION, cause=effect.cause
                )
                return "skipped" if resumed.refused else "success"
            case QueueRetries():
                await retry_queue.enqueue_retry_eligible(
                    connection, exchange=exchange, classifier=self._classifier,
                    purchases_config=self._config.purchases, retry_config=self._config.retry,
                    cause=effect.cause, fingerprint=effect.fingerprint, rng=self._rng,
                )  # fmt: skip
            case MakeRetriesDue():
                assert exchange
                await retry_queue.make_due(
                    connection, exchange, actor=ACTOR_AUTOMATION, cause=effect.cause
                )
            case SetApiRate():
                assert exchange
                await api_rate.set_rate_multiplier(
                    connection, exchange, effect.multiplier, actor=ACTOR_AUTOMATION,
                    cause=effect.cause, fingerprint=effect.fingerprint,
                )  # fmt: skip
            case RecordVerification():
                assert exchange
                at = effect.at.isoformat()
                verification = {"passed": effect.passed, "checks": effect.checks, "at": at}
                await store.save_verification(connection, exchange, verification)
                return effect.result
            case Audit():
                await audit.record(
                    connection, actor=ACTOR_AUTOMATION, action=effect.action_name,
                    result=effect.result, exchange=exchange, cause=effect.cause,
                    fingerprint=effect.fingerprint, detail=effect.detail,
                )  # fmt: skip
            case OpenPeriod():
                await connection.execute(
                    """INSERT INTO liquid_abt.incident_periods (exchange, cause, started_at)
                       VALUES ($1, $2, $3)""",
                    exchange, effect.cause, effect.started_at,
                )  # fmt: skip
            case ClosePeriod():
                await connection.execute(
                    """UPDATE liquid_abt.incident_periods SET ended_at = $2
                       WHERE exchange = $1 AND ended_at IS NULL""",
                    exchange, effect.ended_at,
                )  # fmt: skip
            case BreakerEvidence():
                assert exchange and applying.snapshot is not None
                evidence = (effect.failing, effect.voters, effect.failing_since,
                            effect.last_failure_at, effect.last_success_at)  # fmt: skip
                await self._breakers.record_evidence(connection, exchange, evidence)
                # A transition later in this decision writes the row from this snapshot.
                applying.snapshot = replace(
                    applying.snapshot, failure_count=effect.failing, call_count=effect.voters,
                    window_started_at=effect.failing_since,
                    last_failure_at=effect.last_failure_at, last_success_at=effect.last_success_at,
                )  # fmt: skip
            case Log():
                line = effect
                after_commit(lambda: log.log(line.level, line.message, extra=line.fields))
            case StartVerification():
                pass  # the lease is on the row already; the caller runs the checks
            case SetRoute():
                pass  # the route row is written with the decision (_save_route)
        return "success"

    def _announce(self, exchange: str, decision: Decision) -> None:
        """This replica's view of the evidence: its gauges, and one warning when only it sees
        the exchange fail."""
        verdict = decision.verdict
        self._metrics.observe(exchange, verdict.voters, verdict.failing_voters, verdict.isolated)
        if verdict.isolated and exchange not in self._isolated:
            log.warning("only this replica sees the exchange API fail: its network, not the "
                        "exchange; purchases are not stopped for it",
                        extra={"exchange": exchange, "evidence": verdict.detail})  # fmt: skip
        if verdict.isolated:
            self._isolated.add(exchange)
        else:
            self._isolated.discard(exchange)
