"""The retry queue: the runbook's eligible purchases, exponential backoff, the platform's claim."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from exporter.config import Config, RetryConfig, parse_config
from exporter.controls import audit, retry_queue
from exporter.controls import pause as controls
from exporter.controls.gate import GATE_SQL
from exporter.controls.retry_queue import backoff_delay
from exporter.database.pool import Connection
from exporter.signals.classify import ReasonClassifier
from exporter.web.app import create_app
from exporter.web.keys import RUNNERS
from tests.helpers import scrape, value

CONFIG: Config = parse_config({
    "collectors": {"interval": "1h", "timeout": "10s"}, "kraken": {"enabled": False},
    # These tests queue by hand; tests/test_retry_filler.py tests the loop that does it.
    "retry": {"fill_interval": "1h"},
})  # fmt: skip
CLASSIFIER = ReasonClassifier(CONFIG.purchases.failure_reasons)
NO_JITTER = RetryConfig(jitter=0)


# ---- backoff ----


def test_backoff_doubles_from_a_minute_and_stops_at_an_hour() -> None:
    rng = random.Random(0)
    delays = [backoff_delay(attempt, NO_JITTER, rng) for attempt in range(8)]
    assert delays == [60, 120, 240, 480, 960, 1920, 3600, 3600]


def test_backoff_jitter_only_shortens_and_stays_within_its_fraction() -> None:
    config, rng = RetryConfig(), random.Random(42)  # jitter 0.2
    for attempt in range(10):
        nominal = min(60 * 2**attempt, 3600)
        samples = [backoff_delay(attempt, config, rng) for _ in range(200)]
        assert all(0.8 * nominal <= s <= nominal for s in samples)
        assert len(set(samples)) > 100  # actually spread, also at the cap


def test_backoff_is_reproducible_with_a_seed_and_never_overflows() -> None:
    config = RetryConfig()
    first = [backoff_delay(a, config, random.Random(7)) for a in range(5)]
    again = [backoff_delay(a, config, random.Random(7)) for a in range(5)]
    assert first == again
    assert backoff_delay(10_000, RetryConfig(factor=1000.0), random.Random(1)) <= 3600
    with pytest.raises(ValueError):
        backoff_delay(-1, config, random.Random(1))


# ---- filling the queue ----


async def purchase(
    db: asyncpg.Connection, minutes_ago: float, status: str, reason: str | None = None, *,
    exchange: str = "kraken", retry_count: int = 0, tenant: str = "t1", amount: float = 100.0,
) -> str:  # fmt: skip
    purchase_id = await db.fetchval(
        """INSERT INTO bitcoin_purchases
               (tenant_id, amount_aud, status, failure_reason, exchange_provider, retry_count,
                created_at)
           VALUES ($1, $2, $3, $4, $5, $6, now() - make_interval(secs => $7::float8))
           RETURNING id""",
        tenant, amount, status, reason, exchange, retry_count, minutes_ago * 60,
    )  # fmt: skip
    return str(purchase_id)


async def enqueue(db, exchange: str | None = "kraken", now: datetime | None = None) -> int:
    return await retry_queue.enqueue_retry_eligible(
        db, exchange=exchange, classifier=CLASSIFIER, purchases_config=CONFIG.purchases,
        retry_config=CONFIG.retry, cause="ExchangeApiDown firing", fingerprint="fp1", now=now,
        rng=random.Random(3),
    )  # fmt: skip


async def queued(db: asyncpg.Connection) -> dict[str, asyncpg.Record]:
    rows = await db.fetch("SELECT * FROM liquid_abt.retry_queue")
    return {r["purchase_id"]: r for r in rows}


async def test_enqueue_takes_exactly_the_runbooks_eligible_purchases(
    db: asyncpg.Connection,
) -> None:
    eligible = [
        await purchase(db, 5, "failed", "EService:Unavailable", tenant="a", amount=250.5),
        await purchase(db, 50, "failed", "request timed out", retry_count=2),
        await purchase(db, 59, "failed", "EAPI:Rate limit exceeded"),
        await purchase(db, 5, "failed", None),  # unknown reason: `other`, not excluded
    ]
    await purchase(db, 5, "failed", "insufficient_funds")
    await purchase(db, 5, "failed", "EOrder:Insufficient funds")  # classified, not compared as text
    await purchase(db, 5, "failed", "invalid_amount")
    await purchase(db, 5, "failed", "EService:Unavailable", retry_count=3)  # retried enough
    await purchase(db, 61, "failed", "EService:Unavailable")  # older than the retry window
    await purchase(db, 5, "completed")
    await purchase(db, 5, "pending")
    await purchase(db, 5, "failed", "EService:Unavailable", exchange="binance")  # other exchange
    now = await db.fetchval("SELECT now()")

    assert await enqueue(db, now=now) == 4
    rows = await queued(db)
    assert sorted(rows) == sorted(eligible)
    first = rows[eligible[0]]
    assert (first["exchange"], first["tenant_id"], str(first["amount_aud"])) == (
        "kraken",
        "a",
        "250.50",
    )
    assert (first["status"], first["attempts"], first["cause"]) == (
        "queued",
        0,
        "ExchangeApiDown firing",
    )
    for row in rows.values():  # first retry after base_delay, jittered down by at most 20%
        assert 48 <= (row["next_attempt_at"] - now).total_seconds() <= 60
    # The runbook allows 3 retries per purchase: one already used twice has one left.
    assert rows[eligible[1]]["max_attempts"] == 1
    assert rows[eligible[0]]["max_attempts"] == 3


async def test_a_storm_is_queued_in_batches_and_audited_once(
    db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches of 3: excluded reasons between eligible ones, rows sharing a created_at across a
    batch boundary, and a last batch exactly full are each read once."""
    monkeypatch.setattr(retry_queue, "CANDIDATES_BATCH", 3)
    await db.execute(
        """INSERT INTO bitcoin_purchases
               (tenant_id, amount_aud, status, failure_reason, exchange_provider, created_at)
           SELECT 't' || n, 100, 'failed',
                  CASE WHEN n % 4 = 0 THEN 'insufficient_funds' ELSE 'storm failure ' || n END,
                  'kraken', now() - make_interval(mins => 10 + n / 2)
           FROM generate_series(1, 18) AS n"""
    )
    eligible = {
        str(r["id"]) for r in await db.fetch(
            "SELECT id FROM bitcoin_purchases WHERE failure_reason <> 'insufficient_funds'"
        )
    }  # fmt: skip
    assert await enqueue(db) == len(eligible) == 14
    assert set(await queued(db)) == eligible
    [entry] = [
        e for e in await audit.entries(db) if e["action"] == "queue_failed_purchases_for_retry"
    ]
    assert (entry["detail"]["eligible"], entry["detail"]["queued"]) == (14, 14)
    assert set(entry["detail"]["purchase_ids"]) == eligible
    assert await enqueue(db) == 0


