"""GET /api/admin/status: every exchange's state in one read, and the public part the landing
page shows (nothing /metrics does not already expose). Also: the admin API's one naming style."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from exporter.config import parse_config
from exporter.controls import audit
from exporter.controls.breaker import BreakerStore
from exporter.database.pool import Connection
from exporter.operator import render
from exporter.secrets import Secrets
from exporter.web.admin.status import (
    PUBLIC_FIELDS,
    RECENT_ACTIONS,
    exchange_status,
    public_view,
)
from exporter.web.app import create_app
from tests.helpers import parse_samples, wait_until

TOKEN = "status-s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CONFIG = parse_config({
    "exchanges": ["kraken", "independent_reserve"],
    "collectors": {"interval": "200ms", "timeout": "200ms"},
    "breaker": {"recovery_timeout": "1h"},
    "kraken": {"enabled": False},
})  # fmt: skip


@pytest.fixture
async def client(aiohttp_client, database: Connection) -> AsyncIterator[TestClient]:
    yield await aiohttp_client(create_app(CONFIG, database, Secrets(admin_token=TOKEN)))


async def call(client: TestClient, method: str, path: str, body: Any = None) -> Any:
    response = await client.request(method, f"/api/admin/{path}", json=body, headers=AUTH)
    payload = await response.json()
    assert response.status == 200, payload
    return payload


async def incident(client: TestClient, db: asyncpg.Connection) -> None:
    """kraken: held OPEN, paused by an admin, two purchases waiting, one verification failed."""
    await call(client, "POST", "circuit-breaker/kraken/force-state",
               {"state": "OPEN", "reason": "Kraken maintenance"})  # fmt: skip
    await call(client, "POST", "purchases/pause",
               {"affectedExchange": "kraken", "reason": "Exchange API maintenance",
                "estimatedDuration": "30 minutes"})  # fmt: skip
    await db.execute(
        """INSERT INTO liquid_abt.retry_queue
           (purchase_id, exchange, amount_aud, next_attempt_at, status, enqueued_at)
           VALUES ('1', 'kraken', 10, now() + interval '1 minute', 'queued',
                   now() - interval '5 minutes'),
                  ('2', 'kraken', 20, now(), 'in_progress', now() - interval '1 minute'),
                  ('3', 'kraken', 30, now(), 'failed', now() - interval '1 hour')"""
    )
    await db.execute(
        """INSERT INTO liquid_abt.incidents (exchange, phase, cause, started_at, relapses,
                                             next_attempt_at, last_verification)
           VALUES ('kraken', 'down', 'alert:ExchangeApiDown', now() - interval '10 minutes', 1,
                   now() + interval '1 minute',
                   '{"passed": false, "at": "2025-01-10T10:00:00+00:00",
                     "checks": [{"name": "Ticker", "ok": false, "detail": "timeout"}]}')
           ON CONFLICT (exchange) DO UPDATE SET phase = excluded.phase, cause = excluded.cause,
               started_at = excluded.started_at, relapses = excluded.relapses,
               next_attempt_at = excluded.next_attempt_at,
               last_verification = excluded.last_verification"""
    )
    await audit.record(db, actor=audit.ACTOR_AUTOMATION, action="verify_recovery",
                       result="failure", exchange="kraken",
                       cause="recovery verification failed: Ticker: timeout")  # fmt: skip


async def test_status_tells_every_exchange_s_state_in_one_call(
    client: TestClient, db: asyncpg.Connection
) -> None:
    await incident(client, db)
    status = await call(client, "GET", "status")
    assert status["version"] and status["dryRun"] is False
    kraken, reserve = status["exchanges"]
    assert (kraken["exchange"], reserve["exchange"]) == ("kraken", "independent_reserve")
    assert (kraken["breaker"]["state"], kraken["breaker"]["manualHold"]) == ("OPEN", True)
    assert kraken["purchases"] == {
        "paused": True, "reason": "Exchange API maintenance", "estimatedDuration": "30 minutes",
        "since": kraken["purchases"]["since"], "manualHold": True, "pausedByFingerprint": None,
    }  # fmt: skip
    assert kraken["apiRateMultiplier"] == 1.0
    queue = kraken["retryQueue"]
    assert (queue["queued"], queue["inProgress"], queue["failed"]) == (1, 1, 1)
    assert datetime.fromisoformat(queue["oldestWaitingSince"]) < datetime.fromisoformat(
        queue["nextAttemptAt"]
    )
    model = kraken["incident"]
    assert (model["phase"], model["cause"], model["relapses"]) == (
        "down",
        "alert:ExchangeApiDown",
        1,
    )
    assert model["since"] and model["nextVerificationAt"] and not model["probationUntil"]
    assert kraken["breaker"]["nextAttemptTime"] is None  # held by an admin: no automatic retry
    assert kraken["lastVerification"] == {
        "at": "2025-01-10T10:00:00+00:00", "passed": False,
        "checks": [{"name": "Ticker", "ok": False, "detail": "timeout"}],
    }  # fmt: skip
    actions = [(a["actor"], a["action"]) for a in kraken["recentActions"]]
    assert actions == [
        ("automation", "verify_recovery"), ("admin", "pause_purchases"),
        ("admin", "breaker_transition"),
    ]  # fmt: skip
    assert reserve["breaker"]["state"] == "CLOSED" and reserve["purchases"]["paused"] is False
    assert reserve["retryQueue"] == {"queued": 0, "inProgress": 0, "failed": 0,
                                     "oldestWaitingSince": None, "nextAttemptAt": None}  # fmt: skip
    assert reserve["lastVerification"] is None and reserve["recentActions"] == []
    assert reserve["incident"] == {"phase": "normal", "cause": None, "reason": None, "since": None,
                                   "relapses": 0, "nextVerificationAt": None,
                                   "probationUntil": None}  # fmt: skip


async def test_status_says_why_purchases_stopped_in_words(
    client: TestClient, db: asyncpg.Connection
) -> None:
    await incident(client, db)
    words = "kraken refuses connections on 2 of 2 replicas for 18 s"
    await audit.record(db, actor=audit.ACTOR_AUTOMATION, action="incident_opened",
                       result="success", exchange="kraken",
                       cause=f"{words}; evidence: 2 of 2 live replicas saw 2+ failed rounds in a "
                             "row; replicas answered: 0; status: online")  # fmt: skip
    answer = await call(client, "GET", "status")
    kraken = answer["exchanges"][0]
    assert kraken["incident"]["reason"] == words
    screen = render.status(answer, datetime.fromisoformat(answer["at"]))
    assert "incident down since" in screen and f": {words}, 1 relapse(s)" in screen
    opened = re.search(rf"incident_opened +success +{words}$", screen, re.MULTILINE)
    assert opened, "the CLI cuts the evidence, not why"


async def test_status_writes_nothing(database: Connection, db: asyncpg.Connection) -> None:
    """Called without the app, so no background loop writes either: a never-used exchange gets
    no rows, and the status shows the configured defaults."""
    pool = await asyncpg.create_pool(database.dsn, min_size=1, max_size=5)
    try:
        store = BreakerStore(pool, CONFIG, CollectorRegistry())
        status = await exchange_status(pool, CONFIG, store)
    finally:
        await pool.close()
    reserve = status["exchanges"][1]
    assert (reserve["breaker"]["state"], reserve["breaker"]["config"]["failureThreshold"]) == (
        "CLOSED", CONFIG.breaker.failure_threshold,
    )  # fmt: skip
    for table in ("circuit_breakers", "exchange_controls", "incidents", "audit_log"):
        assert await db.fetchval(f"SELECT count(*) FROM liquid_abt.{table}") == 0, table


async def test_recent_actions_are_the_newest_few(client: TestClient) -> None:
    for state in ("OPEN", "HALF_OPEN", "CLOSED") * 3:
        await call(client, "POST", "circuit-breaker/kraken/force-state", {"state": state})
    recent = (await call(client, "GET", "status"))["exchanges"][0]["recentActions"]
    assert len(recent) == RECENT_ACTIONS
    assert [a["detail"]["to"] for a in recent[:3]] == ["CLOSED", "HALF_OPEN", "OPEN"]


# Failover's route is the one primary's: the list form names several exchanges, all primary.
KRAKEN_PRIMARY = parse_config({
    "exchanges": {"kraken": {"role": "primary"}},
    "collectors": {"interval": "200ms", "timeout": "200ms"},
    "breaker": {"recovery_timeout": "1h"},
    "kraken": {"enabled": False},
})  # fmt: skip


async def test_the_public_view_is_what_metrics_already_show(
    aiohttp_client, database: Connection, db: asyncpg.Connection
) -> None:
    client = await aiohttp_client(create_app(KRAKEN_PRIMARY, database, Secrets(admin_token=TOKEN)))
    await incident(client, db)
    view = public_view(await call(client, "GET", "status"))
    kraken = view["exchanges"][0]
    assert set(kraken) == {"exchange", "incident", "breaker", "purchases", "apiRateMultiplier",
                           "retryQueue", "route"}  # fmt: skip
    assert kraken["route"] == {"to": "none", "blockedGuard": None}  # paused, not routed
    assert kraken["incident"] == {"phase": "down", "cause": "alert"}  # the metric's cause class
    shown = {(k, sub) for k, v in kraken.items() if isinstance(v, dict) for sub in v}
    shown |= {(k,) for k, v in kraken.items() if not isinstance(v, dict) and k != "exchange"}
    assert shown == set(PUBLIC_FIELDS), "every value on the page is named beside its metric"

    async def metrics_caught_up() -> bool:
        """A refresh after incident() wrote its last row (the collectors run on their own)."""
        text = await (await client.get("/metrics")).text()
        return 'liquid_abt_incident_phase{exchange="kraken",phase="down"} 1.0' in text

    await wait_until(metrics_caught_up)
    samples = parse_samples(await (await client.get("/metrics")).text())
    metric = {name: value for (name, labels), value in samples.items()
              if ("exchange", "kraken") in labels and (name != "liquid_abt_manual_hold"
                                                       or ("control", "purchases") in labels)}  # fmt: skip
    since = datetime.fromisoformat(kraken["purchases"]["since"]).timestamp()
    assert metric["liquid_abt_purchases_paused_since_timestamp_seconds"] == pytest.approx(since)
    assert metric["liquid_abt_retry_queue_depth"] == kraken["retryQueue"]["waiting"] == 2
    assert metric["liquid_abt_api_rate_multiplier"] == kraken["apiRateMultiplier"]
    assert metric["liquid_abt_manual_hold"] == 1 and kraken["purchases"]["manualHold"]
    assert samples[("liquid_abt_circuit_breaker_state",
                    frozenset({("exchange", "kraken"), ("state", "open")}))] == 1  # fmt: skip
    assert samples[("liquid_abt_incident_phase",
                    frozenset({("exchange", "kraken"), ("phase", "down")}))] == 1  # fmt: skip
    assert samples[("liquid_abt_incident_cause",
                    frozenset({("exchange", "kraken"), ("cause", "alert")}))] == 1  # fmt: skip


# ---- one naming style ----

CAMEL = re.compile(r"^[a-z][a-zA-Z0-9]*$")
DATA_KEYS = {"detail", "byExchange", "byReason"}  # their keys are data, not field names


def names(value: Any, path: str = "") -> list[tuple[str, str]]:
    """Every (path, key) of a JSON value, except inside the data-keyed objects."""
    found: list[tuple[str, str]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            found.append((path, key))
            if key not in DATA_KEYS:
                found += names(item, f"{path}.{key}")
            elif key != "detail":
                for inner in item.values():
                    found += names(inner, f"{path}.{key}.*")
    elif isinstance(value, list):
        for item in value:
            found += names(item, f"{path}[]")
    return found


async def test_every_admin_answer_names_its_fields_in_camel_case(
    client: TestClient, db: asyncpg.Connection
) -> None:
    await incident(client, db)
    answers = [
        await call(client, "GET", "status"),
        await call(client, "GET", "circuit-breaker/status"),
        await call(client, "PATCH", "circuit-breaker/kraken/config", {"failureThreshold": 4}),
        await call(client, "POST", "circuit-breaker/kraken/reset", {}),
        await call(client, "POST", "purchases/resume", {"exchange": "kraken"}),
        await call(client, "GET", "purchases/status"),
        await call(client, "GET", "retry-queue"),
        await call(client, "GET", "audit-log"),
        await call(
            client, "GET", "impact-report?start=2025-01-01T00:00:00Z&end=2025-01-02T00:00:00Z"
        ),
        await (await client.get("/api/admin/nope", headers=AUTH)).json(),
        await (await client.get("/api/admin/status")).json(),  # 401
    ]
    wrong = [
        (path, key) for answer in answers for path, key in names(answer) if not CAMEL.match(key)
    ]
    assert wrong == []
