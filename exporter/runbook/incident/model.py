"""The incident model as the rest of the exporter calls it: probe rounds, timers, alerts and
verification results in, decisions out, each through the same decide + executor.

This is the one place that knows about dry run: it picks the executor.
"""

from __future__ import annotations

import random

import asyncpg

from exporter.config import Config
from exporter.controls.breaker import BreakerStore
from exporter.database.transactions import transaction
from exporter.runbook.alert_states import AlertState
from exporter.runbook.evidence import REPLICA
from exporter.runbook.incident.decision import (
    OutageAlert,
    RateAlert,
    Tick,
    VerificationDone,
)
from exporter.runbook.incident.dry_run import DryRunExecutor
from exporter.runbook.incident.effects import QueueRetries
from exporter.runbook.incident.executor import Executor
from exporter.runbook.incident.state import Incident, Policy, VerificationLease
from exporter.runbook.metrics import ActionMetrics, IncidentMetrics
from exporter.runbook.platform_watch import PlatformReading
from exporter.signals.exchange import RecoveryResult, Registry, RoundResult


class IncidentModel:
    """Decides for every configured exchange; one per process, its state in PostgreSQL."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        config: Config,
        breakers: BreakerStore,
        actions: ActionMetrics,
        metrics: IncidentMetrics,
        *,
        replica: str = REPLICA,
        rng: random.Random | None = None,
        exchanges: Registry | None = None,
    ) -> None:
        self._pool = pool
        self._replica = replica
        self._min_calls = config.incident.platform_min_calls
        registry = exchanges or Registry()
        policies = {name: Policy.from_config(config, registry.settings(config, name))
                    for name in config.exchanges}  # fmt: skip
        default = Policy.from_config(config, registry.settings(config, ""))
        executor = DryRunExecutor if config.receiver.dry_run else Executor
        self.executor: Executor = executor(
            config, breakers, actions, metrics, lambda name: policies.get(name, default),
            replica=replica, rng=rng,
        )  # fmt: skip

    @property
    def replica(self) -> str:
        return self._replica

    async def withdraw(self) -> None:
        """This replica stops voting (it is shutting down)."""
        await self._pool.execute(
            "DELETE FROM liquid_abt.probe_observations WHERE replica = $1", self._replica
        )

    async def observe(
        self, exchange: str, result: RoundResult
    ) -> tuple[Incident, VerificationLease | None]:
        """Record this replica's probe round, then decide."""
        async with transaction(self._pool) as connection:
            decision = await self.executor.decide(connection, exchange, Tick("probe_round"), result)
        return decision.incident, decision.lease

    @property
    def platform_min_calls(self) -> int:
        return self._min_calls

    async def platform_failing(self, exchange: str) -> bool:
        """Whether the platform's latest calls to the exchange all fail for want of an answer."""
        reading = await self.watch_platform(exchange)
        return reading.failing(self._min_calls)

    async def watch_platform(self, exchange: str, *, failures: bool = False) -> PlatformReading:
        """The platform watch's reading (probing.py, between rounds): one statement."""
        return await self.executor.watch_platform(self._pool, exchange, failures=failures)

    async def evaluate(self, exchange: str) -> tuple[Incident, VerificationLease | None]:
        """Decide on the evidence already recorded (a timer, a resolved alert, a wake-up)."""
        async with transaction(self._pool) as connection:
            decision = await self.executor.decide(connection, exchange, Tick("timer"))
        return decision.incident, decision.lease

    async def on_outage_alert(
        self, connection: asyncpg.Connection, state: AlertState, *, open_breaker: bool = True
    ) -> str | None:
        """A firing outage alert, inside the action worker's transaction. Returns why nothing
        was done (the live replicas' probes contradict it), or None."""
        assert state.exchange is not None
        event = OutageAlert(state.alertname, state.summary, state.fingerprint, open_breaker)
        decision = await self.executor.decide(connection, state.exchange, event)
        return decision.refused

    async def lower_rate(self, connection: asyncpg.Connection, state: AlertState) -> None:
        """A rate-limit alert: lower the rate now; the evidence brings it back."""
        assert state.exchange is not None
        event = RateAlert(state.alertname, state.summary, state.fingerprint)
        await self.executor.decide(connection, state.exchange, event)

    async def queue_retries(self, connection: asyncpg.Connection, state: AlertState) -> None:
        """An alert whose runbook action is queueing the retry-eligible failed purchases."""
        effect = QueueRetries(state.cause, state.fingerprint)
        await self.executor.act(connection, state.exchange, [effect])

    async def verified(self, lease: VerificationLease, result: RecoveryResult) -> bool:
        """Apply a verification's result; False when its lease was lost meanwhile (fenced)."""
        async with transaction(self._pool) as connection:
            event = VerificationDone(lease.token, result)
            decision = await self.executor.decide(connection, lease.exchange, event)
        return decision.applied
