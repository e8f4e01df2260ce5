"""The incident model against a real PostgreSQL: quorum, hysteresis, verified and patient
recovery, relapses, rate limiting, and atomic decisions.

Probe rounds are built directly (the Kraken-compatible server has its own tests), and time is
moved by ageing the incident row's timestamps, never by sleeping.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from exporter.config import parse_config
from exporter.controls import pause
from exporter.controls.breaker import BreakerStore
from exporter.database.pool import Connection, create_pool
from exporter.runbook.alert_states import AlertState
from exporter.runbook.evidence import Observation, observe_round
from exporter.runbook.incident import IncidentModel, VerificationLease
from exporter.runbook.metrics import ActionMetrics, IncidentMetrics
from exporter.runbook.probing import PLATFORM_WATCH_INTERVAL, PLATFORM_WATCH_QUIET, IncidentLoop
from exporter.runbook.recovery import verify
from exporter.signals.exchange import CallResult, Check, RecoveryResult, RoundResult
from exporter.signals.kraken.integration import INTEGRATION
from exporter.signals.kraken.outcomes import Outcome

KRAKEN = "kraken"
CONFIG = parse_config({
    "breaker": {"failure_threshold": 2, "recovery_timeout": "30s"},
    "incident": {"probation": "90s", "rate_restore_after": "30s"},
})  # fmt: skip
ENDPOINTS = ("SystemStatus", "Ticker", "Depth", "Time")
KRAKEN_SETTINGS = INTEGRATION.settings(CONFIG)


def round_of(*outcomes: Outcome, status: str | None = "online") -> RoundResult:
    """A probe round whose calls end with these outcomes (success for the rest)."""
    calls = [CallResult(e, Outcome.SUCCESS) for e in ENDPOINTS]
    for i, outcome in enumerate(outcomes):
        calls[i] = CallResult(ENDPOINTS[i], outcome, detail=outcome.value)
    failures = [c for c in calls if c.outcome is not Outcome.SUCCESS]
    first = calls[0].outcome is Outcome.SUCCESS
    return RoundResult(
        not failures, failures[0].outcome.value if failures else "success", tuple(calls),
        status if first else None,
    )  # fmt: skip


HEALTHY = round_of()
DOWN = round_of(Outcome.NETWORK_ERROR)
HANGING = round_of(Outcome.TIMEOUT)
RATE_LIMITED = round_of(Outcome.RATE_LIMITED)
MAINTENANCE = round_of(Outcome.SUCCESS, Outcome.SERVICE_UNAVAILABLE, status="maintenance")
CANCEL_ONLY = round_of(status="cancel_only")
AUTH = RoundResult(
    False, "auth_error", (*HEALTHY.calls, CallResult("Balance", Outcome.AUTH_ERROR)), "online"
)


@dataclass
class Replica:
    model: IncidentModel
    metrics: IncidentMetrics
    actions: ActionMetrics

    async def sees(self, result: RoundResult, times: int = 1) -> tuple:
        outcome: tuple = (None, None)
        for _ in range(times):
            outcome = await self.model.observe(KRAKEN, result)
        return outcome

    def isolated(self) -> float:
        return self.metrics.isolated.labels(KRAKEN)._value.get()  # test-only read of a gauge


@pytest.fixture
async def pool(database: Connection) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database, CONFIG.database)
    yield pool
    await pool.close()


def make_replica(pool: asyncpg.Pool, name: str, config=CONFIG) -> Replica:
    registry = CollectorRegistry()
    breakers = BreakerStore(pool, config, registry)
    actions = ActionMetrics(registry)
    metrics = IncidentMetrics(registry, list(config.exchanges))
    return Replica(
        IncidentModel(pool, config, breakers, actions, metrics, replica=name), metrics, actions
    )


@pytest.fixture
def a(pool: asyncpg.Pool) -> Replica:
    return make_replica(pool, "replica-a")


@pytest.fixture
def b(pool: asyncpg.Pool) -> Replica:
    return make_replica(pool, "replica-b")


async def state(db: asyncpg.Connection) -> dict:
    row = await db.fetchrow(
        """SELECT coalesce(i.phase, 'normal') AS phase, i.cause, i.relapses,
                  coalesce(b.state, 'closed') AS breaker,
                  coalesce(c.purchases_paused, false) AS paused,
                  coalesce(c.api_rate_multiplier, 1)::float8 AS rate
           FROM (SELECT 'kraken' AS exchange) x
           LEFT JOIN liquid_abt.incidents i USING (exchange)
           LEFT JOIN liquid_abt.circuit_breakers b USING (exchange)
           LEFT JOIN liquid_abt.exchange_controls c USING (exchange)"""
    )
    return dict(row)


async def count(db: asyncpg.Connection, action: str) -> int:
    return int(
        await db.fetchval("SELECT count(*) FROM liquid_abt.audit_log WHERE action = $1", action)
    )


async def age(db: asyncpg.Connection, column: str, seconds: float) -> None:
    """As if `seconds` had gone by since `column` was set."""
    await db.execute(
        f"UPDATE liquid_abt.incidents SET {column} = {column} - make_interval(secs => $1)", seconds
    )


async def seed_failures(db: asyncpg.Connection) -> None:
    await db.execute(
        """INSERT INTO bitcoin_purchases (tenant_id, amount_aud, status, failure_reason,
                                          exchange_provider, created_at)
           SELECT 't' || i, 100, 'failed', 'EService:Unavailable', 'kraken', now() - interval '1 minute'
           FROM generate_series(1, 3) i"""
    )


async def ok_verifier() -> RecoveryResult:
    return RecoveryResult(True, (Check("price", True, "last trade 100000"),))


async def crossed_book() -> RecoveryResult:
    return RecoveryResult(False, (Check("order_book", False, "best bid 101 >= best ask 100"),))


async def open_incident(a: Replica, b: Replica, db: asyncpg.Connection) -> None:
    await a.sees(DOWN, 2)
    await b.sees(DOWN, 2)
    assert (await state(db))["phase"] == "down"


async def recover(a: Replica, b: Replica, db: asyncpg.Connection, verifier=ok_verifier) -> bool:
    """Healthy rounds for longer than the recovery timeout; returns whether it verified."""
    await a.sees(HEALTHY)
    await b.sees(HEALTHY)
    await age(db, "healthy_since", 31)
    await age(db, "next_attempt_at", 10_000)
    _, lease = await a.sees(HEALTHY)
    assert isinstance(lease, VerificationLease)
    return await verify(a.model, lease, verifier)


# ---- quorum and hysteresis ----------------------------------------------------------------------


async def test_down_for_every_replica_stops_purchases_in_one_commit(
    a: Replica, b: Replica, db: asyncpg.Connection
) -> None:
    await seed_failures(db)
    await b.sees(HEALTHY)
    await a.sees(DOWN, 2)
    assert (await state(db))["phase"] == "normal", "one replica alone is not evidence"
    assert a.isolated() == 1, "B answered its last round"
    await b.sees(HANGING)
    assert (await state(db))["phase"] == "normal"
    await b.sees(HANGING)
    assert await state(db) == {
        "phase": "down", "cause": "unavailable", "relapses": 0, "breaker": "open",
        "paused": True, "rate": 1.0,
    }  # fmt: skip
    assert await db.fetchval("SELECT count(*) FROM liquid_abt.retry_queue") == 3
    assert await db.fetchval("SELECT count(*) FROM liquid_abt.incident_periods") == 1
    opened = await db.fetchrow(
        "SELECT * FROM liquid_abt.audit_log WHERE action = 'incident_opened'"
    )
    assert "2 of 2 live replicas" in opened["cause"]


async def test_one_replica_that_alone_sees_failures_stops_nothing_and_says_so(
    a: Replica, b: Replica, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    await b.sees(HEALTHY)
    await a.sees(DOWN, 5)
    await b.sees(HEALTHY, 5)
    assert (await state(db))["phase"] == "normal"
    assert a.isolated() == 1 and b.isolated() == 0
    warnings = [r for r in caplog.records if "only this replica" in r.getMessage()]
    assert len(warnings) == 1, "one warning when it starts, not one per round"
    await a.sees(HEALTHY)
    assert a.isolated() == 0


async def test_sporadic_failures_never_open(a: Replica, b: Replica, db: asyncpg.Connection) -> None:
    for _ in range(20):  # one failed round in five, never two in a row
        await a.sees(HANGING)
        await b.sees(HEALTHY)
        for _ in range(4):
            await a.sees(HEALTHY)
    assert (await state(db))["phase"] == "normal"
    assert await count(db, "breaker_transition") == 0


async def test_rate_limiting_lowers_the_rate_and_never_stops_purchases(
    a: Replica, b: Replica, db: asyncpg.Connection
) -> None:
    await a.sees(RATE_LIMITED, 10)
    await b.sees(RATE_LIMITED, 10)
    assert await state(db) == {
        "phase": "normal", "cause": None, "relapses": 0, "breaker": "closed", "paused": False,
        "rate": 0.5,
    }  # fmt: skip
    await a.sees(HEALTHY)
    await b.sees(HEALTHY)
    assert (await state(db))["rate"] == 0.5, "not before rate_restore_after without a rate limit"
    await age(db, "rate_limited_seen_at", 31)
    await a.sees(HEALTHY)
    assert (await state(db))["rate"] == 1.0
    assert await count(db, "set_api_rate_multiplier") == 2


async def test_our_own_credentials_refused_is_auth_evidence_not_an_outage(
    a: Replica, b: Replica, db: asyncpg.Connection
) -> None:
    await a.sees(AUTH, 5)
    await b.sees(AUTH, 5)
    assert (await state(db))["phase"] == "normal"
    row = await db.fetchrow(
        "SELECT available, auth_failed FROM liquid_abt.probe_observations LIMIT 1"
    )
    assert (row["available"], row["auth_failed"]) == (True, True)


async def test_maintenance_stops_purchases_as_maintenance(
    a: Replica, b: Replica, db: asyncpg.Connection
) -> None:
    await b.sees(HEALTHY)
    await a.sees(MAINTENANCE)
    assert (await state(db))["phase"] == "normal", "every replica must read it"
    await b.sees(MAINTENANCE)
    current = await state(db)
    assert (current["phase"], current["cause"], current["breaker"]) == (
        "down",
        "maintenance",
        "open",
    )


async def test_cancel_only_pauses_without_opening_the_breaker(
    a: Replica, db: asyncpg.Connection
) -> None:
    await a.sees(CANCEL_ONLY)
    current = await state(db)
    assert (current["cause"], current["breaker"], current["paused"]) == (
        "trading_restricted", "closed", True,
    )  # fmt: skip


async def test_the_platforms_failing_calls_are_evidence_when_nothing_probes(
    pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    lone = make_replica(pool, "no-probe")
    await db.execute(
        """INSERT INTO api_call_logs (provider, endpoint, success, error_message)
           SELECT 'kraken', 'placeOrder', false, 'connect ECONNREFUSED' FROM generate_series(1, 3)"""
    )
    await lone.model.evaluate(KRAKEN)
    assert (await state(db))["phase"] == "down"


async def platform_fails(db: asyncpg.Connection, calls: int = 3) -> None:
    await db.execute(
        """INSERT INTO api_call_logs (provider, endpoint, success, error_message)
           SELECT 'kraken', 'placeOrder', false, 'EService:Unavailable'
           FROM generate_series(1, $1)""",
        calls,
    )


async def test_the_platforms_failing_calls_corroborate_one_unanswered_round_per_replica(
    a: Replica, b: Replica, db: asyncpg.Connection
) -> None:
    assert not await a.model.platform_failing(KRAKEN)
    await a.sees(HEALTHY)
    await b.sees(HEALTHY)
    await platform_fails(db)
    assert await a.model.platform_failing(KRAKEN), "the platform watch's reading"
    await a.sees(DOWN)
    assert (await state(db))["phase"] == "normal", "b still answered"
    await b.sees(HANGING)
    current = await state(db)
    assert (current["phase"], current["breaker"], current["paused"]) == ("down", "open", True)


@dataclass
class ScriptedProbe:
    """The probe's rounds as the test says (the Kraken probe has its own tests)."""

    result: RoundResult

    async def run_once(self) -> RoundResult:
        return self.result

    async def recovery_check(self) -> RecoveryResult:
        return await ok_verifier()


