"""The incident model: one per exchange, the only writer of automation's breaker and pause.

Evidence flows in (every replica's probe rounds, the platform's calls, Alertmanager
notifications through the action worker, admin commands through the controls they change);
decisions flow out. Precedence: an admin's hold > recovery verification > automation.

    normal ──(down / maintenance / trading restricted)──▶ down
        breaker OPEN (not for trading restricted), purchases paused, retries queued: one commit
    down ──(healthy for recovery_timeout, backoff over)──▶ verification (breaker HALF_OPEN)
        passed ──▶ probation (breaker CLOSED, purchases still paused)
        failed ──▶ down (breaker OPEN), the next attempt backs off
    probation ──(down again)──▶ down: a relapse, breaker OPEN, backoff doubles, no new pause
    probation ──(healthy for `incident.probation`)──▶ normal: purchases resume, retries due

The API rate is decided beside the phases: rate-limit evidence lowers it, and it comes back once
no call was rate limited for `incident.rate_restore_after`. Every decision is taken under the
exchange's advisory lock (alert_states.lock_exchange) in one transaction, and audited with the
evidence that caused it.
"""

from __future__ import annotations

import json
import logging
import random
import uuid
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from exporter.config import Config
from exporter.controls import api_rate, audit, retry_queue
from exporter.controls import pause as controls
from exporter.controls.breaker import ACTOR_AUTOMATION, BreakerStore, Snapshot, State
from exporter.controls.breaker.store import Evidence
from exporter.database.transactions import Executor, after_commit, transaction
from exporter.runbook.alert_states import AlertState, lock_exchange, outage_alertnames, still_firing
from exporter.runbook.evidence import (
    REPLICA,
    Verdict,
    judge,
    live_observations,
    platform_calls,
    record_round,
)
from exporter.runbook.metrics import ActionMetrics, IncidentMetrics
from exporter.signals.classify import ReasonClassifier
from exporter.signals.kraken.probe import RoundResult

log = logging.getLogger(__name__)

NORMAL, DOWN, PROBATION = "normal", "down", "probation"
PHASES = (NORMAL, DOWN, PROBATION)

_COLUMNS = """exchange, phase, cause, started_at, healthy_since, relapses, next_attempt_at,
              probation_until, last_closed_at, lease_until, lease_token, rate_lowered_at,
              rate_limited_seen_at"""
_LOCK_SQL = f"SELECT {_COLUMNS} FROM liquid_abt.incidents WHERE exchange = $1 FOR UPDATE"
_WRITE_SQL = """
UPDATE liquid_abt.incidents
   SET phase = $2, cause = $3, started_at = $4, healthy_since = $5, relapses = $6,
       next_attempt_at = $7, probation_until = $8, last_closed_at = $9, lease_until = $10,
       lease_token = $11, rate_lowered_at = $12, rate_limited_seen_at = $13, updated_at = now()
 WHERE exchange = $1"""


@dataclass(frozen=True)
class Incident:
    """The incident row of one exchange."""

    exchange: str
    phase: str = NORMAL
    cause: str | None = None
    started_at: datetime | None = None
    healthy_since: datetime | None = None
    relapses: int = 0
    next_attempt_at: datetime | None = None
    probation_until: datetime | None = None
    last_closed_at: datetime | None = None
    lease_until: datetime | None = None
    lease_token: uuid.UUID | None = None
    rate_lowered_at: datetime | None = None
    rate_limited_seen_at: datetime | None = None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Incident:
        return cls(**dict(row))

    def values(self) -> tuple[Any, ...]:
        return (
            self.exchange, self.phase, self.cause, self.started_at, self.healthy_since,
            self.relapses, self.next_attempt_at, self.probation_until, self.last_closed_at,
            self.lease_until, self.lease_token, self.rate_lowered_at, self.rate_limited_seen_at,
        )  # fmt: skip


@dataclass(frozen=True)
class VerificationLease:
    """A recovery verification this replica may run; the token fences it if the lease is lost."""

    exchange: str
    token: uuid.UUID
    cause: str | None


