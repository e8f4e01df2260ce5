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
from exporter.database.transactions import transaction

KRAKEN = "kraken"
CONFIG = parse_config(
    {
        "exchanges": [KRAKEN, "independent_reserve"],
        "breaker": {"failure_threshold": 3},
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


async def open_breaker(store: BreakerStore, exchange: str = KRAKEN) -> None:
    """As the incident model opens it."""
    await store.force_state(exchange, State.OPEN, "automation", "EService:Unavailable")
    assert (await store.status(exchange))["state"] == "OPEN"


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
        "failureThreshold": 3, "recoveryTimeout": 30000, "monitoringWindow": 600000,
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
    assert await store.force_state(KRAKEN, "HALF_OPEN", "automation", "healthy") is None
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
        ("breaker_force_state", "automation", "refused"),
        ("breaker_reset", "automation", "refused"),
    ]
    # An admin lifts it, and the breaker is automatic again.
    await store.force_state(KRAKEN, "HALF_OPEN", "admin", "maintenance over")
    assert (await store.status(KRAKEN))["manualHold"] is False
    assert await store.force_state(KRAKEN, "CLOSED", "automation", "verified") is not None


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
    await db.execute("UPDATE liquid_abt.circuit_breakers SET failure_count = 2")  # evidence
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
        "failureThreshold": 3, "recoveryTimeout": 45000, "monitoringWindow": 600000,
    }  # fmt: skip
    entry = await db.fetchrow("SELECT * FROM liquid_abt.audit_log")
    assert (entry["action"], entry["actor"], entry["cause"]) == (
        "breaker_config", "admin", "runbook tuning",
    )  # fmt: skip
    await store.update_config(KRAKEN, recovery_timeout_ms=45000)
    assert len(await actions(db)) == 1  # unchanged values record nothing


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
    def force(state: State, i: int) -> Awaitable[Any]:
        return replicas[i % 2].force_state(KRAKEN, state, "automation", f"alert {i}")

    await asyncio.gather(*[force(State.OPEN, i) for i in range(60)])
    assert await audited(db) == [("CLOSED", "OPEN")]
    first, second = [await r.status(KRAKEN) for r in replicas]
    assert first == second and first["state"] == "OPEN"
    assert total(replicas) == Counter(await audited(db))

    await asyncio.gather(*[force(State.HALF_OPEN, i) for i in range(40)])
    await asyncio.gather(*[force(State.CLOSED, i) for i in range(40)])
    assert (await audited(db))[1:] == [("OPEN", "HALF_OPEN"), ("HALF_OPEN", "CLOSED")]
    assert total(replicas) == Counter(await audited(db))


async def test_two_replicas_hammered_with_every_call_never_disagree(
    replicas: tuple[BreakerStore, BreakerStore], db: asyncpg.Connection
) -> None:
    rng = random.Random(20250101)

    def call(i: int) -> Awaitable[Any]:
        store, kind = replicas[i % 2], rng.choice(["force", "reset", "config"])
        if kind == "force":
            state = rng.choice(list(State))
            return store.force_state(KRAKEN, state, "automation", f"alert {i}", f"fp{i}")
        if kind == "reset":
            return store.reset(KRAKEN, "automation", f"call {i}")
        return store.update_config(KRAKEN, failure_threshold=rng.randint(1, 5))

    for _ in range(3):
        await asyncio.gather(*[call(i) for i in range(150)])
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


async def test_a_change_joined_to_a_transaction_that_rolls_back_leaves_nothing(
    store: BreakerStore, db: asyncpg.Connection, database: Connection
) -> None:
    pool = await asyncpg.create_pool(database.dsn, min_size=1, max_size=2)
    try:
        with pytest.raises(RuntimeError):
            async with transaction(pool) as connection:
                await store.force_state(KRAKEN, State.OPEN, "automation", "outage", db=connection)
                raise RuntimeError("the pause in the same transaction failed")
    finally:
        await pool.close()
    assert (await store.status(KRAKEN))["state"] == "CLOSED"
    assert await audited(db) == []
    assert counted(store, State.CLOSED, State.OPEN) == 0  # counted only after a commit
