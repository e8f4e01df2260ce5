"""Every eligible failed purchase is queued for retry exactly once, from the purchases, whatever
alert fires or is inhibited (issue 19, point 1; DESIGN.md "What the runbook prescribes for
purchases follows the purchases, not the alerts").

No alert and no webhook anywhere in this file: the failures of rate limiting and of an invalid key
page as their cause alerts, which inhibit the failure-rate page that used to queue them, and
nothing else queued them.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import asyncpg
import pytest

from exporter.config import Config, parse_config
from exporter.controls import audit, retry_queue
from exporter.controls import pause as controls
from exporter.database.pool import Connection
from exporter.runbook.platform_watch import RetryWindow, read_platform
from exporter.runbook.retry_filler import CAUSE, RetryFiller
from exporter.signals.classify import ReasonClassifier
from exporter.web.app import create_app
from tests.harness import wait_until

CONFIG: Config = parse_config({
    "collectors": {"interval": "1h", "timeout": "10s"},
    "kraken": {"enabled": False},
    "exchanges": ["kraken", "independent_reserve"],
})  # fmt: skip
CLASSIFIER = ReasonClassifier(CONFIG.purchases.failure_reasons)
EXCLUDED = ("insufficient_funds", "invalid_amount")


async def fail(
    db: asyncpg.Connection, count: int, reason: str, *, exchange: str = "Kraken",
    seconds_ago: float = 60, retry_count: int = 0,
) -> list[str]:  # fmt: skip
    """`count` purchases failed `seconds_ago` with `reason` (the platform's exchange_provider
    spelling may differ in case: the queue is per lower-case exchange)."""
    rows = await db.fetch(
        """INSERT INTO bitcoin_purchases
               (tenant_id, amount_aud, status, failure_reason, exchange_provider, retry_count,
                created_at)
           SELECT 't' || n, 100 + n, 'failed', $2, $3, $4,
                  now() - make_interval(secs => $5::float8)
           FROM generate_series(1, $1::int) AS n RETURNING id::text""",
        count, reason, exchange, retry_count, seconds_ago,
    )  # fmt: skip
    return [r["id"] for r in rows]


async def eligible(db: asyncpg.Connection) -> set[str]:
    """The runbook's retry query, with the reason classified as the metrics classify it."""
    rows = await db.fetch(
        """SELECT id::text, failure_reason FROM bitcoin_purchases
           WHERE status = 'failed' AND retry_count < 3
             AND created_at > now() - interval '1 hour'"""
    )
    return {r["id"] for r in rows if CLASSIFIER.classify(r["failure_reason"]) not in EXCLUDED}


async def queue(db: asyncpg.Connection) -> list[str]:
    """Every queued purchase id, repeats kept (a repeat would be a purchase queued twice)."""
    return [
        r["purchase_id"] for r in await db.fetch("SELECT purchase_id FROM liquid_abt.retry_queue")
    ]


def report(scenario: str, queued: list[str], wanted: set[str]) -> None:
    # The figure issue 19 asks for: failures queued against failures eligible.
    print(f"retry filler, {scenario}: queued {len(queued)} of {len(wanted)} eligible")


@pytest.fixture
async def pool(database: Connection) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database.dsn, min_size=1, max_size=2)
    yield pool
    await pool.close()