def backoff(recovery_timeout: float, relapses: int, cap: float) -> float:
    """Seconds before the next verification after `relapses` re-opens or failed attempts."""
    return float(min(cap, recovery_timeout * 2 ** min(relapses, 32)))


def _seconds(ms: int) -> float:
    return ms / 1000.0


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
    ) -> None:
        self._pool = pool
        self._config = config
        self._breakers = breakers
        self._actions = actions
        self._metrics = metrics
        self._replica = replica
        self._classifier = ReasonClassifier(config.purchases.failure_reasons)
        self._rng = rng or random.Random()
        self._dry_run_said: set[tuple[str, str]] = set()
        self._isolated: set[str] = set()

    @property
    def replica(self) -> str:
        return self._replica

    async def withdraw(self) -> None:
        """This replica stops voting (it is shutting down)."""
        await self._pool.execute(
            "DELETE FROM liquid_abt.probe_observations WHERE replica = $1", self._replica
        )

    # -- evidence in --

    async def observe(
        self, exchange: str, result: RoundResult
    ) -> tuple[Incident, VerificationLease | None]:
        """Record this replica's probe round, then decide."""
        async with transaction(self._pool) as connection:
            await lock_exchange(connection, exchange)
            await record_round(connection, exchange, result, self._replica)
            return await self._decide(connection, exchange)

    async def evaluate(self, exchange: str) -> tuple[Incident, VerificationLease | None]:
        """Decide on the evidence already recorded (a timer, a resolved alert, a wake-up)."""
        async with transaction(self._pool) as connection:
            await lock_exchange(connection, exchange)
            return await self._decide(connection, exchange)

    async def on_outage_alert(
        self, connection: asyncpg.Connection, state: AlertState, *, open_breaker: bool = True
    ) -> str | None:
        """A firing outage alert, inside the action worker's transaction (lock held).

        Alerts are evidence too, but Prometheus sees the world later than the replicas do: when
        replicas probe the exchange and see it answer, the alert is recorded and not acted on.
        Returns why nothing was done, or None when it opened an incident (or one was open).
        """
        assert state.exchange is not None
        incident = await self._load(connection, state.exchange)
        if incident.phase != NORMAL:
            return None
        verdict = await self._verdict(connection, state.exchange)
        if verdict.voters and verdict.cause is None:
            return f"the probes of {verdict.voters} live replica(s) contradict it: {verdict.detail}"
        if self._config.receiver.dry_run:
            self._say_dry_run(state.exchange, f"open on {state.alertname}")
            return None
        now = await connection.fetchval("SELECT clock_timestamp()")
        cause = verdict.cause or f"alert:{state.alertname}"
        why = f"{state.alertname} firing ({state.summary}); {verdict.detail}"
        incident = await self._open(
            connection, incident, cause, why, now, None, state.fingerprint,
            open_breaker=open_breaker and cause != "trading_restricted",
        )  # fmt: skip
        await self._save(connection, incident)
        return None

    async def lower_rate(self, connection: asyncpg.Connection, exchange: str, cause: str) -> None:
        """A rate-limit alert: lower the rate now; the evidence brings it back (see _decide_rate)."""
        incident = await self._load(connection, exchange)
        now = await connection.fetchval("SELECT clock_timestamp()")
        incident = replace(incident, rate_limited_seen_at=now)
        if incident.rate_lowered_at is None:  # lowered already: only the evidence is newer
            incident = await self._set_rate(
                connection, incident, lowered=True, cause=cause, now=now
            )
        await self._save(connection, incident)

    # -- the decision --

    async def _decide(
        self, connection: asyncpg.Connection, exchange: str
    ) -> tuple[Incident, VerificationLease | None]:
        incident = await self._load(connection, exchange)
        breaker = await self._breakers.state(connection, exchange)
        verdict = await self._verdict(connection, exchange, breaker)
        now: datetime = await connection.fetchval("SELECT clock_timestamp()")
        await self._breakers.record_evidence(connection, exchange, _breaker_evidence(verdict))
        incident = await self._decide_rate(connection, incident, verdict, now)
        lease = None
        if self._config.receiver.dry_run:
            if verdict.cause and incident.phase == NORMAL:
                self._say_dry_run(exchange, f"open: {verdict.cause}")
        elif incident.phase == NORMAL:
            if verdict.cause:
                incident = await self._open(
                    connection, incident, verdict.cause, verdict.detail, now, verdict.failing_since
                )
        elif incident.phase == DOWN:
            incident, lease = await self._while_down(connection, incident, breaker, verdict, now)
        elif incident.phase == PROBATION:
            incident = await self._while_on_probation(connection, incident, breaker, verdict, now)
        await self._save(connection, incident)
        after_commit(lambda: self._announce(exchange, verdict))
        return incident, lease

    def _announce(self, exchange: str, verdict: Verdict) -> None:
        self._metrics.observe(exchange, verdict.voters, verdict.failing_voters, verdict.isolated)
        if verdict.isolated and exchange not in self._isolated:
            log.warning("only this replica sees the exchange API fail: its network, not the "
                        "exchange; purchases are not stopped for it",
                        extra={"exchange": exchange, "evidence": verdict.detail})  # fmt: skip
        if verdict.isolated:
            self._isolated.add(exchange)
        else:
            self._isolated.discard(exchange)

    async def _verdict(
        self, connection: asyncpg.Connection, exchange: str, breaker: Snapshot | None = None
    ) -> Verdict:
        breaker = breaker or await self._breakers.state(connection, exchange)
        cfg = self._config.incident
        live = await live_observations(connection, exchange, cfg.replica_stale_after)
        platform = await platform_calls(connection, exchange, self._classifier, cfg.platform_window)
        verdict = judge(
            live, platform, failure_threshold=breaker.failure_threshold,
            platform_min_calls=cfg.platform_min_calls, replica=self._replica,
        )  # fmt: skip
        if verdict.voters == 0:
            # Nothing probes this exchange: healthy means no outage alert fires and the
            # platform's calls are answered (or absent); verification still proves it.
            firing = await still_firing(connection, exchange, outage_alertnames(self._config))
            healthy = not firing and not platform.failing(cfg.platform_min_calls)
            verdict = replace(verdict, healthy=healthy)
        return verdict

    async def _while_down(
        self, connection: asyncpg.Connection, incident: Incident, breaker: Snapshot,
        verdict: Verdict, now: datetime,
    ) -> tuple[Incident, VerificationLease | None]:  # fmt: skip
        healthy = verdict.healthy and verdict.cause is None
        incident = replace(
            incident, healthy_since=(incident.healthy_since or now) if healthy else None
        )
        if not healthy or incident.healthy_since is None or breaker.held:
            return incident, None
        recovery = timedelta(seconds=_seconds(breaker.recovery_timeout_ms))
        due = now - incident.healthy_since >= recovery and (
            incident.next_attempt_at is None or now >= incident.next_attempt_at
        )
        leased = incident.lease_until is not None and incident.lease_until > now
        if not due or leased:
            return incident, None
        token = uuid.uuid4()
        # Long enough for every recovery check to time out; a crash frees it soon after.
        lease_for = timedelta(seconds=6 * self._config.kraken.timeout + 30)
        incident = replace(incident, lease_until=now + lease_for, lease_token=token)
        if breaker.state is State.OPEN:
            await self._breakers.force_state(
                incident.exchange, State.HALF_OPEN, ACTOR_AUTOMATION,
                f"recovery verification after {incident.cause}: {verdict.detail}",
                db=connection,
            )  # fmt: skip
        return incident, VerificationLease(incident.exchange, token, incident.cause)

    async def _while_on_probation(
        self, connection: asyncpg.Connection, incident: Incident, breaker: Snapshot,
        verdict: Verdict, now: datetime,
    ) -> Incident:  # fmt: skip
        if verdict.cause:
            return await self._relapse(connection, incident, breaker, verdict, now)
        if not verdict.healthy:
            # Probation is health without a break: a doubtful round starts it again.
            return replace(
                incident,
                probation_until=now + timedelta(seconds=self._config.incident.probation),
            )
        if incident.probation_until is not None and now >= incident.probation_until:
            return await self._resume(connection, incident, now)
        return incident

    # -- the transitions --

    async def _open(
        self, connection: asyncpg.Connection, incident: Incident, cause: str, why: str,
        now: datetime, started_at: datetime | None, fingerprint: str | None = None,
        *, open_breaker: bool | None = None,
    ) -> Incident:  # fmt: skip
        """Stop purchases: breaker OPEN, pause, queue retries, one commit with the audit.

        cancel_only / post_only stop market orders, not the API: the breaker stays closed."""
        exchange = incident.exchange
        breaker = await self._breakers.state(connection, exchange)
        window = timedelta(seconds=_seconds(breaker.monitoring_window_ms))
        soon = incident.last_closed_at is not None and now - incident.last_closed_at < window
        relapses = incident.relapses + 1 if soon else 0
        text = f"{exchange} {cause}: {why}"
        if open_breaker if open_breaker is not None else cause != "trading_restricted":
            await self._breakers.force_state(
                exchange, State.OPEN, ACTOR_AUTOMATION, text, fingerprint, db=connection
            )
            self._count("open_breaker")
        await controls.pause(
            connection, exchange, reason=_pause_reason(exchange, cause),
            estimated_duration=self._config.receiver.pause_estimated_duration,
            actor=ACTOR_AUTOMATION, cause=text, fingerprint=fingerprint,
        )  # fmt: skip
        self._count("pause_purchases")
        await retry_queue.enqueue_retry_eligible(
            connection, exchange=exchange, classifier=self._classifier,
            purchases_config=self._config.purchases, retry_config=self._config.retry,
            cause=text, fingerprint=fingerprint, rng=self._rng,
        )  # fmt: skip
        self._count("queue_retries")
        started = min(started_at or now, now)
        await connection.execute(
            "INSERT INTO liquid_abt.incident_periods (exchange, cause, started_at) VALUES ($1, $2, $3)",
            exchange, cause, started,
        )  # fmt: skip
        recovery = _seconds(breaker.recovery_timeout_ms)
        next_attempt = now + timedelta(
            seconds=backoff(recovery, relapses, self._config.incident.backoff_max)
        ) if relapses else None  # fmt: skip
        await audit.record(
            connection, actor=ACTOR_AUTOMATION, action="incident_opened", result="success",
            exchange=exchange, cause=text, fingerprint=fingerprint,
            detail={"cause": cause, "relapses": relapses, "replica": self._replica},
        )  # fmt: skip
        after_commit(lambda: log.warning("incident opened: purchases stopped", extra={
            "exchange": exchange, "cause": cause, "why": why}))  # fmt: skip
        return replace(
            incident, phase=DOWN, cause=cause, started_at=started, healthy_since=None,
            relapses=relapses, next_attempt_at=next_attempt, probation_until=None,
            lease_until=None, lease_token=None,
        )  # fmt: skip

    async def _relapse(
        self, connection: asyncpg.Connection, incident: Incident, breaker: Snapshot,
        verdict: Verdict, now: datetime,
    ) -> Incident:  # fmt: skip
        """Down again during probation: breaker OPEN, still paused, the next attempt backs off."""
        relapses = incident.relapses + 1
        wait = backoff(
            _seconds(breaker.recovery_timeout_ms), relapses, self._config.incident.backoff_max
        )
        text = f"relapse during probation ({verdict.cause}): {verdict.detail}"
        if verdict.cause != "trading_restricted":
            await self._breakers.force_state(
                incident.exchange, State.OPEN, ACTOR_AUTOMATION, text, db=connection
            )
            self._count("open_breaker")
        await audit.record(
            connection, actor=ACTOR_AUTOMATION, action="incident_relapsed", result="success",
            exchange=incident.exchange, cause=text,
            detail={"relapses": relapses, "next_attempt_in_seconds": wait},
        )  # fmt: skip
        return replace(
            incident, phase=DOWN, cause=verdict.cause or incident.cause, healthy_since=None,
            relapses=relapses, next_attempt_at=now + timedelta(seconds=wait),
            probation_until=None,
        )  # fmt: skip

    async def _resume(
        self, connection: asyncpg.Connection, incident: Incident, now: datetime
    ) -> Incident:
        """Probation passed: purchases resume (never over a manual hold), retries become due."""
        exchange = incident.exchange
        why = f"{incident.cause} over: verified, then healthy for {self._config.incident.probation:g}s"
        resumed = await controls.resume(connection, exchange, actor=ACTOR_AUTOMATION, cause=why)
        self._count("resume_purchases", "skipped" if resumed.refused else "success")
        await retry_queue.make_due(connection, exchange, actor=ACTOR_AUTOMATION, cause=why)
        await connection.execute(
            """UPDATE liquid_abt.incident_periods SET ended_at = $2
               WHERE exchange = $1 AND ended_at IS NULL""",
            exchange, now,
        )  # fmt: skip
        await audit.record(
            connection, actor=ACTOR_AUTOMATION, action="incident_closed", result="success",
            exchange=exchange, cause=why,
            detail={"resume": resumed.message, "started_at": incident.started_at},
        )  # fmt: skip
        after_commit(lambda: log.info("incident closed: purchases resume", extra={
            "exchange": exchange, "resume": resumed.message}))  # fmt: skip
        return replace(
            incident, phase=NORMAL, cause=None, started_at=None, healthy_since=None,
            next_attempt_at=None, probation_until=None, lease_until=None, lease_token=None,
        )  # fmt: skip

    async def verified(
        self, lease: VerificationLease, passed: bool, checks: list[dict[str, Any]], why: str
    ) -> bool:
        """Apply a verification's result; False when its lease was lost meanwhile (fenced)."""
        exchange = lease.exchange
        async with transaction(self._pool) as connection:
            await lock_exchange(connection, exchange)
            incident = await self._load(connection, exchange)
            if incident.lease_token != lease.token or incident.phase != DOWN:
                log.warning("recovery verification result dropped: its lease was lost",
                            extra={"exchange": exchange})  # fmt: skip
                return False
            now = await connection.fetchval("SELECT clock_timestamp()")
            breaker = await self._breakers.state(connection, exchange)
            incident = replace(incident, lease_until=None, lease_token=None)
            await connection.execute(
                "UPDATE liquid_abt.incidents SET last_verification = $2::jsonb WHERE exchange = $1",
                exchange, _json({"passed": passed, "checks": checks, "at": now.isoformat()}),
            )  # fmt: skip
            await audit.record(
                connection, actor=ACTOR_AUTOMATION, action="verify_recovery",
                result="success" if passed else "failure", exchange=exchange, cause=why,
                detail={"checks": checks},
            )  # fmt: skip
            self._count("verify_recovery", "success" if passed else "failure")
            if passed:
                await self._breakers.force_state(
                    exchange, State.CLOSED, ACTOR_AUTOMATION, why, db=connection
                )
                self._count("close_breaker")
                probation = timedelta(seconds=self._config.incident.probation)
                incident = replace(
                    incident, phase=PROBATION, probation_until=now + probation,
                    last_closed_at=now,
                )  # fmt: skip
            else:
                if breaker.state is not State.OPEN:
                    await self._breakers.force_state(
                        exchange, State.OPEN, ACTOR_AUTOMATION, why, db=connection
                    )
                relapses = incident.relapses + 1
                wait = backoff(
                    _seconds(breaker.recovery_timeout_ms), relapses,
                    self._config.incident.backoff_max,
                )  # fmt: skip
                incident = replace(
                    incident, relapses=relapses, next_attempt_at=now + timedelta(seconds=wait)
                )
            await self._save(connection, incident)
        return True

    # -- the API rate --

    async def _decide_rate(
        self, connection: asyncpg.Connection, incident: Incident, verdict: Verdict, now: datetime
    ) -> Incident:
        if verdict.rate_limited:
            incident = replace(incident, rate_limited_seen_at=now)
            if incident.rate_lowered_at is None and not self._config.receiver.dry_run:
                return await self._set_rate(
                    connection, incident, lowered=True, cause=verdict.detail, now=now
                )
            return incident
        quiet = timedelta(seconds=self._config.incident.rate_restore_after)
        seen = incident.rate_limited_seen_at
        if incident.rate_lowered_at is not None and (seen is None or now - seen >= quiet):
            return await self._set_rate(
                connection, incident, lowered=False,
                cause=f"no call rate limited for {quiet.total_seconds():g}s", now=now,
            )  # fmt: skip
        return incident

    async def _set_rate(
        self, connection: asyncpg.Connection, incident: Incident, *, lowered: bool, cause: str,
        now: datetime,
    ) -> Incident:  # fmt: skip
        multiplier = self._config.receiver.lowered_rate_multiplier if lowered else 1.0
        await api_rate.set_rate_multiplier(
            connection, incident.exchange, multiplier, actor=ACTOR_AUTOMATION, cause=cause
        )
        self._count("lower_api_rate" if lowered else "restore_api_rate")
        return replace(incident, rate_lowered_at=now if lowered else None)

    # -- the row --

    async def _load(self, connection: asyncpg.Connection, exchange: str) -> Incident:
        await connection.execute(
            "INSERT INTO liquid_abt.incidents (exchange) VALUES ($1) ON CONFLICT DO NOTHING",
            exchange,
        )
        return Incident.from_row(await connection.fetchrow(_LOCK_SQL, exchange))

    async def _save(self, connection: asyncpg.Connection, incident: Incident) -> None:
        await connection.execute(_WRITE_SQL, *incident.values())

    def _count(self, action: str, result: str = "success") -> None:
        after_commit(lambda: self._actions.actions.labels(action, result).inc())

    def _say_dry_run(self, exchange: str, what: str) -> None:
        if (exchange, what) not in self._dry_run_said:
            self._dry_run_said.add((exchange, what))
            self._actions.actions.labels("open_breaker", "dry_run").inc()
            log.warning("dry run: the incident model would act", extra={
                "exchange": exchange, "would": what})  # fmt: skip


