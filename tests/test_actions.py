"""The runbook actions, from webhook to PostgreSQL, with the Kraken-compatible server for recovery."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from exporter.config import parse_config
from exporter.database.pool import Connection
from exporter.secrets import Secrets
from exporter.web.app import create_app
from exporter.web.keys import INCIDENTS
from liquid_abt_drill.kraken_server.server import FakeKraken
from tests.alertmanager_payloads import alert, notification
from tests.helpers import scrape, value, wait_until

TOKEN = "webhook-secret"
ADMIN = "admin-secret"


def make_config(kraken: FakeKraken, **receiver: Any):
    return parse_config({
        "collectors": {"interval": "1h", "timeout": "10s"},
        # The probe is off: alerts are the evidence and the recovery checks alone talk to
        # Kraken, so outcomes are exact. Timers scaled down from seconds to tenths.
        "kraken": {"enabled": False, "base_url": kraken.url, "timeout": "2s",
                   "incident_interval": "100ms"},
        "breaker": {"recovery_timeout": "100ms"},
        "incident": {"probation": "200ms", "rate_restore_after": "200ms"},
        "receiver": {**receiver},
        # These tests are about what an alert's own actions do; the retry filler would queue
        # the same purchases by itself (tests/test_retry_filler.py), so it waits an hour here.
        "retry": {"fill_interval": "1h"},
    })  # fmt: skip


async def start(
    aiohttp_client, database: Connection, kraken: FakeKraken, **receiver: Any
) -> TestClient:
    secrets = Secrets(webhook_token=TOKEN, admin_token=ADMIN)
    return await aiohttp_client(create_app(make_config(kraken, **receiver), database, secrets))


@pytest.fixture
async def client(aiohttp_client, database: Connection, kraken: FakeKraken) -> TestClient:
    return await start(aiohttp_client, database, kraken)


async def send(client: TestClient, *alerts: dict[str, Any]) -> None:
    response = await client.post(
        "/webhook/alertmanager", json=notification(list(alerts)),
        headers={"Authorization": f"Bearer {TOKEN}"},
    )  # fmt: skip
    assert response.status == 200, await response.text()


async def processed(db: asyncpg.Connection) -> bool:
    return not await db.fetchval(
        "SELECT count(*) FROM liquid_abt.notifications WHERE processed_at IS NULL"
    )


async def phase(db: asyncpg.Connection) -> str:
    return await db.fetchval(
        "SELECT coalesce(max(phase), 'normal') FROM liquid_abt.incidents WHERE exchange = 'kraken'"
    )


async def settled(db: asyncpg.Connection) -> None:
    """Every recorded alert state processed and the incident over."""

    async def done() -> bool:
        return await processed(db) and await phase(db) == "normal"

    await wait_until(done)


async def evaluate(client: TestClient) -> str:
    """Let the incident model decide now, as its loop would; returns the phase."""
    incident, _ = await client.app[INCIDENTS].evaluate("kraken")
    return incident.phase


async def breaker_state(db: asyncpg.Connection) -> str:
    return await db.fetchval(
        "SELECT state FROM liquid_abt.circuit_breakers WHERE exchange = 'kraken'"
    )


async def paused(db: asyncpg.Connection) -> bool:
    return bool(await db.fetchval(
        "SELECT purchases_paused FROM liquid_abt.exchange_controls WHERE exchange = 'kraken'"
    ))  # fmt: skip


async def seed_failures(db: asyncpg.Connection) -> None:
    await db.execute(
        """INSERT INTO bitcoin_purchases (tenant_id, amount_aud, status, failure_reason, created_at)
           VALUES ('t1', 100, 'failed', 'EService:Unavailable', now() - interval '5 minutes'),
                  ('t2', 200, 'failed', 'Request timed out', now() - interval '10 minutes'),
                  ('t3', 300, 'failed', 'insufficient_funds', now() - interval '10 minutes'),
                  ('t4', 400, 'completed', NULL, now() - interval '10 minutes')"""
    )


async def audit(db: asyncpg.Connection, action: str) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT * FROM liquid_abt.audit_log WHERE action = $1 ORDER BY id", action
    )


async def test_exchange_down_opens_pauses_and_queues_then_recovery_resumes(
    client: TestClient, db: asyncpg.Connection
) -> None:
    await seed_failures(db)
    await send(client, alert("ExchangeApiDown", fingerprint="down-1"))
    await wait_until(lambda: processed(db))
    assert await breaker_state(db) == "open"
    assert await paused(db)
    queued = await db.fetch("SELECT * FROM liquid_abt.retry_queue ORDER BY purchase_id")
    assert len(queued) == 2, "the runbook's eligible failures, not insufficient funds"
    assert all(q["next_attempt_at"] > q["enqueued_at"] for q in queued), (
        "backoff before the first retry"
    )
    pause = (await audit(db, "pause_purchases"))[0]
    assert pause["fingerprint"] == "down-1" and pause["actor"] == "automation"

    await send(client, alert("ExchangeApiDown", fingerprint="down-1", status="resolved"))
    await settled(db)
    assert await breaker_state(db) == "closed"
    assert not await paused(db)
    due = await db.fetchval(
        "SELECT count(*) FROM liquid_abt.retry_queue WHERE next_attempt_at <= now()"
    )
    assert due == 2, "queued retries are due once the exchange recovered"
    verified = (await audit(db, "verify_recovery"))[-1]
    checks = json.loads(verified["detail"])["checks"]
    assert verified["result"] == "success" and {c["name"] for c in checks} >= {
        "price",
        "order_book",
    }
    samples = await scrape(client)
    assert value(samples, "liquid_abt_actions_total", action="open_breaker", result="success") == 1
    assert (
        value(samples, "liquid_abt_actions_total", action="verify_recovery", result="success") == 1
    )


async def test_resolved_is_not_proof_recovery_is_verified_again_until_it_passes(
    client: TestClient, db: asyncpg.Connection, kraken: FakeKraken
) -> None:
    await send(client, alert("ExchangeApiDown"))
    await wait_until(lambda: processed(db))
    await kraken.set_mode("maintenance")
    await send(client, alert("ExchangeApiDown", status="resolved"))

    async def verification_failed() -> bool:
        return any(r["result"] == "failure" for r in await audit(db, "verify_recovery"))

    await wait_until(verification_failed)
    assert await paused(db), "a failed verification keeps purchases paused"
    assert await breaker_state(db) in ("open", "half_open")
    failure = next(r for r in await audit(db, "verify_recovery") if r["result"] == "failure")
    assert "maintenance" in failure["cause"]

    await kraken.set_mode("healthy")
    await settled(db)
    assert not await paused(db)
    assert await breaker_state(db) == "closed"


async def test_repeated_notifications_act_once(client: TestClient, db: asyncpg.Connection) -> None:
    for _ in range(3):
        await send(client, alert("ExchangeApiDown"))
    await wait_until(lambda: processed(db))
    assert await db.fetchval("SELECT count(*) FROM liquid_abt.notifications") == 1
    assert len(await audit(db, "pause_purchases")) == 1
    assert len(await audit(db, "breaker_transition")) == 1


async def test_a_stale_resolved_never_undoes_a_newer_firing(
    client: TestClient, db: asyncpg.Connection
) -> None:
    await send(client, alert("ExchangeApiDown", fingerprint="f", starts_at="2026-11-25T10:00:00Z"))
    await send(client, alert("ExchangeApiDown", fingerprint="f", starts_at="2026-11-25T11:00:00Z"))
    # The resolution of the first episode arrives late, after the second started.
    await send(
        client,
        alert(
            "ExchangeApiDown", fingerprint="f", starts_at="2026-11-25T10:00:00Z", status="resolved"
        ),
    )
    await wait_until(lambda: processed(db))
    assert await evaluate(client) == "down", "the newer episode still fires"
    assert await paused(db)
    assert await audit(db, "verify_recovery") == []


async def test_a_firing_already_resolved_is_ignored(
    client: TestClient, db: asyncpg.Connection
) -> None:
    await send(client, alert("ExchangeApiDown", status="resolved"))
    await settled(db)
    await send(client, alert("ExchangeApiDown"))  # delivered out of order, after its resolution
    await wait_until(lambda: processed(db))
    assert not await paused(db)
    assert await breaker_state(db) in (None, "closed")


async def test_automation_never_lifts_a_manual_hold(
    client: TestClient, db: asyncpg.Connection
) -> None:
    response = await client.post(
        "/api/admin/purchases/pause", json={"exchange": "kraken", "reason": "treasury audit"},
        headers={"Authorization": f"Bearer {ADMIN}"},
    )  # fmt: skip
    assert response.status == 200, await response.text()
    await send(client, alert("ExchangeApiDown"))
    await wait_until(lambda: processed(db))
    await send(client, alert("ExchangeApiDown", status="resolved"))
    await settled(db)
    assert await paused(db), "the admin's hold stays"
    refused = await db.fetch("SELECT * FROM liquid_abt.audit_log WHERE result = 'refused'")
    assert refused, "the refusal is in the audit log"
    assert await breaker_state(db) == "closed", "the breaker itself recovered"


async def test_rate_limiting_lowers_the_rate_and_the_evidence_restores_it(
    client: TestClient, db: asyncpg.Connection
) -> None:
    multiplier = (
        "SELECT api_rate_multiplier FROM liquid_abt.exchange_controls WHERE exchange = 'kraken'"
    )
    await send(client, alert("ExchangeApiRateLimited"))
    await wait_until(lambda: processed(db))
    assert await db.fetchval(multiplier) == pytest.approx(0.5)

    async def restored() -> bool:
        return await db.fetchval(multiplier) == 1

    # No call was rate limited since (nothing probes, the platform logged none): it comes back.
    await wait_until(restored)
    assert not await paused(db), "rate limiting alone pauses nothing"


async def test_failure_rate_high_queues_the_eligible_purchases(
    client: TestClient, db: asyncpg.Connection
) -> None:
    await seed_failures(db)
    await send(client, alert("BitcoinPurchaseFailureRateHigh"))
    await wait_until(lambda: processed(db))
    assert await db.fetchval("SELECT count(*) FROM liquid_abt.retry_queue") == 2
    assert not await paused(db)


async def test_dry_run_records_and_changes_nothing(
    aiohttp_client, database: Connection, kraken: FakeKraken, db: asyncpg.Connection
) -> None:
    client = await start(aiohttp_client, database, kraken, dry_run=True)
    await seed_failures(db)
    await send(client, alert("ExchangeApiDown"))
    await wait_until(lambda: processed(db))
    assert await breaker_state(db) in (None, "closed")
    assert not await paused(db)
    assert await db.fetchval("SELECT count(*) FROM liquid_abt.retry_queue") == 0
    dry = await db.fetch(
        "SELECT action FROM liquid_abt.audit_log WHERE result = 'dry_run' ORDER BY id"
    )
    assert [r["action"] for r in dry] == ["open_breaker", "pause_purchases", "queue_retries"]


async def test_alerts_without_actions_are_recorded_only(
    client: TestClient, db: asyncpg.Connection
) -> None:
    await send(client, alert("LiquidAbtCollectorStale", exchange=None))
    await wait_until(lambda: processed(db))
    assert await db.fetchval("SELECT count(*) FROM liquid_abt.audit_log") == 0


async def test_a_breaker_held_open_by_an_admin_keeps_purchases_paused_until_released(
    client: TestClient, db: asyncpg.Connection
) -> None:
    admin = {"Authorization": f"Bearer {ADMIN}"}
    response = await client.post(
        "/api/admin/circuit-breaker/kraken/force-state", json={"state": "OPEN", "reason": "key rotation"},
        headers=admin,
    )  # fmt: skip
    assert response.status == 200, await response.text()
    await send(client, alert("ExchangeApiDown"))
    await wait_until(lambda: processed(db))
    await send(client, alert("ExchangeApiDown", status="resolved"))
    await wait_until(lambda: processed(db))
    for _ in range(3):  # however often it looks, automation waits for the admin
        assert await evaluate(client) == "down"
    assert await breaker_state(db) == "open"
    assert await paused(db)
    assert await audit(db, "verify_recovery") == [], "no verification while held"
    refused = await db.fetch("SELECT * FROM liquid_abt.audit_log WHERE result = 'refused'")
    assert refused == [], "nothing tried, so nothing refused (no audit row per attempt)"

    # The admin releases the breaker: the incident model verifies and resumes the pause.
    response = await client.post("/api/admin/circuit-breaker/kraken/reset", headers=admin)
    assert response.status == 200, await response.text()
    await settled(db)
    assert not await paused(db)
    assert await breaker_state(db) == "closed"


async def test_a_failing_action_is_retried_with_all_the_others(
    client: TestClient, db: asyncpg.Connection
) -> None:
    # A real transient error from PostgreSQL (serialization failure) while pausing.
    await db.execute("""
        CREATE FUNCTION fail_once() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'injected' USING ERRCODE = '40001'; END $$;
        CREATE TRIGGER fail_pause BEFORE INSERT OR UPDATE ON liquid_abt.exchange_controls
            FOR EACH ROW EXECUTE FUNCTION fail_once();
    """)
    await seed_failures(db)
    await send(client, alert("ExchangeApiDown"))

    async def attempted() -> bool:
        samples = await scrape(client)
        return (
            value(samples, "liquid_abt_actions_total", action="open_breaker", result="failure") > 0
        )

    await wait_until(attempted)
    assert not await processed(db), "a transient failure leaves the alert state to retry"
    # Breaker, pause and queued retries commit together or not at all.
    assert await breaker_state(db) in (None, "closed"), "nothing half-applied"
    assert await db.fetchval("SELECT count(*) FROM liquid_abt.retry_queue") == 0

    await db.execute("DROP TRIGGER fail_pause ON liquid_abt.exchange_controls")
    await wait_until(lambda: processed(db))
    assert await paused(db)
    assert await breaker_state(db) == "open"
    assert await db.fetchval("SELECT count(*) FROM liquid_abt.retry_queue") == 2
    assert await db.fetchval("SELECT process_error FROM liquid_abt.notifications") is None


async def test_an_unknown_exchange_is_recorded_not_retried(
    client: TestClient, db: asyncpg.Connection
) -> None:
    await send(client, alert("ExchangeApiDown", exchange="binance"))
    await wait_until(lambda: processed(db))
    error = await db.fetchval("SELECT process_error FROM liquid_abt.notifications")
    assert error == "unknown exchange 'binance'"
    assert not await paused(db)