def woken(loop: IncidentLoop) -> bool:
    """Whether the loop's next wait returns at once (test-only read); clears it."""
    event = loop._wakeup._event
    was = event.is_set()
    event.clear()
    return was


async def test_the_platform_watch_wakes_a_waiting_loop_once_when_the_platform_fails(
    a: Replica, db: asyncpg.Connection
) -> None:
    probe = ScriptedProbe(HEALTHY)
    loop = IncidentLoop(KRAKEN, a.model, KRAKEN_SETTINGS, probe)
    # Nothing failed: the quiet cadence; the newest call unanswered: every second.
    assert await loop.watch() == PLATFORM_WATCH_QUIET and not woken(loop)
    await platform_fails(db, 1)
    assert await loop.watch() == PLATFORM_WATCH_INTERVAL and not woken(loop)
    await platform_fails(db, 2)
    await loop.watch()
    assert not woken(loop), "not before its first round: it runs one anyway"
    await db.execute("DELETE FROM api_call_logs")
    await loop.watch()
    assert await loop.iteration() == pytest.approx(KRAKEN_SETTINGS.probe_interval, rel=0.11)
    await platform_fails(db)
    await loop.watch()
    assert woken(loop), "waiting, its last round answered: the next one runs at once"
    await loop.watch()
    assert not woken(loop), "once per episode"
    probe.result = DOWN
    await loop.iteration()
    await db.execute("DELETE FROM api_call_logs")
    await loop.watch()
    await platform_fails(db)
    await loop.watch()
    assert not woken(loop), "its last round failed: the doubt interval brings the next one"


