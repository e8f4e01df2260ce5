"""The circuit breaker against a real PostgreSQL: the runbook's rules, holds, two replicas racing.

Time never passes by sleeping: tests move the row's timestamps into the past instead.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from exporter.config import parse_config
from exporter.controls.breaker import (
    BreakerStore,
    InvalidBreakerConfig,
    InvalidState,
    State,
    UnknownExchange,
)
from exporter.database.pool import Connection
from tests.helpers import wait_until

KRAKEN = "kraken"
CONFIG = parse_config(
    {
        "exchanges": [KRAKEN, "independent_reserve"],
        "breaker": {"failure_threshold": 3, "check_interval": "1h"},
    }
)
TRANSITIONS = "liquid_abt_circuit_breaker_transitions_total"


async def _pool(database: Connection) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(database.dsn, min_size=1, max_size=8)
    assert pool is not None
    return pool


@pytest.fixture
async def store(database: Connection) -> AsyncIterator[BreakerStore]:
    pool = await _pool(database)
    yield BreakerStore(pool, CONFIG, CollectorRegistry())
    await pool.close()


@pytest.fixture
async def replicas(database: Connection) -> AsyncIterator[tuple[BreakerStore, BreakerStore]]:
    """Two stores with their own pools and registries, as two replicas of the exporter."""
    pools = [await _pool(database), await _pool(database)]
    yield (
        BreakerStore(pools[0], CONFIG, CollectorRegistry()),
        BreakerStore(pools[1], CONFIG, CollectorRegistry()),
    )
    for pool in pools:
        await pool.close()


async def fail(store: BreakerStore, times: int = 1, exchange: str = KRAKEN) -> list:
    made = []
    for _ in range(times):
        made += await store.record_result(exchange, False, "EService:Unavailable")
    return made


async def open_breaker(store: BreakerStore) -> None:
    await fail(store, 3)
    assert (await store.status(KRAKEN))["state"] == "OPEN"


async def age(db: asyncpg.Connection, column: str, seconds: float, exchange: str = KRAKEN) -> None:
    """Move one timestamp of the row into the past, as if `seconds` had gone by."""
    await db.execute(
        f"""UPDATE liquid_abt.circuit_breakers
            SET {column} = {column} - make_interval(secs => $2) WHERE exchange = $1""",
        exchange, seconds,
    )  # fmt: skip


async def audited(db: asyncpg.Connection, exchange: str = KRAKEN) -> list[tuple[str, str]]:
    """(from, to) of every transition in the audit log, oldest first."""
    rows = await db.fetch(
        """SELECT detail->>'from' AS f, detail->>'to' AS t FROM liquid_abt.audit_log
           WHERE action = 'breaker_transition' AND exchange = $1 ORDER BY id""",
        exchange,
    )
    return [(r["f"], r["t"]) for r in rows]


async def actions(db: asyncpg.Connection) -> list[tuple[str, str, str]]:
    """(action, actor, result) of every audit entry, oldest first."""
    rows = await db.fetch("SELECT action, actor, result FROM liquid_abt.audit_log ORDER BY id")
    return [(r["action"], r["actor"], r["result"]) for r in rows]


def counted(
    store: BreakerStore, from_state: State, to_state: State, exchange: str = KRAKEN
) -> float:
    """The store's transitions counter as a scrape would read it."""
    labels = {"exchange": exchange, "from_state": from_state.value, "to_state": to_state.value}
    for family in store.metrics.transitions.collect():
        for sample in family.samples:
            if sample.name == TRANSITIONS and sample.labels == labels:
                return sample.value
    raise AssertionError(f"no sample {TRANSITIONS}{labels}")


# ---- rows, defaults, errors -------------------------------------------------------------------


async def test_first_use_creates_the_row_with_the_configured_defaults(
    store: BreakerStore, db: asyncpg.Connection
) -> None:
    assert await db.fetchval("SELECT count(*) FROM liquid_abt.circuit_breakers") == 0
    status = await store.status(KRAKEN)
    assert status["state"] == "CLOSED"
    assert status["failureCount"] == 0 and status["failureRate"] == 0.0
    assert status["lastFailureTime"] is None and status["manualHold"] is False
    assert status["config"] == {
        "failureThreshold": 3, "recoveryTimeout": 30000, "monitoringWindow": 300000,
    }  # fmt: skip
    assert await db.fetchval("SELECT state FROM liquid_abt.circuit_breakers") == "closed"


