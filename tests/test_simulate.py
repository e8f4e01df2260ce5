"""The simulator writes what a platform would, with the failure mix it was asked for."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import subprocess
import sys
from collections import Counter

import aiohttp
import asyncpg
import pytest

from exporter.config import Config
from exporter.database.pool import Connection
from exporter.labels import REASON_CLASSES
from exporter.signals.classify import ReasonClassifier
from exporter.signals.collectors.purchases import PurchasesSource
from exporter.signals.kraken.client import KrakenClient
from liquid_abt_drill.kraken_server.server import FakeKraken
from liquid_abt_drill.simulate import (
    BREAKER_OPEN,
    CATALOGUE,
    SCENARIOS,
    Live,
    SimulateError,
    Simulator,
    backfill,
    check_database,
    parse_mix,
)
from liquid_abt_drill.simulate.exchange import ExchangeWatch
from tests.harness import REPO
from tests.helpers import wait_until

# The exporter and the drill distribution (drill/), importable from the checkout.
PYTHONPATH = os.pathsep.join([str(REPO), str(REPO / "drill")])

CLASSIFY = ReasonClassifier(Config().purchases.failure_reasons).classify

MIX = {
    "exchange_unavailable": 0.05,
    "rate_limited": 0.03,
    "network_timeout": 0.02,
    "insufficient_funds": 0.01,
    "auth": 0.005,
    "maintenance": 0.005,
    "invalid_amount": 0.005,
    "other": 0.005,
}


def test_every_reason_text_is_classified_as_the_class_it_simulates() -> None:
    wrong = {
        f.text: (f.reason, CLASSIFY(f.text)) for f in CATALOGUE if CLASSIFY(f.text) != f.reason
    }
    assert wrong == {}, "text: (intended, classified)"
    assert {f.reason for f in CATALOGUE} == set(REASON_CLASSES), "every class has a text"


def test_scenarios_are_valid_mixes_and_an_outage_is_mostly_exchange_unavailable() -> None:
    for name, scenario in SCENARIOS.items():
        assert set(scenario.mix) <= set(REASON_CLASSES), name
        assert 0 < sum(scenario.mix.values()) <= 1, name
    outage = SCENARIOS["kraken-outage"].mix
    assert outage["exchange_unavailable"] > 0.5
    assert max(outage, key=outage.__getitem__) == "exchange_unavailable"


def test_failure_mix_parses_and_names_its_mistakes() -> None:
    assert parse_mix("exchange_unavailable=0.02, rate_limited=0.01") == {
        "exchange_unavailable": 0.02,
        "rate_limited": 0.01,
    }
    for text, message in [
        ("timeouts=0.1", "CLASS one of"),
        ("auth", "expected CLASS=PROBABILITY"),
        ("auth=x", "is not a number"),
        ("auth=1.5", "between 0 and 1"),
        ("auth=0.6,other=0.6", "more than 1"),
    ]:
        with pytest.raises(SimulateError, match=message):
            parse_mix(text)


async def test_backfill_writes_an_hour_with_the_asked_failure_mix(db: asyncpg.Connection) -> None:
    simulator = Simulator(MIX, tenants=25, seed=20250101)
    summary = await backfill(db, simulator, seconds=3600, rate_per_minute=300)

    rows = await db.fetch(
        "SELECT tenant_id, amount_aud, status, failure_reason, exchange_provider, retry_count, "
        "now() - created_at AS age FROM bitcoin_purchases"
    )
    n = len(rows)
    # 300 a minute for an hour, Poisson: 18000 +- 134 (sd); bounds at about 5 sd.
    assert 17300 < n < 18700
    assert sum(summary.purchases.values()) == n
    assert {r["exchange_provider"] for r in rows} == {"kraken"}
    assert all(r["tenant_id"].startswith("sim-tenant-") for r in rows)
    assert len({r["tenant_id"] for r in rows}) == 25
    assert all(10 <= r["amount_aud"] <= 50000 for r in rows)
    assert all(0 <= r["age"].total_seconds() <= 3600 + 60 for r in rows)  # + the test's time
    assert {r["status"] for r in rows} == {"completed", "failed"}
    assert all((r["failure_reason"] is None) == (r["status"] == "completed") for r in rows)
    assert all(r["retry_count"] == 0 for r in rows if r["status"] == "completed")

    # What the exporter will see: its own classifier over the written texts.
    classified = Counter(CLASSIFY(r["failure_reason"]) for r in rows if r["status"] == "failed")
    assert classified == summary.failures
    for reason, p in MIX.items():
        expected, sd = n * p, math.sqrt(n * p * (1 - p))
        assert abs(classified[reason] - expected) < 5 * sd, (reason, classified[reason], expected)

    # Every exchange call is logged; the failing one carries the purchase's failure text.
    calls = await db.fetch(
        "SELECT endpoint, success, response_time, error_message FROM api_call_logs"
    )
    assert len(calls) == summary.calls
    assert sum(not c["success"] for c in calls) == summary.failed_calls == classified.total()
    assert {c["endpoint"] for c in calls} == {
        "getCurrentPrice",
        "getBalance",
        "getOrderBook",
        "placeOrder",
    }
    assert all(c["response_time"] > 0 for c in calls)
    assert all((c["error_message"] is None) == c["success"] for c in calls)
    assert Counter(CLASSIFY(c["error_message"]) for c in calls if not c["success"]) == classified
    # Timeouts look like timeouts: the 30 s client timeout shows in the response times.
    assert max(c["response_time"] for c in calls) == 30000
    assert (
        await db.fetchval("SELECT count(*) FROM tenant_accounts WHERE tenant_id LIKE 'sim-%'") == 25
    )

    # And the exporter's purchase collector reads back the asked failure ratio.
    families = await PurchasesSource(
        Config(), ReasonClassifier(Config().purchases.failure_reasons)
    ).collect(db)
    ratio = next(f for f in families if f.name == "liquid_abt_purchase_failure_ratio")
    hourly = next(
        s.value for s in ratio.samples if s.labels == {"window": "1h", "exchange": "kraken"}
    )
    assert abs(hourly - sum(MIX.values())) < 0.015


async def test_backfill_leaves_a_period_that_already_holds_purchases_alone(
    db: asyncpg.Connection,
) -> None:
    first = await backfill(db, Simulator(MIX, seed=1), seconds=600, rate_per_minute=60)
    again = await backfill(db, Simulator(MIX, seed=1), seconds=600, rate_per_minute=60)
    assert first.purchases.total() > 0 and again.purchases.total() == 0
    assert await db.fetchval("SELECT count(*) FROM bitcoin_purchases") == first.purchases.total()


async def test_refuses_a_database_with_purchases_of_real_tenants(db: asyncpg.Connection) -> None:
    await check_database(db)  # empty: fine
    await db.execute(
        "INSERT INTO bitcoin_purchases (tenant_id, amount_aud, status) "
        "VALUES ('acme', 100, 'completed')"
    )
    with pytest.raises(SimulateError, match="looks like a real platform database"):
        await check_database(db)
    await check_database(db, force=True)


async def _live(
    database: Connection, duration: float, rate: float = 1200, watch: ExchangeWatch | None = None
) -> Live:
    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(database.dsn)

    live = Live(
        connect, Simulator(MIX, seed=3), rate_per_minute=rate, exchange="kraken", watch=watch
    )
    await live.run(asyncio.Event(), duration)
    return live


async def test_live_purchases_settle_and_obey_the_pause_and_the_open_breaker(
    database: Connection, db: asyncpg.Connection
) -> None:
    live = await _live(database, 1.5)
    assert live.summary.purchases.total() > 5
    assert await db.fetchval("SELECT count(*) FROM bitcoin_purchases WHERE status = 'pending'") == 0
    before = await db.fetchval("SELECT count(*) FROM bitcoin_purchases")

    await db.execute(
        "INSERT INTO liquid_abt.exchange_controls (exchange, purchases_paused, paused_at) "
        "VALUES ('kraken', true, now())"
    )
    paused = await _live(database, 1.5)
    assert paused.summary.purchases.total() == 0 and paused.summary.skipped_paused > 5
    assert await db.fetchval("SELECT count(*) FROM bitcoin_purchases") == before

    await db.execute("UPDATE liquid_abt.exchange_controls SET purchases_paused = false")
    await db.execute(
        "INSERT INTO liquid_abt.circuit_breakers (exchange, state) VALUES ('kraken', 'open')"
    )
    calls_before = await db.fetchval("SELECT count(*) FROM api_call_logs")
    last_id = await db.fetchval("SELECT max(id) FROM bitcoin_purchases")
    broken = await _live(database, 1.5)
    assert broken.summary.purchases["failed"] == broken.summary.purchases.total() > 5
    reasons = await db.fetch(
        "SELECT DISTINCT status, failure_reason FROM bitcoin_purchases WHERE id > $1", last_id
    )
    assert [tuple(r) for r in reasons] == [("failed", BREAKER_OPEN.text)]
    # Failing fast means not calling the exchange at all.
    assert await db.fetchval("SELECT count(*) FROM api_call_logs") == calls_before


def _simulate(*args: str, database: Connection) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "liquid_abt_drill", "simulate", *args],
        env={**os.environ, "DATABASE_URL": database.dsn, "PYTHONPATH": PYTHONPATH},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


async def test_simulate_command_backfills_then_follows_until_sigterm(
    database: Connection, db: asyncpg.Connection
) -> None:
    process = _simulate(
        "--backfill=10m",
        "--follow",
        "--rate=600",
        "--scenario=kraken-outage",
        "--seed=5",
        database=database,
    )

    first_seen: list[int] = []

    async def live_purchases() -> bool:
        assert process.poll() is None, process.communicate()[0]
        # The backfill lands in one transaction (its newest rows are seconds old too); live rows
        # are the ones written after it: 5 more settled purchases than the first count seen.
        settled = await db.fetchval(
            "SELECT count(*) FROM bitcoin_purchases WHERE status <> 'pending'"
        )
        if not first_seen:
            first_seen.extend([settled] if settled else [])
            return False
        return bool(settled >= first_seen[0] + 5)

    try:
        await wait_until(live_purchases, timeout=60, interval=0.2, what="5 live purchases")
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert "backfill written" in output and "simulation stopped" in output
    assert await db.fetchval("SELECT count(*) FROM bitcoin_purchases WHERE status = 'pending'") == 0
    failed, total = await db.fetchrow(
        "SELECT count(*) FILTER (WHERE status = 'failed'), count(*) FROM bitcoin_purchases"
    )
    assert failed / total > 0.8  # the outage scenario: 90 % of purchases fail


def test_simulate_command_rejects_a_bad_mix_and_a_missing_database() -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["PYTHONPATH"] = PYTHONPATH
    command = [sys.executable, "-m", "liquid_abt_drill", "simulate", "--backfill=1h"]
    bad_mix = subprocess.run(
        [*command, "--failure-mix=auth=2"],
        env={**env, "DATABASE_URL": "postgresql://x@127.0.0.1:1/x"},
        capture_output=True,
        text=True,
    )
    assert bad_mix.returncode == 2 and "between 0 and 1" in bad_mix.stderr
    no_db = subprocess.run(command, env=env, capture_output=True, text=True)
    assert no_db.returncode == 1 and "no database: set DATABASE_URL" in no_db.stderr
    listed = subprocess.run(
        [sys.executable, "-m", "liquid_abt_drill", "--help"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert "simulate" in listed.stdout
    helped = subprocess.run([*command[:4], "--help"], env=env, capture_output=True, text=True)
    assert helped.returncode == 0 and "kraken-outage" in helped.stdout, helped.stderr


async def test_live_survives_a_lost_database_connection(
    database: Connection, db: asyncpg.Connection
) -> None:
    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(
            database.dsn, server_settings={"application_name": "simulator-under-test"}
        )

    live = Live(connect, Simulator(MIX, seed=9), rate_per_minute=1200, exchange="kraken")
    run = asyncio.create_task(live.run(asyncio.Event(), 4.0))

    async def connected() -> bool:
        return bool(await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'simulator-under-test'"
        ))  # fmt: skip

    await wait_until(connected, timeout=3.0, interval=0.05)
    killed = await db.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name = 'simulator-under-test'"
    )
    cut = await db.fetchval("SELECT now()")
    await run
    assert killed == 1
    after = await db.fetchval("SELECT count(*) FROM bitcoin_purchases WHERE created_at > $1", cut)
    assert after > 5, "purchases resumed on a new connection"
    assert await db.fetchval("SELECT count(*) FROM bitcoin_purchases WHERE status = 'pending'") == 0


async def test_live_buys_due_retries_again_as_the_platform_would(
    database: Connection, db: asyncpg.Connection
) -> None:
    purchase_id = await db.fetchval(
        "INSERT INTO bitcoin_purchases (tenant_id, amount_aud, status, failure_reason) "
        "VALUES ('sim-1', 100, 'failed', 'EService:Unavailable') RETURNING id"
    )
    await db.execute(
        "INSERT INTO liquid_abt.retry_queue (purchase_id, exchange, next_attempt_at) "
        "VALUES ($1, 'kraken', now())",
        str(purchase_id),
    )

    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(database.dsn)

    # No failures in the mix: the retry succeeds.
    live = Live(connect, Simulator({}, seed=1), rate_per_minute=1, exchange="kraken")
    await live.run(asyncio.Event(), 0.5)
    assert live.summary.retried == {"completed": 1}
    row = await db.fetchrow(
        "SELECT status, retry_count FROM bitcoin_purchases WHERE id = $1", purchase_id
    )
    assert tuple(row) == ("completed", 1)
    assert await db.fetchval("SELECT status FROM liquid_abt.retry_queue") == "succeeded"


@pytest.mark.parametrize(
    ("mode", "latency", "reason"),
    [
        ("healthy", None, None),
        ("down", None, "network_timeout"),
        ("maintenance", None, "maintenance"),
        ("cancel_only", None, "maintenance"),
        ("rate_limited", None, "rate_limited"),
        ("server_error", None, "exchange_unavailable"),
        ("auth_failure", None, None),  # the platform's key is not the one a drill breaks
        ("slow", 1.2, None),
    ],
)
async def test_the_watch_sees_the_exchange_as_the_platform_would(
    kraken: FakeKraken, mode: str, latency: float | None, reason: str | None
) -> None:
    await kraken.set_mode(mode, latency)
    watch = ExchangeWatch(kraken.url, CLASSIFY, timeout=5)
    async with aiohttp.ClientSession() as session:
        await watch.observe(KrakenClient(session, kraken.url, 5))
    assert (watch.failure and watch.failure.reason) == reason
    if watch.failure is not None:
        assert watch.failure.stage == "price" and CLASSIFY(watch.failure.text) == reason
    slow = mode == "slow"
    assert (watch.delay_ms >= 1000) == slow and (watch.delay_ms == 0) == (not slow)


async def test_live_purchases_fail_while_the_watched_exchange_is_down(
    database: Connection, db: asyncpg.Connection, kraken: FakeKraken
) -> None:
    await kraken.set_mode("down")
    watch = ExchangeWatch(kraken.url, CLASSIFY, timeout=5, interval=0.2)
    live = await _live(database, 1.5, watch=watch)
    assert live.summary.purchases["failed"] == live.summary.purchases.total() > 5
    reasons = await db.fetch(
        "SELECT DISTINCT success, error_message FROM api_call_logs"
        " WHERE created_at > now() - interval '1 minute'"
    )
    assert [r["success"] for r in reasons] == [False]
    assert CLASSIFY(reasons[0]["error_message"]) == "network_timeout"