async def test_an_admin_resume_during_an_incident_stops_again_while_the_exchange_is_down(
    a: Replica, b: Replica, db: asyncpg.Connection
) -> None:
    await open_incident(a, b, db)
    resumed = await pause.resume(db, KRAKEN, actor="admin", cause="try again", manual=True)
    assert resumed.changed and not (await state(db))["paused"]
    await a.sees(DOWN)
    current = await state(db)
    assert (current["phase"], current["paused"], current["relapses"]) == ("down", True, 0)
    assert await count(db, "pause_purchases") == 2


# ---- recovery ------------------------------------------------------------------------------------


async def test_recovery_is_verified_then_probation_then_resume(
    a: Replica, b: Replica, db: asyncpg.Connection
) -> None:
    await seed_failures(db)
    await open_incident(a, b, db)
    await a.sees(HEALTHY)
    await b.sees(HEALTHY)
    _, lease = await a.sees(HEALTHY)
    assert lease is None, "not before the recovery timeout of health"
    assert (await state(db))["breaker"] == "open", "one good round closes nothing"

    assert await recover(a, b, db)
    current = await state(db)
    assert (current["phase"], current["breaker"], current["paused"]) == (
        "probation",
        "closed",
        True,
    )
    await a.sees(HEALTHY)
    assert (await state(db))["paused"], "purchases wait for the probation period"
    await age(db, "probation_until", 91)
    await b.sees(HEALTHY)
    assert await state(db) == {
        "phase": "normal", "cause": None, "relapses": 0, "breaker": "closed", "paused": False,
        "rate": 1.0,
    }  # fmt: skip
    due = await db.fetchval(
        "SELECT count(*) FROM liquid_abt.retry_queue WHERE next_attempt_at <= now()"
    )
    assert due == 3
    assert (
        await db.fetchval("SELECT count(*) FROM liquid_abt.incident_periods WHERE ended_at IS NULL")
        == 0
    )
    transitions = await db.fetch(
        "SELECT detail->>'from' AS f, detail->>'to' AS t FROM liquid_abt.audit_log WHERE action = 'breaker_transition' ORDER BY id"
    )
    assert [(r["f"], r["t"]) for r in transitions] == [
        ("CLOSED", "OPEN"), ("OPEN", "HALF_OPEN"), ("HALF_OPEN", "CLOSED"),
    ]  # fmt: skip