async def test_an_existing_row_keeps_its_own_settings(
    store: BreakerStore, db: asyncpg.Connection
) -> None:
    await db.execute(
        """INSERT INTO liquid_abt.circuit_breakers
           (exchange, failure_threshold, recovery_timeout_ms) VALUES ('kraken', 7, 45000)"""
    )
    config = (await store.status(KRAKEN))["config"]
    assert config["failureThreshold"] == 7 and config["recoveryTimeout"] == 45000


async def test_status_all_lists_every_configured_exchange_in_order(store: BreakerStore) -> None:
    assert [s["exchange"] for s in await store.status_all()] == [KRAKEN, "independent_reserve"]


async def test_unknown_exchanges_are_refused_by_every_call(
    store: BreakerStore, db: asyncpg.Connection
) -> None:
    calls = [
        store.status("binance"),
        store.record_result("binance", False, "x"),
        store.force_state("binance", "OPEN", "admin", "x"),
        store.reset("binance", "admin", "x"),
        store.update_config("binance", failure_threshold=2),
    ]
    for call in calls:
        with pytest.raises(UnknownExchange, match=r"unknown exchange 'binance': configured are"):
            await call
    assert await db.fetchval("SELECT count(*) FROM liquid_abt.circuit_breakers") == 0


async def test_the_transitions_counter_starts_with_every_pair_at_zero(store: BreakerStore) -> None:
    for exchange in CONFIG.exchanges:
        for a in State:
            for b in State:
                if a is not b:
                    assert counted(store, a, b, exchange) == 0
    samples = [
        s for m in store.metrics.transitions.collect() for s in m.samples if s.name == TRANSITIONS
    ]
    assert len(samples) == 6 * len(CONFIG.exchanges)


# ---- CLOSED: threshold, window, failure rate ----------------------------------------------


async def test_opens_when_failures_reach_the_threshold(
    store: BreakerStore, db: asyncpg.Connection
) -> None:
    assert await fail(store, 2) == []
    assert (await store.status(KRAKEN))["failureCount"] == 2
    [transition] = await fail(store)
    assert (transition.from_state, transition.to_state) == (State.CLOSED, State.OPEN)
    assert transition.actor == "probe"
    assert "3 failures" in transition.cause and "EService:Unavailable" in transition.cause
    status = await store.status(KRAKEN)
    assert status["state"] == "OPEN" and status["failureCount"] == 3
    assert status["lastFailureTime"] is not None and status["nextAttemptTime"] is not None
    entry = await db.fetchrow(
        "SELECT * FROM liquid_abt.audit_log WHERE id = $1", transition.audit_id
    )
    assert (entry["actor"], entry["action"], entry["cause"]) == (
        "probe", "breaker_transition", transition.cause,
    )  # fmt: skip
    assert counted(store, State.CLOSED, State.OPEN) == 1


async def test_failure_rate_is_failures_over_calls_since_the_window_opened(
    store: BreakerStore,
) -> None:
    # Successes before the first failure open no window: there is nothing to count yet.
    await store.record_result(KRAKEN, True, "ok")
    assert (await store.status(KRAKEN))["callCount"] == 0
    await fail(store)
    for _ in range(3):
        await store.record_result(KRAKEN, True, "ok")
    status = await store.status(KRAKEN)
    assert (status["failureCount"], status["callCount"]) == (1, 4)
    assert status["failureRate"] == pytest.approx(0.25)
    assert status["lastSuccessTime"] is not None and status["windowStartedAt"] is not None


async def test_a_failure_after_the_window_restarts_the_count(
    store: BreakerStore, db: asyncpg.Connection
) -> None:
    await fail(store, 2)
    await age(db, "window_started_at", 300.5)  # the 5-minute window has just ended
    assert (await store.status(KRAKEN))["failureCount"] == 0  # on read, before any write
    assert await fail(store) == []
    status = await store.status(KRAKEN)
    assert (status["state"], status["failureCount"], status["callCount"]) == ("CLOSED", 1, 1)
    assert len(await fail(store, 2)) == 1  # three in the new window


async def test_check_clears_an_expired_window_in_the_row(
    store: BreakerStore, db: asyncpg.Connection
) -> None:
    """The platform and the controls collector read the row, not the API."""
    await fail(store, 2)
    await age(db, "window_started_at", 299)
    await store.check()
    assert await db.fetchval("SELECT failure_count FROM liquid_abt.circuit_breakers") == 2
    await age(db, "window_started_at", 2)
    assert await store.check() == []
    row = await db.fetchrow("SELECT * FROM liquid_abt.circuit_breakers")
    assert (row["failure_count"], row["call_count"], row["window_started_at"]) == (0, 0, None)
    assert await audited(db) == []


