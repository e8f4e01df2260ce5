"""The notification work queue: a poisoned alert state is retried with backoff and dead-lettered
without holding back the others; per exchange, order is kept; retention; and every query the
loops run is served by an index."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import asyncpg
import pytest
from prometheus_client import CollectorRegistry

from exporter.config import parse_config
from exporter.controls.breaker import BreakerStore
from exporter.database.listen import listen
from exporter.database.pool import Connection, create_pool
from exporter.runbook import retention
from exporter.runbook.alert_states import ACTIVE_SQL
from exporter.runbook.incident import IncidentModel
from exporter.runbook.metrics import ActionMetrics, IncidentMetrics
from exporter.runbook.worker import CLAIM_SQL, WORK_CHANNEL, ActionWorker

CONFIG = parse_config({
    "exchanges": ["kraken", "independent_reserve"],
    "receiver": {"max_attempts": 3, "retry_max_delay": "1s", "retention": "1d"},
    "retry": {"retention": "30d"},
})  # fmt: skip


@pytest.fixture
async def pool(database: Connection) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database, CONFIG.database)
    yield pool
    await pool.close()


@pytest.fixture
def worker(pool: asyncpg.Pool) -> ActionWorker:
    registry = CollectorRegistry()
    breakers = BreakerStore(pool, CONFIG, registry)
    actions = ActionMetrics(registry)
    model = IncidentModel(
        pool, CONFIG, breakers, actions, IncidentMetrics(registry, list(CONFIG.exchanges))
    )
    return ActionWorker(pool, CONFIG, model, actions)


async def record(
    db: asyncpg.Connection, alertname: str, exchange: str | None, *, fingerprint: str = "fp",
    status: str = "firing", received: str = "now()",
) -> int:  # fmt: skip
    labels = {"alertname": alertname, **({"exchange": exchange} if exchange else {})}
    return await db.fetchval(
        f"""INSERT INTO liquid_abt.notifications
                (fingerprint, status, starts_at, alertname, exchange, labels, received_at)
            VALUES ($1, $2, now() - interval '1 hour', $3, $4, $5::jsonb, {received})
            RETURNING id""",
        fingerprint, status, alertname, exchange, json.dumps(labels),
    )  # fmt: skip


async def poison_lower_rate(db: asyncpg.Connection) -> None:
    """Every write of the API rate fails with a transient error, as a stuck lock would."""
    await db.execute("""
        CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'injected' USING ERRCODE = '40P01'; END $$;
        CREATE TRIGGER poison BEFORE INSERT OR UPDATE ON liquid_abt.exchange_controls
            FOR EACH ROW EXECUTE FUNCTION poison();
    """)


async def rows(db: asyncpg.Connection) -> list[dict]:
    found = await db.fetch(
        """SELECT id, alertname, exchange, attempts, processed_at IS NOT NULL AS processed,
                  dead_lettered_at IS NOT NULL AS dead, last_error
           FROM liquid_abt.notifications ORDER BY id"""
    )
    return [dict(r) for r in found]


async def drain(worker: ActionWorker, db: asyncpg.Connection) -> None:
    """Process until nothing is due, moving backoff deadlines to now instead of waiting."""
    for _ in range(20):
        settled, _ = await worker.process_batch()
        if not settled:
            pending = await db.fetchval(
                """UPDATE liquid_abt.notifications SET next_attempt_at = now()
                   WHERE processed_at IS NULL AND dead_lettered_at IS NULL RETURNING 1"""
            )
            if pending is None:
                return
    raise AssertionError("the queue did not drain")


async def test_a_poison_state_is_dead_lettered_and_never_blocks_the_others(
    worker: ActionWorker, db: asyncpg.Connection
) -> None:
    await poison_lower_rate(db)
    poison = await record(db, "ExchangeApiRateLimited", "kraken", fingerprint="poison")
    after_on_kraken = await record(db, "LiquidAbtCollectorStale", "kraken", fingerprint="later")
    other = await record(db, "BitcoinPurchaseFailureRateHigh", "independent_reserve")
    settled, _ = await worker.process_batch()
    assert settled == 2, "the other exchange's state went through at once"
    first = {r["id"]: r for r in await rows(db)}
    assert first[other]["processed"]
    assert first[poison]["attempts"] == 1 and "injected" in first[poison]["last_error"]
    assert not first[after_on_kraken]["processed"], "kraken's order is kept behind its head"

    await drain(worker, db)
    final = {r["id"]: r for r in await rows(db)}
    assert final[poison]["dead"] and final[poison]["attempts"] == 3
    assert final[after_on_kraken]["processed"], "once dead-lettered, the later ones go on"
    assert worker.metrics.dead_letters._value.get() == 1  # test-only read of a counter


async def test_a_batch_keeps_arrival_order_per_exchange(
    worker: ActionWorker, db: asyncpg.Connection
) -> None:
    ids = [
        await record(db, "ExchangeApiRateLimited", "kraken", fingerprint=f"f{i}") for i in range(5)
    ]
    assert await worker.process_batch() == (5, 0)
    done = await db.fetch(
        "SELECT id FROM liquid_abt.notifications WHERE processed_at IS NOT NULL ORDER BY id"
    )
    assert [r["id"] for r in done] == ids
    audits = await db.fetchval(
        "SELECT count(*) FROM liquid_abt.audit_log WHERE action = 'set_api_rate_multiplier'"
    )
    assert audits == 1, "lowered once; the later firings only renew the evidence"


async def test_retention_deletes_old_work_and_keeps_what_still_matters(
    pool: asyncpg.Pool, db: asyncpg.Connection
) -> None:
    old = "now() - interval '2 days'"
    resolved_pair = [
        await record(db, "ExchangeApiDown", "kraken", fingerprint="a", received=old),
        await record(
            db, "ExchangeApiDown", "kraken", fingerprint="a", status="resolved", received=old
        ),
    ]
    still_firing = await record(db, "ExchangeApiDown", "kraken", fingerprint="b", received=old)
    recent = await record(db, "ExchangeApiDown", "kraken", fingerprint="c", status="resolved")
    await db.execute("UPDATE liquid_abt.notifications SET processed_at = now()")
    await db.execute(
        """INSERT INTO liquid_abt.retry_queue (purchase_id, exchange, next_attempt_at, status, updated_at)
           VALUES ('done-long-ago', 'kraken', now(), 'succeeded', now() - interval '40 days'),
                  ('done-recently', 'kraken', now(), 'succeeded', now()),
                  ('still-queued', 'kraken', now() - interval '40 days', 'queued', now() - interval '40 days')"""
    )
    deleted = await retention.prune(pool, CONFIG, batch=1)
    assert deleted == {"notifications": 2, "retry_queue": 1}
    left = [r["id"] for r in await rows(db)]
    assert left == [still_firing, recent] and not set(resolved_pair) & set(left)
    queue = await db.fetch("SELECT purchase_id FROM liquid_abt.retry_queue ORDER BY purchase_id")
    assert [r["purchase_id"] for r in queue] == ["done-recently", "still-queued"]


@pytest.mark.parametrize(
    ("sql", "args", "index"),
    [
        (CLAIM_SQL, [200], "notifications_pending"),
        (ACTIVE_SQL, ["kraken", ["ExchangeApiDown"]], "notifications_firing"),
        (retention.PRUNE_NOTIFICATIONS_SQL, [86400.0, 5000], "notifications_received_at"),
        (retention.PRUNE_RETRIES_SQL, [86400.0, 5000], "retry_queue_finished"),
    ],
)
async def test_the_loops_queries_are_served_by_indexes(
    db: asyncpg.Connection, sql: str, args: list, index: str
) -> None:
    # Planner statistics of an empty table favour scans; what matters is that the index exists
    # and fits the query, so scans are priced out.
    await db.execute("SET enable_seqscan = off")
    plan = await db.fetchval(f"EXPLAIN (FORMAT JSON) {sql}", *args)
    assert index in plan, plan


async def test_a_recorded_state_wakes_every_listening_worker_even_after_a_lost_connection(
    database: Connection, db: asyncpg.Connection
) -> None:
    woken = asyncio.Event()
    task = asyncio.create_task(listen(database, WORK_CHANNEL, woken.set))
    try:
        async with asyncio.timeout(10):
            await woken.wait()  # the first call: anything recorded before it listened
            woken.clear()
            await record(db, "ExchangeApiDown", "kraken")
            await woken.wait()
            woken.clear()
            # The listening connection dies (a database restart, a proxy timeout): it comes back
            # and calls once more, for what it may have missed meanwhile.
            await db.execute(
                """SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                   WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()"""
            )
            await woken.wait()
            woken.clear()
            await record(db, "ExchangeApiDown", "kraken", fingerprint="again")
            await woken.wait()
    finally:
        task.cancel()