async def test_a_failed_verification_stays_open_and_backs_off(
    a: Replica, b: Replica, db: asyncpg.Connection
) -> None:
    await open_incident(a, b, db)
    assert not await recover(a, b, db, verifier=crossed_book)
    current = await state(db)
    assert (current["phase"], current["breaker"], current["paused"]) == ("down", "open", True)
    wait = await db.fetchval(
        "SELECT extract(epoch FROM next_attempt_at - now()) FROM liquid_abt.incidents"
    )
    assert 55 < wait <= 60, "the next attempt waits twice the recovery timeout"
    _, lease = await a.sees(HEALTHY)
    assert lease is None, "healthy, but backing off"
    failure = await db.fetchrow(
        "SELECT cause FROM liquid_abt.audit_log WHERE action = 'verify_recovery'"
    )
    assert "best bid 101 >= best ask 100" in failure["cause"]


async def test_a_relapse_in_probation_reopens_without_a_second_pause_and_backs_off(
    a: Replica, b: Replica, db: asyncpg.Connection
) -> None:
    await open_incident(a, b, db)
    assert await recover(a, b, db)
    await a.sees(DOWN, 2)
    await b.sees(DOWN, 2)
    current = await state(db)
    assert (current["phase"], current["breaker"], current["relapses"]) == ("down", "open", 1)
    assert await count(db, "pause_purchases") == 1, "at most one pause"
    assert await count(db, "resume_purchases") == 0, "no resume into a sick exchange"
    wait = await db.fetchval(
        "SELECT extract(epoch FROM next_attempt_at - now()) FROM liquid_abt.incidents"
    )
    assert 55 < wait <= 60


