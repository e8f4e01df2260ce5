"""The admin purchase routes as an operator calls them, and the impact report's numbers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from exporter.config import parse_config
from exporter.controls import api_rate, audit
from exporter.controls import pause as controls
from exporter.database.pool import Connection
from exporter.secrets import Secrets
from exporter.signals.classify import ReasonClassifier
from exporter.signals.impact import impact_report
from exporter.web.app import create_app

CONFIG = parse_config({
    "exchanges": ["kraken", "independent_reserve"],
    "collectors": {"interval": "1h", "timeout": "10s"},
    "kraken": {"enabled": False},
})  # fmt: skip
TOKEN = "admin-s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
START = datetime.fromisoformat("2025-01-10T10:00:00+00:00")
END = START + timedelta(hours=1)


@pytest.fixture
async def client(aiohttp_client, database: Connection) -> AsyncIterator[TestClient]:
    yield await aiohttp_client(create_app(CONFIG, database, Secrets(admin_token=TOKEN)))


async def post(client: TestClient, path: str, body: object) -> tuple[int, dict]:
    response = await client.post(f"/api/admin/{path}", json=body, headers=AUTH)
    return response.status, await response.json()


async def get(client: TestClient, path: str, **params: str) -> tuple[int, dict]:
    response = await client.get(f"/api/admin/{path}", params=params, headers=AUTH)
    return response.status, await response.json()


PAUSE = {
    "exchange": "kraken",
    "reason": "Exchange API maintenance",
    "estimatedDuration": "30 minutes",
}


# ---- authentication ----


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "purchases/pause"),
        ("POST", "purchases/resume"),
        ("GET", "purchases/status"),
        ("GET", "retry-queue"),
        ("GET", "impact-report"),
    ],
)
@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}]
)
async def test_every_route_wants_the_bearer_token(
    client: TestClient, db: asyncpg.Connection, method: str, path: str, headers: dict
) -> None:
    response = await client.request(method, f"/api/admin/{path}", json=PAUSE, headers=headers)
    assert response.status == 401
    assert not (await controls.status(db, "kraken")).purchases_paused
    assert await db.fetchval("SELECT count(*) FROM liquid_abt.audit_log") == 0


# ---- pause and resume ----


async def test_pause_sets_a_manual_hold_once(client: TestClient, db: asyncpg.Connection) -> None:
    status, body = await post(client, "purchases/pause", PAUSE)
    assert status == 200 and body["changed"] is True
    assert body["status"]["paused"] and body["status"]["manualHold"]
    assert body["status"]["reason"] == "Exchange API maintenance"
    assert body["status"]["estimatedDuration"] == "30 minutes"
    assert body["status"]["since"] is not None
    status, body = await post(client, "purchases/pause", PAUSE)
    assert status == 200 and body["changed"] is False
    entries = await audit.entries(db)
    assert [(e["actor"], e["action"], e["result"]) for e in reversed(entries)] == [
        ("admin", "pause_purchases", "success"),
        ("admin", "pause_purchases", "unchanged"),
    ]
    refused = await controls.resume(db, "kraken", actor="automation", cause="alert resolved")
    assert refused.refused  # the admin's hold outlives the alert


async def test_pause_accepts_the_runbooks_field_names(client: TestClient) -> None:
    runbook_call = {"reason": "Exchange API maintenance", "estimatedDuration": "30 minutes",
                    "affectedExchange": "independent_reserve"}  # fmt: skip
    status, body = await post(client, "purchases/pause", runbook_call)
    assert status == 200 and body["status"]["exchange"] == "independent_reserve"


async def test_resume_lifts_the_hold(client: TestClient, db: asyncpg.Connection) -> None:
    await post(client, "purchases/pause", PAUSE)
    status, body = await post(client, "purchases/resume", {"exchange": "kraken"})
    assert status == 200 and body["changed"] is True and body["message"] == "purchases resumed"
    assert body["status"]["paused"] is False and body["status"]["manualHold"] is False
    status, body = await post(client, "purchases/resume", {"exchange": "kraken"})
    assert status == 200 and body["changed"] is False
    assert body["message"] == "purchases are not paused"
    (last,) = await audit.entries(db, limit=1)
    assert (last["actor"], last["action"], last["result"]) == (
        "admin",
        "resume_purchases",
        "unchanged",
    )


async def test_resume_lifts_an_automatic_pause_too(
    client: TestClient, db: asyncpg.Connection
) -> None:
    await controls.pause(db, "kraken", reason="alert", estimated_duration=None, actor="automation",
                         cause="ExchangeApiDown", fingerprint="fp1")  # fmt: skip
    status, body = await post(
        client, "purchases/resume", {"exchange": "kraken", "reason": "checked"}
    )
    assert status == 200 and body["changed"] is True
    (last,) = await audit.entries(db, limit=1)
    assert last["cause"] == "checked"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "body must be a JSON object, got list"),
        ({"reason": "x"}, "exchange: required (or the runbook's affectedExchange)"),
        ({**PAUSE, "exchange": 7}, "exchange: expected a string, got 7"),
        ({**PAUSE, "reason": ""}, "reason: expected a non-empty string"),
        ({"exchange": "kraken"}, "reason: required, why, for the audit log and the status"),
        ({**PAUSE, "estimatedDuration": 30}, "estimatedDuration: expected a string, got 30"),
        ({**PAUSE, "reason": "x" * 501}, "reason: expected at most 500 characters, got 501"),
        (
            {**PAUSE, "paused": True},
            "unknown field(s) paused: allowed are affectedExchange, estimatedDuration, exchange, "
            "reason",
        ),
        ({**PAUSE, "estimated_duration": "1h"}, "unknown field(s) estimated_duration: "),
        (
            {**PAUSE, "affectedExchange": "independent_reserve"},
            "exchange ('kraken') and affectedExchange ('independent_reserve') differ: give one",
        ),
    ],
)
async def test_pause_rejects_bad_bodies_naming_the_field(
    client: TestClient, db: asyncpg.Connection, body: object, message: str
) -> None:
    status, answer = await post(client, "purchases/pause", body)
    assert status == 400 and answer["error"].startswith(message), answer
    assert await db.fetchval("SELECT count(*) FROM liquid_abt.audit_log") == 0


async def test_pause_and_resume_reject_invalid_json(client: TestClient) -> None:
    for path in ("purchases/pause", "purchases/resume"):
        response = await client.post(f"/api/admin/{path}", data=b"{nope", headers=AUTH)
        assert response.status == 400
        assert (await response.json())["error"].startswith("body is not valid JSON")


async def test_resume_rejects_unknown_fields(client: TestClient) -> None:
    status, body = await post(client, "purchases/resume", {"exchange": "kraken", "manual": False})
    assert status == 400 and "unknown field(s) manual" in body["error"]


@pytest.mark.parametrize("path", ["purchases/pause", "purchases/resume"])
async def test_unknown_exchange_is_404(
    client: TestClient, db: asyncpg.Connection, path: str
) -> None:
    status, body = await post(client, path, {"exchange": "binance", "reason": "x"})
    assert status == 404
    assert body["error"] == "unknown exchange 'binance': configured are kraken, independent_reserve"
    assert await db.fetchval("SELECT count(*) FROM liquid_abt.exchange_controls") == 0


async def test_status_lists_every_configured_exchange(
    client: TestClient, db: asyncpg.Connection
) -> None:
    await post(client, "purchases/pause", PAUSE)
    await api_rate.set_rate_multiplier(
        db, "independent_reserve", 0.5, actor="automation", cause="x"
    )
    status, body = await get(client, "purchases/status")
    assert status == 200
    kraken, reserve = body["exchanges"]
    assert (kraken["exchange"], kraken["paused"], kraken["manualHold"]) == ("kraken", True, True)
    assert kraken["apiRateMultiplier"] == 1.0
    assert reserve == {
        "exchange": "independent_reserve", "paused": False, "reason": None,
        "estimatedDuration": None, "since": None, "manualHold": False,
        "pausedByFingerprint": None, "apiRateMultiplier": 0.5,
    }  # fmt: skip


# ---- retry queue ----


async def queue_rows(db: asyncpg.Connection) -> None:
    await db.execute(
        """INSERT INTO liquid_abt.retry_queue
           (purchase_id, exchange, tenant_id, amount_aud, next_attempt_at, status)
           VALUES ('1', 'kraken', 'a', 100.10, now() + interval '1 minute', 'queued'),
                  ('2', 'kraken', 'b', 5, now() + interval '2 minutes', 'failed'),
                  ('3', 'independent_reserve', 'c', 7, now(), 'queued')"""
    )


async def test_retry_queue_lists_and_filters(client: TestClient, db: asyncpg.Connection) -> None:
    await queue_rows(db)
    status, body = await get(client, "retry-queue")
    assert status == 200 and body["total"] == 3 and body["nextOffset"] is None
    assert [e["purchaseId"] for e in body["entries"]] == ["3", "1", "2"]  # next due first
    first = body["entries"][1]
    assert first["amountAud"] == "100.10" and first["tenantId"] == "a"
    datetime.fromisoformat(first["nextAttemptAt"])
    _, body = await get(client, "retry-queue", exchange="kraken", status="queued")
    assert [e["purchaseId"] for e in body["entries"]] == ["1"]
    _, body = await get(client, "retry-queue", limit="1")
    assert (len(body["entries"]), body["total"], body["nextOffset"]) == (1, 3, 1)
    _, body = await get(client, "retry-queue", limit="2", offset="1")
    assert [e["purchaseId"] for e in body["entries"]] == ["1", "2"] and body["nextOffset"] is None


@pytest.mark.parametrize(
    ("params", "status", "message"),
    [
        ({"status": "done"}, 400, "status: expected one of queued, in_progress, succeeded, failed, "
                                  "cancelled, got 'done'"),
        ({"limit": "ten"}, 400, "limit: expected a whole number from 1 to 1000, got 'ten'"),
        ({"limit": "0"}, 400, "limit: expected a whole number from 1 to 1000, got 0"),
        ({"limit": "1001"}, 400, "limit: expected a whole number from 1 to 1000, got 1001"),
        ({"offset": "x"}, 400, "offset: expected a whole number from 0 to "),
        ({"exchange": "binance"}, 404, "unknown exchange 'binance'"),
        ({"exchange": "a\x00"}, 400, "exchange: must not contain a NUL character"),
        ({"sort": "id"}, 400, "unknown parameter(s) sort: allowed are exchange, limit, offset, "
                              "status"),
    ],
)  # fmt: skip
async def test_retry_queue_rejects_bad_parameters(
    client: TestClient, params: dict, status: int, message: str
) -> None:
    got, body = await get(client, "retry-queue", **params)
    assert got == status and body["error"].startswith(message)


# ---- impact report ----


async def failed_at(db: asyncpg.Connection, at: datetime, status: str, reason: str | None,
                    tenant: str, amount: str, exchange: str = "kraken") -> None:  # fmt: skip
    refund = amount if status == "refunded" else None
    await db.execute(
        """INSERT INTO bitcoin_purchases (tenant_id, amount_aud, status, failure_reason,
               exchange_provider, created_at, refund_amount, refund_processed_at)
           VALUES ($1, $2::numeric, $3, $4, $5, $6, $7::numeric,
                   CASE WHEN $7::numeric IS NULL THEN NULL ELSE $6::timestamptz END)""",
        tenant, amount, status, reason, exchange, at, refund,
    )  # fmt: skip


async def seed_incident(db: asyncpg.Connection) -> None:
    minutes = lambda m: START + timedelta(minutes=m)  # noqa: E731
    await failed_at(db, START, "failed", "Kraken API error: 503 Service Unavailable", "a", "100.00")
    await failed_at(db, minutes(30), "failed", "EAPI:Rate limit exceeded", "b", "200.50")
    await failed_at(db, minutes(45), "failed", "EService:Unavailable", "a", "50.00")
    await failed_at(db, minutes(50), "refunded", "EService:Unavailable", "c", "75.00")
    await failed_at(
        db, minutes(20), "failed", "request timed out", "d", "10.00", exchange="Binance"
    )
    await failed_at(db, minutes(40), "completed", None, "e", "999.00")
    await failed_at(db, minutes(40), "refunded", None, "e", "999.00")  # refunded, never failed
    await failed_at(
        db, START - timedelta(microseconds=1), "failed", "EService:Unavailable", "x", "1"
    )
    await failed_at(
        db, END, "failed", "EService:Unavailable", "y", "1"
    )  # the range is [start, end)


def totals(
    purchases: int, amount: str, tenants: int, refunded: int = 0, refund: str = "0.00"
) -> dict:
    return {
        "affectedPurchases": purchases,
        "totalAmountAud": amount,
        "affectedTenants": tenants,
        "refundedPurchases": refunded,
        "refundedAmountAud": refund,
    }


async def test_impact_report_numbers(client: TestClient, db: asyncpg.Connection) -> None:
    await seed_incident(db)
    status, body = await get(client, "impact-report", start="2025-01-10T10:00:00Z",
                             end="2025-01-10T21:00:00+10:00")  # fmt: skip
    assert status == 200, body
    assert body["start"] == START.isoformat() and body["filters"] == {
        "exchange": None,
        "reason": None,
    }
    assert {k: body[k] for k in totals(0, "", 0)} == totals(5, "435.50", 4, 1, "75.00")
    assert body["byExchange"] == {
        "binance": totals(1, "10.00", 1),
        "kraken": totals(4, "425.50", 3, 1, "75.00"),
    }
    assert body["byReason"] == {
        "exchange_unavailable": totals(3, "225.00", 2, 1, "75.00"),
        "network_timeout": totals(1, "10.00", 1),
        "rate_limited": totals(1, "200.50", 1),
    }


async def test_impact_report_filters(client: TestClient, db: asyncpg.Connection) -> None:
    await seed_incident(db)
    span = {"start": "2025-01-10T10:00:00Z", "end": "2025-01-10T11:00:00Z"}
    _, body = await get(client, "impact-report", **span, exchange="kraken")
    assert (body["affectedPurchases"], body["totalAmountAud"]) == (4, "425.50")
    _, body = await get(client, "impact-report", **span, reason="rate_limited")
    assert (body["affectedPurchases"], body["totalAmountAud"], body["affectedTenants"]) == (
        1, "200.50", 1,
    )  # fmt: skip
    assert list(body["byReason"]) == ["rate_limited"]


async def test_impact_report_of_a_quiet_range_is_zero(db: asyncpg.Connection) -> None:
    classifier = ReasonClassifier(CONFIG.purchases.failure_reasons)
    report = await impact_report(db, start=START, end=END, classifier=classifier)
    assert report.as_json()["totalAmountAud"] == "0.00"
    assert report.as_json()["byExchange"] == {} and report.totals.affected_purchases == 0


async def test_impact_report_takes_the_longest_range_allowed(client: TestClient) -> None:
    got, body = await get(client, "impact-report", start="2025-01-01T00:00:00Z",
                          end="2025-02-01T00:00:00Z")  # fmt: skip
    assert got == 200 and body["affectedPurchases"] == 0, body


async def test_the_impact_range_limit_is_configurable(aiohttp_client, database: Connection) -> None:
    config = CONFIG.model_copy(update={"admin": parse_config({"admin": {
        "impact_report_max_range": "1h"}}).admin})  # fmt: skip
    client = await aiohttp_client(create_app(config, database, Secrets(admin_token=TOKEN)))
    got, body = await get(client, "impact-report", start="2025-01-10T10:00:00Z",
                          end="2025-01-10T11:00:01Z")  # fmt: skip
    assert got == 400 and body["error"].startswith("range too long: 1h1s from start to end, at "
                                                   "most 1h"), body  # fmt: skip


@pytest.mark.parametrize(
    ("params", "status", "message"),
    [
        ({"end": "2025-01-10T11:00:00Z"}, 400,
         "start: required, an ISO 8601 time such as 2025-01-15T09:30:00Z"),
        ({"start": "2025-01-10T10:00:00Z"}, 400, "end: required"),
        ({"start": "0001-01-01T00:00:00+14:00", "end": "2025-01-10T11:00:00Z"}, 400,
         "start: out of range: '0001-01-01T00:00:00+14:00' is not between years 1 and 9999 in "
         "UTC"),
        ({"start": "2025-01-10T10:00:00Z", "end": "9999-12-31T23:59:59-14:00"}, 400,
         "end: out of range: '9999-12-31T23:59:59-14:00'"),
        ({"start": "0001-01-01T00:00:00Z", "end": "9999-12-31T23:59:59Z"}, 400,
         "range too long: 3652058d23h59m59s from start to end, at most 31d "
         "(admin.impact_report_max_range): split the report"),
        ({"start": "2025-01-01T00:00:00Z", "end": "2025-02-01T00:00:01Z"}, 400,
         "range too long: 31d1s from start to end, at most 31d"),
        ({"start": "yesterday", "end": "2025-01-10T11:00:00Z"}, 400,
         "start: not an ISO 8601 time: 'yesterday'"),
        ({"start": "2025-01-10T10:00:00", "end": "2025-01-10T11:00:00Z"}, 400,
         "start: add a time zone offset (Z or +10:00) to '2025-01-10T10:00:00'"),
        ({"start": "2025-01-10T11:00:00Z", "end": "2025-01-10T10:00:00Z"}, 400,
         "start (2025-01-10T11:00:00+00:00) must be before end (2025-01-10T10:00:00+00:00)"),
        ({"start": "2025-01-10T10:00:00Z", "end": "2025-01-10T11:00:00Z", "reason": "API"}, 400,
         "reason: expected one of exchange_unavailable, rate_limited, auth, "),
        ({"start": "2025-01-10T10:00:00Z", "end": "2025-01-10T11:00:00Z", "exchange": "ftx"}, 404,
         "unknown exchange 'ftx'"),
    ],
)  # fmt: skip
async def test_impact_report_rejects_bad_parameters(
    client: TestClient, params: dict, status: int, message: str
) -> None:
    got, body = await get(client, "impact-report", **params)
    assert got == status and body["error"].startswith(message), body