async def test_exchanges_have_separate_breakers(store: BreakerStore) -> None:
    await fail(store, 3, exchange="independent_reserve")
    assert (await store.status("independent_reserve"))["state"] == "OPEN"
    assert (await store.status(KRAKEN))["state"] == "CLOSED"


# ---- OPEN, HALF_OPEN: recovery timeout and trial call -------------------------------------


async def test_results_while_open_move_only_the_timestamps(
    store: BreakerStore, db: asyncpg.Connection
) -> None:
    await open_breaker(store)
    before = await store.status(KRAKEN)
    assert await fail(store, 5) == []
    assert await store.record_result(KRAKEN, True, "ok") == []
    after = await store.status(KRAKEN)
    assert (after["state"], after["failureCount"]) == ("OPEN", 3)
    assert after["lastFailureTime"] > before["lastFailureTime"]
    assert after["lastSuccessTime"] is not None


async def test_check_half_opens_only_after_the_recovery_timeout(
    store: BreakerStore, db: asyncpg.Connection
) -> None:
    await open_breaker(store)
    await age(db, "state_changed_at", 29)
    assert await store.check() == []
    await age(db, "state_changed_at", 1.5)
    [transition] = await store.check()
    assert (transition.from_state, transition.to_state) == (State.OPEN, State.HALF_OPEN)
    assert transition.actor == "automation" and "30000 ms" in transition.cause
    assert await store.check() == []
    assert await audited(db) == [("CLOSED", "OPEN"), ("OPEN", "HALF_OPEN")]


async def test_reading_an_overdue_breaker_half_opens_it(
    store: BreakerStore, db: asyncpg.Connection
) -> None:
    await open_breaker(store)
    await age(db, "state_changed_at", 31)
    assert (await store.status(KRAKEN))["state"] == "HALF_OPEN"
    assert await db.fetchval("SELECT state FROM liquid_abt.circuit_breakers") == "half_open"


async def test_a_successful_trial_call_closes_and_clears_the_counts(
    store: BreakerStore, db: asyncpg.Connection
) -> None:
    await open_breaker(store)
    await age(db, "state_changed_at", 31)
    await store.check()
    [transition] = await store.record_result(KRAKEN, True, "probe round: success")
    assert (transition.from_state, transition.to_state) == (State.HALF_OPEN, State.CLOSED)
    assert transition.cause == "trial call succeeded: probe round: success"
    status = await store.status(KRAKEN)
    assert (status["state"], status["failureCount"], status["failureRate"]) == ("CLOSED", 0, 0.0)


async def test_a_failed_trial_call_opens_again_and_restarts_the_timer(
    store: BreakerStore, db: asyncpg.Connection
) -> None:
    await open_breaker(store)
    await age(db, "state_changed_at", 31)
    await store.check()
    [transition] = await fail(store)
    assert (transition.from_state, transition.to_state) == (State.HALF_OPEN, State.OPEN)
    assert transition.cause.startswith("trial call failed")
    assert await store.check() == []  # a fresh recovery timeout
    assert (await store.status(KRAKEN))["failureCount"] == 4


async def test_a_result_after_the_recovery_timeout_is_the_trial_call(
    store: BreakerStore, db: asyncpg.Connection
) -> None:
    await open_breaker(store)
    await age(db, "state_changed_at", 31)
    made = await store.record_result(KRAKEN, True, "probe round: success")
    assert [(t.from_state, t.to_state, t.actor) for t in made] == [
        (State.OPEN, State.HALF_OPEN, "automation"),
        (State.HALF_OPEN, State.CLOSED, "probe"),
    ]
    assert counted(store, State.OPEN, State.HALF_OPEN) == 1
    assert counted(store, State.HALF_OPEN, State.CLOSED) == 1


async def test_the_checker_loop_half_opens_in_the_background(
    database: Connection, db: asyncpg.Connection
) -> None:
    pool = await _pool(database)
    fast = parse_config({"breaker": {"failure_threshold": 1, "check_interval": "10ms"}})
    store = BreakerStore(pool, fast, CollectorRegistry())
    task = asyncio.create_task(store.run_checker())
    try:
        await fail(store)
        await age(db, "state_changed_at", 31)

        async def half_open() -> bool:  # the row, not status(): reading would do it itself
            state = await db.fetchval("SELECT state FROM liquid_abt.circuit_breakers")
            return state == "half_open"

        await wait_until(half_open, timeout=10)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await pool.close()


# ---- forcing, holds, reset, settings --------------------------------------------------------