async def test_a_verification_that_lost_its_lease_is_dropped(
    a: Replica, b: Replica, db: asyncpg.Connection
) -> None:
    await open_incident(a, b, db)
    await a.sees(HEALTHY)
    await b.sees(HEALTHY)
    await age(db, "healthy_since", 31)
    _, lease = await a.sees(HEALTHY)
    assert lease is not None
    # The lease ran out while the checks were slow, and another replica took the next one.
    await db.execute("UPDATE liquid_abt.incidents SET lease_token = gen_random_uuid()")
    assert not await verify(a.model, lease, ok_verifier)
    assert (await state(db))["phase"] == "down"
    assert await count(db, "verify_recovery") == 0


async def test_an_admin_hold_on_the_breaker_is_never_verified_away(
    a: Replica, b: Replica, db: asyncpg.Connection
) -> None:
    await open_incident(a, b, db)
    await db.execute("UPDATE liquid_abt.circuit_breakers SET manual_hold = true")
    await a.sees(HEALTHY)
    await b.sees(HEALTHY)
    await age(db, "healthy_since", 3600)
    for _ in range(5):
        _, lease = await a.sees(HEALTHY)
        assert lease is None
    assert (await state(db))["breaker"] == "open"
    assert await count(db, "breaker_force_state") == 0, "no refusal written per attempt"


# ---- alerts as evidence --------------------------------------------------------------------------


def down_alert(fingerprint: str = "fp") -> AlertState:
    return AlertState(1, fingerprint, "firing", None, "ExchangeApiDown", KRAKEN, "kraken is down")


