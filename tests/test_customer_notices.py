"""The customer-notice outbox against PostgreSQL: the notifier's claim / complete / fail, the
affected tenants, the planner's loop exactly once across replicas, operators, metrics."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from exporter.config import Config, parse_config
from exporter.controls import notices as outbox
from exporter.controls.notice_metrics import NoticesSource
from exporter.controls.notices import Notice
from exporter.controls.pause import resume
from exporter.database.pool import Connection, close_pool, create_pool
from exporter.runbook.notices.loop import NoticeLoop, estimate_seconds
from exporter.web.app import create_app
from exporter.web.keys import RUNNERS
from tests.harness import wait_until
from tests.helpers import scrape, value

CONFIG: Config = parse_config({"kraken": {"enabled": False}})
NOTICES = CONFIG.notices


async def incident(
    db: asyncpg.Connection, minutes_ago: float, ended_minutes_ago: float | None = None,
    exchange: str = "kraken",
) -> int:  # fmt: skip
    return await db.fetchval(
        """INSERT INTO liquid_abt.incident_periods (exchange, cause, started_at, ended_at)
           VALUES ($1, 'unavailable', now() - make_interval(secs => $2::float8),
                   now() - make_interval(secs => $3::float8))
           RETURNING id""",
        exchange, minutes_ago * 60, None if ended_minutes_ago is None else ended_minutes_ago * 60,
    )  # fmt: skip


async def purchase(
    db: asyncpg.Connection, tenant: str, minutes_ago: float, status: str, *,
    exchange: str = "Kraken", queued: bool = False,
) -> int:  # fmt: skip
    purchase_id = await db.fetchval(
        """INSERT INTO bitcoin_purchases (tenant_id, amount_aud, status, failure_reason,
               exchange_provider, created_at)
           VALUES ($1, 100, $2, CASE WHEN $2 = 'failed' THEN 'EService:Unavailable' END, $3,
                   now() - make_interval(secs => $4::float8))
           RETURNING id""",
        tenant, status, exchange, minutes_ago * 60,
    )  # fmt: skip
    if queued:
        await db.execute(
            """INSERT INTO liquid_abt.retry_queue (purchase_id, exchange, tenant_id,
                   next_attempt_at) VALUES ($1, lower($2), $3, now() + interval '1 minute')""",
            str(purchase_id), exchange, tenant,
        )  # fmt: skip
    return int(purchase_id)


def notice(incident_id: int | None, kind: str = "incident_started", *, seq: int = 0,
           tenant: str | None = None, state: str = "queued",
           ready_at: datetime | None = None) -> Notice:  # fmt: skip
    return Notice(
        incident_id=incident_id, exchange="kraken", kind=kind, seq=seq, tenant_id=tenant,
        channels=("app_notification", "email"), message="hello", context={"a": 1},
        ready_at=ready_at or datetime.fromisoformat("2000-01-01T00:00:00+00:00"), state=state,
    )  # fmt: skip


async def states(db: asyncpg.Connection) -> dict[int, str]:
    rows = await db.fetch("SELECT id, state FROM liquid_abt.customer_notices ORDER BY id")
    return {r["id"]: r["state"] for r in rows}


# ---- the table: exactly once ----


async def test_each_notice_is_inserted_once_whatever_the_tenant_or_incident(
    db: asyncpg.Connection,
) -> None:
    first = await incident(db, 10)
    batch = [
        notice(first), notice(first, "purchase_failed", tenant="t1"),
        notice(first, "incident_ongoing", seq=1), notice(None, "purchase_failed", tenant="t1"),
    ]  # fmt: skip
    assert len(await outbox.insert(db, batch)) == 4
    # The same notices again (another replica, a restart), NULL incident and tenant included.
    assert await outbox.insert(db, batch) == []
    assert len(await outbox.insert(db, [notice(first, "incident_ongoing", seq=2)])) == 1
    assert await db.fetchval("SELECT count(*) FROM liquid_abt.customer_notices") == 5
    row = await db.fetchrow("SELECT channels, context FROM liquid_abt.customer_notices LIMIT 1")
    assert row["channels"] == ["app_notification", "email"]
    assert json.loads(row["context"]) == {"a": 1}


# ---- the notifier's side ----


async def test_claim_hands_out_ready_notices_once_and_skips_held_and_future_ones(
    db: asyncpg.Connection,
) -> None:
    incident_id = await incident(db, 10)
    future = datetime.fromisoformat("2999-01-01T00:00:00+00:00")
    await outbox.insert(db, [
        notice(incident_id), notice(incident_id, "incident_ongoing", seq=1, state="held"),
        notice(incident_id, "incident_ongoing", seq=2, ready_at=future),
    ])  # fmt: skip
    (claimed,) = await outbox.claim(db, 10, "notifier-a", NOTICES)
    assert (claimed.kind, claimed.state, claimed.attempts) == ("incident_started", "claimed", 1)
    assert claimed.claimed_by == "notifier-a"
    assert await outbox.claim(db, 10, "notifier-b", NOTICES) == []


async def test_complete_needs_the_claim_and_is_harmless_twice(db: asyncpg.Connection) -> None:
    incident_id = await incident(db, 10)
    await outbox.insert(db, [notice(incident_id)])
    (claimed,) = await outbox.claim(db, 1, "notifier-a", NOTICES)
    assert not await outbox.complete(db, claimed.id, "notifier-b")
    assert await outbox.complete(db, claimed.id, "notifier-a")
    assert not await outbox.complete(db, claimed.id, "notifier-a")
    row = await db.fetchrow("SELECT state, sent_at FROM liquid_abt.customer_notices")
    assert row["state"] == "sent" and row["sent_at"] is not None


async def test_a_crashed_notifiers_claim_comes_back_after_its_lease(db: asyncpg.Connection) -> None:
    incident_id = await incident(db, 10)
    await outbox.insert(db, [notice(incident_id)])
    (claimed,) = await outbox.claim(db, 1, "crashed", NOTICES)
    assert await outbox.claim(db, 1, "notifier-b", NOTICES) == []
    await db.execute(
        "UPDATE liquid_abt.customer_notices SET claimed_at = now() - make_interval(secs => $1)",
        NOTICES.claim_lease + 1,
    )
    (again,) = await outbox.claim(db, 1, "notifier-b", NOTICES)
    assert (again.id, again.claimed_by, again.attempts) == (claimed.id, "notifier-b", 2)
    # The crashed notifier's late answer no longer counts.
    assert not await outbox.complete(db, claimed.id, "crashed")


async def test_fail_retries_with_growing_backoff_then_gives_up(db: asyncpg.Connection) -> None:
    incident_id = await incident(db, 10)
    await outbox.insert(db, [notice(incident_id)])
    delays = []
    for attempt in range(1, NOTICES.max_attempts + 1):
        await db.execute("UPDATE liquid_abt.customer_notices SET ready_at = now()")
        (claimed,) = await outbox.claim(db, 1, "notifier", NOTICES)
        assert claimed.attempts == attempt
        state = await outbox.fail(db, claimed.id, "notifier", "smtp 451", NOTICES)
        row = await db.fetchrow(
            """SELECT extract(epoch FROM ready_at - now())::float8 AS delay, last_error
               FROM liquid_abt.customer_notices"""
        )
        assert row["last_error"] == "smtp 451"
        if attempt < NOTICES.max_attempts:
            assert state == "queued"
            delays.append(round(row["delay"]))
        else:
            assert state == "failed"
    assert delays == [30, 60, 120, 240]
    assert await outbox.claim(db, 1, "notifier", NOTICES) == []
    assert await outbox.fail(db, claimed.id, "notifier", "again", NOTICES) is None


async def test_concurrent_notifiers_never_claim_a_notice_twice(
    database: Connection, db: asyncpg.Connection
) -> None:
    incident_id = await incident(db, 10)
    await outbox.insert(db, [notice(incident_id, "purchase_failed", tenant=f"t{i}")
                             for i in range(40)])  # fmt: skip
    pool = await create_pool(database, CONFIG.database)
    try:
        batches = await asyncio.gather(
            *(outbox.claim(pool, 7, f"notifier-{i}", NOTICES) for i in range(6))
        )
    finally:
        await close_pool(pool, 5)
    ids = [n.id for batch in batches for n in batch]
    assert len(ids) == len(set(ids)) == 40


# ---- who was affected ----


async def test_affected_tenants_failed_queued_or_held_during_the_incident(
    db: asyncpg.Connection,
) -> None:
    incident_id = await incident(db, 30, ended_minutes_ago=5)
    await purchase(db, "failed", 20, "failed")
    await purchase(db, "bought-on-retry", 20, "completed", queued=True)
    await purchase(db, "held-then-bought", 15, "completed")  # created while stopped
    await purchase(db, "still-pending", 10, "pending")
    await purchase(db, "failed-just-before", 30.5, "failed", queued=True)  # inside the margin
    await purchase(db, "bought-before", 31, "completed")
    await purchase(db, "long-before", 60, "failed")
    await purchase(db, "after", 2, "failed")
    await purchase(db, "other-exchange", 20, "failed", exchange="btcmarkets")
    tenants = await outbox.affected_tenants(db, incident_id, margin=40)
    assert tenants == [
        "bought-on-retry", "failed", "failed-just-before", "held-then-bought", "still-pending",
    ]  # fmt: skip


# ---- the planner's loop ----


@pytest.fixture
async def pool(database: Connection):
    pool = await create_pool(database, CONFIG.database)
    yield pool
    await close_pool(pool, 5)


async def test_an_idle_replica_reads_once_and_plans_nothing(pool: asyncpg.Pool, db) -> None:
    await incident(db, 120, ended_minutes_ago=60)  # closed long ago
    loop = NoticeLoop(pool, CONFIG)
    assert await loop.step() == []
    assert not loop.in_view


async def test_replicas_plan_each_notice_exactly_once(pool: asyncpg.Pool, db) -> None:
    """Three replicas run the loop at the same moments of a 65-minute outage with failed
    purchases: every notice is in the outbox once."""
    incident_id = await incident(db, 65)
    for tenant in ("t1", "t2"):
        await purchase(db, tenant, 64, "failed", queued=True)
    await purchase(db, "t3", 64, "completed", queued=True)  # bought on retry: no notice
    replicas = [NoticeLoop(pool, CONFIG, margin=15) for _ in range(3)]
    now = await db.fetchval("SELECT now()")
    inserted = []
    for step_at in (now - timedelta(minutes=40), now - timedelta(minutes=34), now):
        for _ in range(3):  # restarts: the same moment planned again and again
            rounds = await asyncio.gather(*(r.step(step_at) for r in replicas))
            inserted += [kind for found in rounds for _, kind in found]
    assert sorted(inserted) == [
        "incident_ongoing", "incident_ongoing", "incident_started", "purchase_failed",
        "purchase_failed",
    ]  # fmt: skip
    rows = await db.fetch(
        "SELECT kind, seq, tenant_id FROM liquid_abt.customer_notices ORDER BY kind, seq, tenant_id"
    )
    assert [tuple(r) for r in rows] == [
        ("incident_ongoing", 1, None), ("incident_ongoing", 2, None),
        ("incident_started", 0, None), ("purchase_failed", 0, "t1"),
        ("purchase_failed", 0, "t2"),
    ]  # fmt: skip
    assert all(loop.in_view for loop in replicas)
    # The incident closes: resolved, once.
    await db.execute("UPDATE liquid_abt.incident_periods SET ended_at = now() WHERE id = $1",
                     incident_id)  # fmt: skip
    rounds = await asyncio.gather(*(r.step() for r in replicas))
    assert sorted(kind for found in rounds for _, kind in found) == ["incident_resolved"]


async def test_a_manual_pause_with_an_estimate_is_the_estimated_resolution(
    pool: asyncpg.Pool, db
) -> None:
    await incident(db, 31)
    await db.execute(
        """INSERT INTO liquid_abt.exchange_controls (exchange, purchases_paused, paused_at,
               manual_hold, pause_estimated_duration)
           VALUES ('kraken', true, now() - interval '3 hours', true, '2 hours')"""
    )
    for _ in range(2):  # incident_started, then the ongoing notice that follows it
        await NoticeLoop(pool, CONFIG).step()
    message = await db.fetchval(
        "SELECT message FROM liquid_abt.customer_notices WHERE kind = 'incident_ongoing'"
    )
    assert message.endswith("Estimated resolution: unknown")  # an hour ago
    await db.execute("UPDATE liquid_abt.exchange_controls SET paused_at = now()")
    await db.execute("DELETE FROM liquid_abt.customer_notices WHERE kind = 'incident_ongoing'")
    await NoticeLoop(pool, CONFIG).step()
    message = await db.fetchval(
        "SELECT message FROM liquid_abt.customer_notices WHERE kind = 'incident_ongoing'"
    )
    assert message.endswith(" UTC") and "unknown" not in message


async def test_an_incident_closed_under_an_operators_hold_is_resolved_when_the_hold_is_lifted(
    pool: asyncpg.Pool, db
) -> None:
    """The automation's resume is refused under a manual hold, yet the incident period closes:
    customers are not told purchases are restored until the operator resumes them, even after
    notices.follow_up (the notice simulator's maintenance scenario, against the SQL)."""
    older = await incident(db, 300, ended_minutes_ago=240)  # long over, never resolved: left be
    await outbox.insert(db, [notice(older)])
    incident_id = await incident(db, 61, ended_minutes_ago=30)
    await outbox.insert(db, [notice(incident_id, state="sent")])
    await db.execute(
        """INSERT INTO liquid_abt.exchange_controls (exchange, purchases_paused, paused_at,
               manual_hold, pause_estimated_duration)
           VALUES ('kraken', true, now() - interval '60 minutes', true, '2 hours')"""
    )
    loop = NoticeLoop(pool, CONFIG)
    # Held: still open for customers, so the hour's ongoing notice, with the estimate.
    assert [kind for _, kind in await loop.step()] == ["incident_ongoing"]
    message = await db.fetchval(
        "SELECT message FROM liquid_abt.customer_notices WHERE kind = 'incident_ongoing'"
    )
    assert message.endswith(" UTC") and "unknown" not in message
    assert await loop.step() == []
    resumed = await resume(db, "kraken", actor="admin", cause="maintenance over", manual=True)
    assert resumed.changed
    # The operator resumed, 30 minutes after the incident closed: resolved now, once.
    assert [kind for _, kind in await loop.step()] == ["incident_resolved"]
    assert await loop.step() == []
    assert not loop.in_view  # resolved: out of view again
    assert (
        await db.fetchval(
            "SELECT count(*) FROM liquid_abt.customer_notices WHERE incident_id = $1", older
        )
        == 1
    )


def test_estimated_durations_an_admin_writes() -> None:
    assert estimate_seconds("2h") == 7200
    assert estimate_seconds("90 minutes") == 5400
    assert estimate_seconds("1 hour 30 minutes") == 5400
    assert estimate_seconds("until Kraken says") is None
    assert estimate_seconds(None) is None


# ---- operators ----


async def test_operators_hold_release_and_cancel_with_an_audit_entry(db) -> None:
    incident_id = await incident(db, 10)
    await outbox.insert(db, [notice(incident_id), notice(incident_id, "incident_ongoing", seq=1)])
    first, second = sorted(await states(db))
    assert await outbox.operate(db, "hold", ids=[first], reason="wording under review") == [first]
    assert await outbox.claim(db, 5, "notifier", NOTICES) != []  # the other one only
    assert await outbox.operate(db, "release", ids=[first]) == [first]
    assert await outbox.operate(db, "cancel", incident_id=incident_id) == [first]
    assert await states(db) == {first: "cancelled", second: "claimed"}
    assert await outbox.operate(db, "cancel", ids=[first]) == []
    entry = await db.fetchrow(
        """SELECT result, cause, detail FROM liquid_abt.audit_log
           WHERE action = 'hold_customer_notices'"""
    )
    assert (entry["result"], entry["cause"]) == ("success", "wording under review")
    with pytest.raises(ValueError, match="unknown action 'delete'"):
        await outbox.operate(db, "delete", ids=[first])


async def test_retention_deletes_only_finished_notices(db: asyncpg.Connection) -> None:
    incident_id = await incident(db, 10)
    batch = [notice(incident_id, "purchase_failed", tenant=f"t{i}") for i in range(4)]
    await outbox.insert(db, batch)
    await db.execute(
        """UPDATE liquid_abt.customer_notices
           SET state = (ARRAY['sent', 'failed', 'cancelled', 'queued'])[substr(tenant_id, 2)::int + 1],
               updated_at = now() - interval '100 days'"""
    )
    assert await outbox.delete_finished(db, NOTICES.retention) == 3
    assert await db.fetchval("SELECT state FROM liquid_abt.customer_notices") == "queued"


# ---- metrics ----


async def test_metrics_count_states_and_the_oldest_ready_age(db: asyncpg.Connection) -> None:
    incident_id = await incident(db, 10)
    long_ago = datetime.fromisoformat("2000-01-01T00:00:00+00:00")
    await outbox.insert(db, [
        notice(incident_id, ready_at=long_ago),
        notice(incident_id, "purchase_failed", tenant="t1", state="held", ready_at=long_ago),
    ])  # fmt: skip
    families = {f.name: f for f in await NoticesSource(CONFIG).collect(db)}
    samples = {
        (s.labels["kind"], s.labels["state"]): s.value
        for s in families["liquid_abt_customer_notices"].samples
    }
    assert samples[("incident_started", "queued")] == 1
    assert samples[("purchase_failed", "held")] == 1
    assert samples[("incident_resolved", "sent")] == 0  # pre-initialised
    (oldest,) = families["liquid_abt_customer_notices_oldest_ready_age_seconds"].samples
    assert oldest.value > 20 * 365 * 86400
    await outbox.claim(db, 5, "notifier", NOTICES)
    families = {f.name: f for f in await NoticesSource(CONFIG).collect(db)}
    (oldest,) = families["liquid_abt_customer_notices_oldest_ready_age_seconds"].samples
    assert oldest.value == 0  # claimed within its lease: the notifier has it


# ---- the documentation the platform follows ----


def test_platform_integration_doc_carries_the_exact_outbox_statements() -> None:
    doc = (Path(__file__).parent.parent / "docs" / "platform-integration.md").read_text()
    statements = (
        outbox.AFFECTED_TENANTS_SQL, outbox.CLAIM_SQL, outbox.COMPLETE_SQL, outbox.FAIL_SQL,
    )  # fmt: skip
    for sql in statements:
        assert f"```sql\n{sql.strip()}\n```" in doc, sql


# ---- wired into the app ----


async def test_the_app_plans_notices_and_serves_their_metrics(
    aiohttp_client, database: Connection, db: asyncpg.Connection
) -> None:
    """The exporter as served: its planner loop queues incident_started for an open incident,
    and /metrics shows it waiting for the notifier."""
    config = parse_config({
        "collectors": {"interval": "1h", "timeout": "10s"}, "kraken": {"enabled": False},
        "retry": {"fill_interval": "1h"},
        "notices": {"interval": "100ms", "idle_interval": "100ms"},
    })  # fmt: skip
    client: TestClient = await aiohttp_client(create_app(config, database))
    await incident(db, 2)

    async def planned() -> bool:
        return bool(await db.fetchval("SELECT count(*) FROM liquid_abt.customer_notices"))

    await wait_until(planned, timeout=20, what="the planner queues incident_started")
    for runner in client.app[RUNNERS]:
        assert await runner.refresh()
    samples = await scrape(client)
    labels = {"exchange": "kraken", "kind": "incident_started", "state": "queued"}
    assert value(samples, "liquid_abt_customer_notices", **labels) == 1
    assert value(samples, "liquid_abt_customer_notices_planned_total", kind="incident_started") == 1