async def test_enqueue_never_queues_a_purchase_twice(db: asyncpg.Connection) -> None:
    await purchase(db, 5, "failed", "EService:Unavailable")
    await purchase(db, 5, "failed", "EService:Unavailable", exchange="Binance")
    assert await enqueue(db) == 1
    assert await enqueue(db) == 0
    assert await enqueue(db, exchange=None) == 1  # all exchanges: only binance's is new
    assert await enqueue(db, exchange=None) == 0
    assert {r["exchange"] for r in (await queued(db)).values()} == {"kraken", "binance"}
    entries = [
        e for e in await audit.entries(db) if e["action"] == "queue_failed_purchases_for_retry"
    ]
    assert [e["detail"]["queued"] for e in reversed(entries)] == [1, 0, 1, 0]
    assert entries[-1]["fingerprint"] == "fp1" and entries[-1]["exchange"] == "kraken"


async def test_concurrent_enqueues_queue_each_purchase_once(database: Connection, db) -> None:
    for _ in range(20):
        await purchase(db, 5, "failed", "EService:Unavailable")
    pool = await asyncpg.create_pool(database.dsn, min_size=4, max_size=4)
    try:
        counts = await asyncio.gather(*(enqueue(pool) for _ in range(4)))
    finally:
        await pool.close()
    assert sum(counts) == 20
    assert await db.fetchval("SELECT count(*) FROM liquid_abt.retry_queue") == 20


# ---- the platform's side ----


async def add(db: asyncpg.Connection, count: int, *, exchange: str = "kraken",
              due_in: float = -1.0, max_attempts: int = 3) -> list[int]:  # fmt: skip
    """Queue `count` purchases directly, due `due_in` seconds from now (negative: already due)."""
    start = await db.fetchval("SELECT count(*) FROM liquid_abt.retry_queue")
    rows = await db.fetch(
        """INSERT INTO liquid_abt.retry_queue (purchase_id, exchange, next_attempt_at, max_attempts)
           SELECT $1 || '-' || n, $1, now() + make_interval(secs => $2::float8 + n / 1000.0), $4
           FROM generate_series($3::int + 1, $3::int + $5::int) AS n RETURNING id""",
        exchange, due_in, start, max_attempts, count,
    )  # fmt: skip
    return [r["id"] for r in rows]