async def test_forcing_the_current_state_is_a_silent_no_op(
    store: BreakerStore, db: asyncpg.Connection
) -> None:
    assert await store.force_state(KRAKEN, "CLOSED", "automation", "x") is None
    first = await store.force_state(KRAKEN, "OPEN", "automation", "ExchangeApiDown", "fp1")
    assert first is not None and first.to_state is State.OPEN
    assert await store.force_state(KRAKEN, "open", "automation", "ExchangeApiDown", "fp1") is None
    assert await actions(db) == [("breaker_transition", "automation", "success")]
    fingerprint = await db.fetchval("SELECT fingerprint FROM liquid_abt.audit_log")
    assert fingerprint == "fp1"
    assert counted(store, State.CLOSED, State.OPEN) == 1


@pytest.mark.parametrize("spelling", ["HALF_OPEN", "half_open", "Half-Open", State.HALF_OPEN])
async def test_force_state_takes_any_spelling_of_a_state(
    store: BreakerStore, spelling: str
) -> None:
    transition = await store.force_state(KRAKEN, spelling, "admin", "runbook recovery test")
    assert transition is not None and transition.to_state is State.HALF_OPEN


async def test_force_state_refuses_an_unknown_state(store: BreakerStore) -> None:
    with pytest.raises(InvalidState, match=r"'ajar': use one of CLOSED, OPEN, HALF_OPEN"):
        await store.force_state(KRAKEN, "ajar", "admin", "x")


async def test_an_admin_open_is_a_hold_that_automation_never_lifts(
    store: BreakerStore, db: asyncpg.Connection
) -> None:
    await store.force_state(KRAKEN, "OPEN", "admin", "Kraken maintenance window")
    await age(db, "state_changed_at", 3600)
    assert await store.check() == []
    assert await store.record_result(KRAKEN, True, "probe round: success") == []
    assert await store.force_state(KRAKEN, "CLOSED", "automation", "resolved") is None
    assert await store.reset(KRAKEN, "automation", "resolved") is None
    status = await store.status(KRAKEN)
    assert (status["state"], status["manualHold"], status["nextAttemptTime"]) == (
        "OPEN",
        True,
        None,
    )
    assert await actions(db) == [
        ("breaker_transition", "admin", "success"),
        ("breaker_force_state", "automation", "refused"),
        ("breaker_reset", "automation", "refused"),
    ]
    # An admin lifts it, and the breaker is automatic again.
    await store.force_state(KRAKEN, "HALF_OPEN", "admin", "maintenance over")
    assert (await store.status(KRAKEN))["manualHold"] is False
    assert len(await store.record_result(KRAKEN, True, "probe round: success")) == 1


async def test_an_admin_confirming_an_automatic_open_makes_it_a_hold(
    store: BreakerStore, db: asyncpg.Connection
) -> None:
    await open_breaker(store)
    assert await store.force_state(KRAKEN, "OPEN", "admin", "keep it open") is None
    assert (await store.status(KRAKEN))["manualHold"] is True
    assert (await actions(db))[-1] == ("breaker_hold", "admin", "success")
    assert await store.force_state(KRAKEN, "OPEN", "admin", "again") is None
    assert (await actions(db))[-1] == ("breaker_hold", "admin", "success")  # nothing new


async def test_reset_closes_and_zeroes_the_counts(
    store: BreakerStore, db: asyncpg.Connection
) -> None:
    await open_breaker(store)
    transition = await store.reset(KRAKEN, "admin", "recovered")
    assert transition is not None and transition.to_state is State.CLOSED
    await fail(store, 2)
    assert await store.reset(KRAKEN, "admin", "counts only") is None  # no transition ...
    assert (await store.status(KRAKEN))["failureCount"] == 0
    assert (await actions(db))[-1] == ("breaker_reset", "admin", "success")  # ... but audited
    entries = len(await actions(db))
    assert await store.reset(KRAKEN, "admin", "nothing to do") is None
    assert len(await actions(db)) == entries


async def test_update_config_changes_only_what_is_given(
    store: BreakerStore, db: asyncpg.Connection
) -> None:
    status = await store.update_config(KRAKEN, recovery_timeout_ms=45000, cause="runbook tuning")
    assert status["config"] == {
        "failureThreshold": 3, "recoveryTimeout": 45000, "monitoringWindow": 300000,
    }  # fmt: skip
    entry = await db.fetchrow("SELECT * FROM liquid_abt.audit_log")
    assert (entry["action"], entry["actor"], entry["cause"]) == (
        "breaker_config", "admin", "runbook tuning",
    )  # fmt: skip
    await store.update_config(KRAKEN, recovery_timeout_ms=45000)
    assert len(await actions(db)) == 1  # unchanged values record nothing