def _pause_reason(exchange: str, cause: str) -> str:
    return {
        "unavailable": f"{exchange} API is not answering",
        "maintenance": f"{exchange} is in maintenance",
        "trading_restricted": f"{exchange} accepts no market orders (cancel_only/post_only)",
    }.get(cause, f"{exchange}: {cause.removeprefix('alert:')} firing")


def _breaker_evidence(verdict: Verdict) -> Evidence:
    # Replicas that see the exchange down, of those probing it, since when.
    return (
        verdict.failing_voters, verdict.voters, verdict.failing_since, verdict.last_failure_at,
        verdict.last_success_at,
    )  # fmt: skip


def _json(value: Any) -> str:
    return json.dumps(value, default=str)


async def read_incidents(
    db: Executor, exchanges: list[str]
) -> dict[str, tuple[Incident, dict[str, Any] | None]]:
    """Each exchange's incident and its last recovery verification, for the admin status: a
    plain read, no lock, no row created (an exchange never in an incident reads as normal)."""
    rows = await db.fetch(
        f"""SELECT {_COLUMNS}, last_verification FROM liquid_abt.incidents
            WHERE exchange = ANY($1::text[])""",
        exchanges,
    )
    found = {
        row["exchange"]: (
            Incident(**{k: v for k, v in dict(row).items() if k != "last_verification"}),
            json.loads(row["last_verification"]) if row["last_verification"] else None,
        )
        for row in rows
    }
    return {exchange: found.get(exchange, (Incident(exchange), None)) for exchange in exchanges}