async def test_failures_under_full_rate_limiting_are_queued_once_without_any_alert(
    pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    filler = RetryFiller(pool, CONFIG, random.Random(1))
    await fail(db, 196, "EAPI:Rate limit exceeded", seconds_ago=300)
    await fail(db, 4, "EOrder:Insufficient funds")  # the runbook never retries these
    await fail(db, 3, "invalid_amount")
    await fail(db, 2, "EAPI:Rate limit exceeded", retry_count=3)  # retried enough
    await fail(db, 2, "EAPI:Rate limit exceeded", seconds_ago=3700)  # older than the hour
    assert await filler.fill() == {"kraken": 196, "independent_reserve": 0}
    await fail(db, 5, "EGeneral:Too many requests")  # the rate limiting goes on
    assert await filler.fill() == {"kraken": 5, "independent_reserve": 0}
    assert await filler.fill() == {"kraken": 0, "independent_reserve": 0}

    queued, wanted = await queue(db), await eligible(db)
    report("100 % rate limiting", queued, wanted)
    assert sorted(queued) == sorted(wanted) and len(wanted) == 201
    # The audit log says what was queued, once per round that queued something.
    entries = [
        e for e in await audit.entries(db) if e["action"] == "queue_failed_purchases_for_retry"
    ]
    assert [e["detail"]["queued"] for e in reversed(entries)] == [196, 5]
    assert {e["cause"] for e in entries} == {CAUSE}


async def test_failures_with_an_invalid_key_are_queued_once(
    pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    filler = RetryFiller(pool, CONFIG, random.Random(2))
    for second in range(240, 0, -40):  # the key stays invalid for 4 minutes
        await fail(db, 40, "EAPI:Invalid key", seconds_ago=second)
        await filler.fill()
    await fail(db, 3, "EAPI:Invalid signature", exchange="independent_reserve")
    await filler.fill()
    queued, wanted = await queue(db), await eligible(db)
    report("invalid key", queued, wanted)
    assert sorted(queued) == sorted(wanted) and len(wanted) == 243
    rows = await db.fetch("SELECT DISTINCT exchange FROM liquid_abt.retry_queue")
    assert {r["exchange"] for r in rows} == {"kraken", "independent_reserve"}


async def test_a_purchase_failing_as_the_pause_takes_effect_is_queued_and_waits_for_the_gate(
    pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    """The incident queues what had failed when it opened; the purchase that failed a moment
    later (in flight as the pause committed) used to be lost: the API-down webhook on an open
    incident drops its queue action. The filler queues it; the gate keeps it until recovery."""
    before = await fail(db, 19, "Connection refused", seconds_ago=30)
    # What the incident does when it opens: pause, and queue in the same transaction.
    async with db.transaction():
        await controls.pause(db, "kraken", reason="Exchange API unavailable",
                             estimated_duration=None, actor="automation", cause="test")  # fmt: skip
        assert await retry_queue.enqueue_retry_eligible(
            db, exchange="kraken", classifier=CLASSIFIER, purchases_config=CONFIG.purchases,
            retry_config=CONFIG.retry, cause="kraken unavailable: probe", rng=random.Random(3),
        ) == 19  # fmt: skip
    late = await fail(db, 1, "circuit breaker open", seconds_ago=0)

    filler = RetryFiller(pool, CONFIG, random.Random(4))
    assert await filler.fill() == {"kraken": 1, "independent_reserve": 0}
    queued, wanted = await queue(db), await eligible(db)
    report("mid-incident (failed as the pause took effect)", queued, wanted)
    assert sorted(queued) == sorted(before + late) == sorted(wanted)

    # When to retry is the gate's: nothing is handed out while paused, all of it after.
    await db.execute("UPDATE liquid_abt.retry_queue SET next_attempt_at = now()")
    assert await retry_queue.claim_due(db, 50) == []
    await controls.resume(db, "kraken", actor="automation", cause="test")
    assert len(await retry_queue.claim_due(db, 50)) == 20


async def test_two_replicas_racing_queue_each_failure_once(
    database: Connection, db: asyncpg.Connection
) -> None:
    pools = [await asyncpg.create_pool(database.dsn, min_size=2, max_size=2) for _ in range(2)]
    fillers = [RetryFiller(p, CONFIG, random.Random(i)) for i, p in enumerate(pools)]
    totals = [0, 0]

    async def replica(index: int) -> None:
        for _ in range(10):
            totals[index] += sum((await fillers[index].fill()).values())

    async def platform() -> None:
        for _ in range(10):
            await fail(db, 15, "EService:Unavailable")
            await fail(db, 2, "insufficient_funds")

    try:
        await asyncio.gather(replica(0), replica(1), platform())
        # A last round each, after the platform stopped failing purchases.
        await asyncio.gather(replica(0), replica(1))
    finally:
        for p in pools:
            await p.close()
    queued, wanted = await queue(db), await eligible(db)
    report("two replicas racing", queued, wanted)
    assert sorted(queued) == sorted(wanted) and len(wanted) == 150
    assert sum(totals) == 150, totals  # what each replica says it queued adds up: none twice


async def test_every_replica_runs_the_filler_on_its_own(
    aiohttp_client, database: Connection, db: asyncpg.Connection
) -> None:
    """Wired in the app: failures are queued within `retry.fill_interval`, no alert needed."""
    config = CONFIG.model_copy(
        update={"retry": CONFIG.retry.model_copy(update={"fill_interval": 0.1})}
    )
    await aiohttp_client(create_app(config, database))
    ids = await fail(db, 7, "EService:Unavailable")
    await fail(db, 2, "insufficient_funds")

    async def all_queued() -> bool:
        return sorted(await queue(db)) == sorted(ids)

    await wait_until(all_queued, what="the filler queues the 7 eligible failures")


async def test_the_platform_watch_wakes_the_filler_only_for_a_failure_it_has_not_dealt_with(
    pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    """An idle replica's filler spends no transaction: it runs when the watch's reading (one
    statement, every few seconds) shows a failed purchase new to it; those it leaves unqueued
    (reasons never retried) wake it no more."""
    filler = RetryFiller(pool, CONFIG, random.Random(5))
    window = RetryWindow(CONFIG.purchases.retry_max_count, CONFIG.purchases.retry_window)

    async def watch() -> frozenset[str]:
        reading = await read_platform(
            pool, "kraken", CLASSIFIER, window=60.0, calls=3, retry=window
        )
        filler.notice("kraken", reading.unqueued_failures)
        return reading.unqueued_failures

    assert await watch() == frozenset() and not filler.woken
    eligible_ids = await fail(db, 3, "EService:Unavailable", seconds_ago=1)
    never = await fail(db, 1, "insufficient_funds", seconds_ago=1)
    await fail(db, 1, "EService:Unavailable", retry_count=3)  # retried enough: not read
    assert await watch() == frozenset(eligible_ids + never) and filler.woken
    assert await filler.round() == {"kraken": 3, "independent_reserve": 0}
    assert await watch() == frozenset(never) and not filler.woken, "dealt with: left for good"
    late = await fail(db, 1, "Request timeout after 10000ms", seconds_ago=0)
    assert await watch() == frozenset(never + late) and filler.woken
    assert await filler.round() == {"kraken": 1, "independent_reserve": 0}
    assert sorted(await queue(db)) == sorted(eligible_ids + late)