async def test_a_lowered_threshold_opens_on_the_next_failure(store: BreakerStore) -> None:
    await fail(store, 2)
    await store.update_config(KRAKEN, failure_threshold=1)
    assert (await store.status(KRAKEN))["state"] == "CLOSED"
    assert len(await fail(store)) == 1


@pytest.mark.parametrize(
    "settings",
    [{}, {"failure_threshold": 0}, {"recovery_timeout_ms": -1}, {"monitoring_window_ms": 1.5},
     {"failure_threshold": True}, {"recovery_timeout_ms": 2**31}],
)  # fmt: skip
async def test_update_config_refuses_invalid_settings(store: BreakerStore, settings: dict) -> None:
    with pytest.raises(InvalidBreakerConfig):
        await store.update_config(KRAKEN, **settings)


# ---- two replicas on one database -------------------------------------------------------------


def assert_consistent(chain: list[tuple[str, str]], final: str) -> None:
    """Every transition starts where the previous one ended: no state was skipped or repeated."""
    position = "CLOSED"
    for from_state, to_state in chain:
        assert from_state == position and to_state != from_state, chain
        position = to_state
    assert position == final


def total(stores: tuple[BreakerStore, ...]) -> Counter[tuple[str, str]]:
    """Transitions counted by the processes, as audit-log (from, to) pairs."""
    made: Counter[tuple[str, str]] = Counter()
    for store in stores:
        for a in State:
            for b in State:
                if a is not b:
                    made[(a.api, b.api)] += int(counted(store, a, b))
    return +made


async def test_two_replicas_open_the_breaker_once_for_one_burst(
    replicas: tuple[BreakerStore, BreakerStore], db: asyncpg.Connection
) -> None:
    burst = [replicas[i % 2].record_result(KRAKEN, False, f"failure {i}") for i in range(60)]
    await asyncio.gather(*burst)
    assert await audited(db) == [("CLOSED", "OPEN")]
    first, second = [await r.status(KRAKEN) for r in replicas]
    assert first == second and first["state"] == "OPEN"
    assert first["failureCount"] == 3  # results after the transition were not counted
    assert total(replicas) == Counter(await audited(db))

    await age(db, "state_changed_at", 31)
    await asyncio.gather(*[replicas[i % 2].check() for i in range(40)])
    await asyncio.gather(*[replicas[i % 2].status(KRAKEN) for i in range(10)])
    assert (await audited(db))[1:] == [("OPEN", "HALF_OPEN")]

    trials = [replicas[i % 2].record_result(KRAKEN, True, f"trial {i}") for i in range(40)]
    await asyncio.gather(*trials)
    assert (await audited(db))[2:] == [("HALF_OPEN", "CLOSED")]
    assert total(replicas) == Counter(await audited(db))


async def test_two_replicas_hammered_with_every_call_never_disagree(
    replicas: tuple[BreakerStore, BreakerStore], db: asyncpg.Connection
) -> None:
    rng = random.Random(20250101)

    def call(i: int) -> Awaitable[Any]:
        store, kind = replicas[i % 2], rng.choice(["fail", "ok", "check", "force"])
        if kind == "force":
            state = rng.choice(list(State))
            return store.force_state(KRAKEN, state, "automation", f"alert {i}", f"fp{i}")
        if kind == "check":
            return store.check()
        return store.record_result(KRAKEN, kind == "ok", f"call {i}")

    for _ in range(3):
        # A recovery timeout of 1 ms: check() and every result after an OPEN have work to do.
        await replicas[1].update_config(KRAKEN, recovery_timeout_ms=1)
        await asyncio.gather(*[call(i) for i in range(150)])
        # Stop the clock (no OPEN falls due while reading) so both reads see the same moment.
        await replicas[0].update_config(KRAKEN, recovery_timeout_ms=3_600_000)
        first, second = [(await r.status(KRAKEN))["state"] for r in replicas]
        assert first == second
        chain = await audited(db)
        assert_consistent(chain, first)
        assert total(replicas) == Counter(chain)
    assert len(chain) > 10  # the mix really moved the breaker around
    versions = await db.fetch(
        """SELECT (detail->>'version')::bigint AS v FROM liquid_abt.audit_log
           WHERE action = 'breaker_transition' ORDER BY id"""
    )
    assert [r["v"] for r in versions] == sorted(r["v"] for r in versions)