async def test_an_alert_the_probes_contradict_stops_nothing(
    a: Replica, b: Replica, pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    await a.sees(HEALTHY)
    await b.sees(HEALTHY)
    async with pool.acquire() as connection, connection.transaction():
        why = await a.model.on_outage_alert(connection, down_alert())
    assert why is not None and "contradict" in why
    assert (await state(db))["phase"] == "normal"


async def test_an_alert_opens_when_nothing_probes(
    pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    lone = make_replica(pool, "no-probe")
    async with pool.acquire() as connection, connection.transaction():
        assert await lone.model.on_outage_alert(connection, down_alert("fp-1")) is None
    current = await state(db)
    assert (current["phase"], current["cause"], current["breaker"]) == (
        "down", "alert:ExchangeApiDown", "open",
    )  # fmt: skip
    pause = await db.fetchrow(
        "SELECT fingerprint FROM liquid_abt.audit_log WHERE action = 'pause_purchases'"
    )
    assert pause["fingerprint"] == "fp-1"


# ---- atomic --------------------------------------------------------------------------------------


async def test_breaker_pause_and_retries_commit_together_or_not_at_all(
    a: Replica, b: Replica, db: asyncpg.Connection
) -> None:
    await seed_failures(db)
    await db.execute("""
        CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'injected' USING ERRCODE = '40001'; END $$;
        CREATE TRIGGER refuse_queue BEFORE INSERT ON liquid_abt.retry_queue
            FOR EACH ROW EXECUTE FUNCTION refuse();
    """)
    await b.sees(HEALTHY)
    await a.sees(DOWN, 2)
    with pytest.raises(asyncpg.exceptions.SerializationError):
        await b.sees(DOWN)
        await b.sees(DOWN)
    assert await state(db) == {
        "phase": "normal", "cause": None, "relapses": 0, "breaker": "closed", "paused": False,
        "rate": 1.0,
    }  # fmt: skip
    assert await count(db, "breaker_transition") == 0
    opened = a.actions.actions.labels("open_breaker", "success")._value.get()
    assert opened == 0, "nothing counted for a decision that rolled back"
    await db.execute("DROP TRIGGER refuse_queue ON liquid_abt.retry_queue")
    await b.sees(DOWN)
    current = await state(db)
    assert (current["phase"], current["breaker"], current["paused"]) == ("down", "open", True)
    assert await db.fetchval("SELECT count(*) FROM liquid_abt.retry_queue") == 3


# ---- the pure twins ------------------------------------------------------------------------------


async def test_observe_round_is_the_sql_upsert_as_a_pure_function(
    a: Replica, db: asyncpg.Connection
) -> None:
    previous = None
    for result in (HEALTHY, DOWN, HANGING, MAINTENANCE, RATE_LIMITED, AUTH, DOWN, HEALTHY):
        await a.sees(result)
        row = await db.fetchrow(
            "SELECT * FROM liquid_abt.probe_observations WHERE replica = 'replica-a'"
        )
        recorded = Observation.from_row(
            {k: row[k] for k in Observation.__dataclass_fields__}  # type: ignore[arg-type]
        )
        expected = observe_round(previous, result, "replica-a", recorded.observed_at)
        if previous is not None and previous.failing_since is not None and not result.available:
            assert recorded.failing_since == previous.failing_since
        assert recorded == expected
        previous = recorded


# ---- dry run -------------------------------------------------------------------------------------


async def test_dry_run_records_what_it_would_do_once_and_changes_nothing(
    pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    await seed_failures(db)
    config = CONFIG.model_copy(
        update={"receiver": CONFIG.receiver.model_copy(update={"dry_run": True})}
    )
    lone = make_replica(pool, "replica-a", config)
    await lone.sees(DOWN, 5)
    current = await state(db)
    assert (current["phase"], current["breaker"], current["paused"], current["rate"]) == (
        "normal", "closed", False, 1.0,
    )  # fmt: skip
    assert await db.fetchval("SELECT count(*) FROM liquid_abt.incidents") == 0
    assert await db.fetchval("SELECT count(*) FROM liquid_abt.retry_queue") == 0
    dry = await db.fetch(
        "SELECT action, cause FROM liquid_abt.audit_log WHERE result = 'dry_run' ORDER BY id"
    )
    assert [r["action"] for r in dry] == ["open_breaker", "pause_purchases", "queue_retries"]
    assert dry[0]["cause"].startswith("kraken refuses connections on 1 of 1 replicas")
    assert lone.actions.actions.labels("open_breaker", "dry_run")._value.get() == 1