async def test_claim_hands_out_due_rows_oldest_first_and_marks_them(db: asyncpg.Connection) -> None:
    due = await add(db, 3)
    await add(db, 2, due_in=600)  # not due yet
    claimed = await retry_queue.claim_due(db, 2)
    assert [e.id for e in claimed] == due[:2]
    assert all(e.status == "in_progress" and e.attempts == 1 for e in claimed)
    assert [e.id for e in await retry_queue.claim_due(db, 10)] == due[2:]
    assert await retry_queue.claim_due(db, 10) == []


async def test_claim_skips_rows_another_consumer_holds(database: Connection, db) -> None:
    ids = await add(db, 6)
    other = await asyncpg.connect(database.dsn)
    try:
        async with db.transaction():  # a consumer that has claimed and not committed yet
            mine = await retry_queue.claim_due(db, 3)
            # Would block without SKIP LOCKED; the timeout turns that into a failure.
            theirs = await asyncio.wait_for(retry_queue.claim_due(other, 10), timeout=10)
    finally:
        await other.close()
    assert {e.id for e in mine}.isdisjoint(e.id for e in theirs)
    assert sorted(e.id for e in mine + theirs) == ids


async def test_concurrent_claims_never_hand_out_a_row_twice(database: Connection, db) -> None:
    ids = await add(db, 60)
    pools = [await asyncpg.create_pool(database.dsn, min_size=4, max_size=4) for _ in range(2)]

    async def consumer(pool: asyncpg.Pool) -> list[int]:
        got: list[int] = []
        while batch := await retry_queue.claim_due(pool, 3):
            got.extend(e.id for e in batch)
        return got

    try:
        results = await asyncio.gather(*(consumer(pools[i % 2]) for i in range(8)))
    finally:
        for pool in pools:
            await pool.close()
    claimed = [i for got in results for i in got]
    assert sorted(claimed) == ids  # every row once, none twice


async def test_claim_gives_nothing_while_purchases_are_paused(db: asyncpg.Connection) -> None:
    await add(db, 2, exchange="kraken")
    other = await add(db, 1, exchange="binance")
    await controls.pause(db, "kraken", reason="maintenance", estimated_duration=None,
                         actor="automation", cause="test")  # fmt: skip
    assert [e.id for e in await retry_queue.claim_due(db, 10)] == other
    assert await retry_queue.claim_due(db, 10) == []
    await controls.resume(db, "kraken", actor="automation", cause="test")
    assert len(await retry_queue.claim_due(db, 10)) == 2


@pytest.mark.parametrize(
    ("state", "claimable"), [("open", False), ("half_open", True), ("closed", True)]
)
async def test_claim_gives_nothing_while_the_breaker_is_open(
    db: asyncpg.Connection, state: str, claimable: bool
) -> None:
    await add(db, 2)
    await db.execute(
        "INSERT INTO liquid_abt.circuit_breakers (exchange, state) VALUES ('kraken', $1)", state
    )
    assert len(await retry_queue.claim_due(db, 10)) == (2 if claimable else 0)


async def test_fail_requeues_with_growing_backoff_then_gives_up(db: asyncpg.Connection) -> None:
    (entry_id,) = await add(db, 1)
    config = RetryConfig()
    for attempt in (1, 2):
        (claimed,) = await retry_queue.claim_due(db, 1)
        assert claimed.attempts == attempt
        status = await retry_queue.fail(db, entry_id, f"EService:Busy #{attempt}", config,
                                        random.Random(attempt))  # fmt: skip
        assert status == "queued"
        row = await db.fetchrow("SELECT * FROM liquid_abt.retry_queue WHERE id = $1", entry_id)
        expected = backoff_delay(attempt, config, random.Random(attempt))
        delay = (row["next_attempt_at"] - row["updated_at"]).total_seconds()
        assert delay == pytest.approx(expected, abs=1e-5)
        assert row["last_error"] == f"EService:Busy #{attempt}"
        assert await retry_queue.claim_due(db, 1) == []  # not due before its backoff
        await retry_queue.make_due(db, "kraken", actor="test", cause="test")
    (claimed,) = await retry_queue.claim_due(db, 1)
    assert claimed.attempts == 3
    assert await retry_queue.fail(db, entry_id, "still down", config) == "failed"
    assert await retry_queue.fail(db, entry_id, "again", config) is None  # not in progress
    await retry_queue.make_due(db, "kraken", actor="test", cause="test")
    assert await retry_queue.claim_due(db, 1) == []


async def test_fail_respects_the_attempts_a_purchase_has_left(db: asyncpg.Connection) -> None:
    (entry_id,) = await add(db, 1, max_attempts=1)
    await retry_queue.claim_due(db, 1)
    assert await retry_queue.fail(db, entry_id, "EService:Busy", RetryConfig()) == "failed"


async def test_complete_only_completes_a_claimed_row(db: asyncpg.Connection) -> None:
    (entry_id,) = await add(db, 1)
    assert await retry_queue.complete(db, entry_id) is False  # not claimed yet
    await retry_queue.claim_due(db, 1)
    assert await retry_queue.complete(db, entry_id) is True
    assert await retry_queue.complete(db, entry_id) is False
    (entry,) = await retry_queue.list_queue(db)
    assert entry.status == "succeeded"


async def test_release_hands_a_claimed_row_back_without_using_an_attempt(
    db: asyncpg.Connection,
) -> None:
    """The gate closed between the claim and the purchase (docs/platform-integration.md 3.1):
    the row goes back as it was, due at once, and waits for the gate like any other."""
    (entry_id,) = await add(db, 1, max_attempts=1)
    await retry_queue.claim_due(db, 1)
    await controls.pause(db, "kraken", reason="maintenance", estimated_duration=None,
                         actor="automation", cause="test")  # fmt: skip
    assert await retry_queue.release(db, entry_id) is True
    assert await retry_queue.release(db, entry_id) is False  # not in progress any more
    (entry,) = await retry_queue.list_queue(db)
    assert (entry.status, entry.attempts) == ("queued", 0)
    assert await retry_queue.claim_due(db, 10) == []  # paused: the gate holds it
    await controls.resume(db, "kraken", actor="automation", cause="test")
    # Its one attempt is still there: claimed again, failed once, it gives up only then.
    (claimed,) = await retry_queue.claim_due(db, 10)
    assert claimed.attempts == 1
    assert await retry_queue.fail(db, entry_id, "EService:Busy", RetryConfig()) == "failed"


async def test_make_due_touches_only_queued_rows_of_the_exchange(db: asyncpg.Connection) -> None:
    await add(db, 3, due_in=3600)
    await add(db, 1, exchange="binance", due_in=3600)
    assert await retry_queue.make_due(db, "kraken", actor="automation", cause="recovered") == 3
    assert len(await retry_queue.claim_due(db, 10)) == 3
    assert await retry_queue.make_due(db, "kraken", actor="automation", cause="recovered") == 0
    (entry,) = await retry_queue.list_queue(db, exchange="binance")
    assert entry.status == "queued" and entry.next_attempt_at > await db.fetchval("SELECT now()")
    made_due = [e for e in await audit.entries(db) if e["action"] == "make_retries_due"]
    assert [e["detail"]["made_due"] for e in reversed(made_due)] == [3, 0]


async def test_list_queue_filters_and_limits(db: asyncpg.Connection) -> None:
    await add(db, 3)
    await add(db, 2, exchange="binance")
    await retry_queue.claim_due(db, 1)
    assert len(await retry_queue.list_queue(db)) == 5
    assert len(await retry_queue.list_queue(db, limit=2)) == 2
    assert len(await retry_queue.list_queue(db, exchange="binance")) == 2
    (claimed,) = await retry_queue.list_queue(db, status="in_progress")
    assert claimed.as_json()["status"] == "in_progress"
    assert len(await retry_queue.list_queue(db, exchange="kraken", status="queued")) == 2


# ---- the metrics ----


@pytest.fixture
async def client(aiohttp_client, database: Connection) -> AsyncIterator[TestClient]:
    yield await aiohttp_client(create_app(CONFIG, database))


async def test_queue_depth_at_metrics_after_enqueue(
    client: TestClient, db: asyncpg.Connection
) -> None:
    for minutes in (5, 10, 20):
        await purchase(db, minutes, "failed", "EService:Unavailable")
    await purchase(db, 5, "failed", "insufficient_funds")
    assert await enqueue(db) == 3
    for runner in client.app[RUNNERS]:
        assert await runner.refresh()
    samples = await scrape(client)
    assert value(samples, "liquid_abt_retry_queue_depth", exchange="kraken") == 3
    assert value(samples, "liquid_abt_retry_queue_oldest_age_seconds", exchange="kraken") >= 0


# ---- the documentation the platform follows ----


def test_platform_integration_doc_carries_the_exact_statements() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "platform-integration.md").read_text()
    statements = (
        GATE_SQL, retry_queue.CLAIM_SQL, retry_queue.CLAIM_ROUTED_SQL, retry_queue.COMPLETE_SQL,
        retry_queue.FAIL_SQL, retry_queue.RELEASE_SQL,
    )  # fmt: skip
    for sql in statements:
        assert f"```sql\n{sql.strip()}\n```" in doc, sql
