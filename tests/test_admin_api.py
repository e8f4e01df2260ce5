"""The admin API's breaker and audit-log routes over HTTP: auth, the runbook's calls, bad input."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from exporter.config import parse_config
from exporter.database.pool import Connection
from exporter.secrets import Secrets
from exporter.web.app import create_app
from exporter.web.keys import BREAKERS
from tests.helpers import scrape, value

TOKEN = "s3cret-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SETTINGS: dict[str, Any] = {
    "exchanges": ["kraken", "independent_reserve"],
    # Long intervals: the tests drive the breaker themselves, no background loop races them.
    "collectors": {"interval": "1h", "timeout": "10s"},
    "kraken": {"enabled": False},
}
CONFIG = parse_config(SETTINGS)
BREAKER = "/api/admin/circuit-breaker"
ENDPOINTS = [
    ("GET", f"{BREAKER}/status", None),
    ("GET", f"{BREAKER}/kraken", None),
    ("POST", f"{BREAKER}/kraken/force-state", {"state": "OPEN"}),
    ("POST", f"{BREAKER}/kraken/reset", {}),
    ("PATCH", f"{BREAKER}/kraken/config", {"failureThreshold": 3}),
    ("GET", "/api/admin/audit-log", None),
]


@pytest.fixture
async def client(aiohttp_client, database: Connection) -> AsyncIterator[TestClient]:
    yield await aiohttp_client(create_app(CONFIG, database, Secrets(admin_token=TOKEN)))


async def call(
    client: TestClient, method: str, path: str, body: Any = None, status: int = 200
) -> Any:
    response = await client.request(method, path, json=body, headers=AUTH)
    payload = await response.json()
    assert response.status == status, payload
    return payload


async def audit_entries(db: asyncpg.Connection) -> list[asyncpg.Record]:
    return await db.fetch("SELECT * FROM liquid_abt.audit_log ORDER BY id")


# ---- authentication -----------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
     {"Authorization": TOKEN}],
)  # fmt: skip
async def test_every_route_refuses_a_missing_or_wrong_token(
    client: TestClient, db: asyncpg.Connection, method: str, path: str, body: Any, headers: dict
) -> None:
    response = await client.request(method, path, json=body, headers=headers)
    assert response.status == 401
    assert "bearer token" in (await response.json())["error"]
    assert await audit_entries(db) == []


@pytest.mark.parametrize(("method", "path", "body"), ENDPOINTS)
async def test_without_a_token_configured_the_admin_api_is_disabled(
    aiohttp_client, database: Connection, method: str, path: str, body: Any
) -> None:
    client = await aiohttp_client(create_app(CONFIG, database, Secrets()))
    response = await client.request(method, path, json=body, headers=AUTH)
    assert response.status == 403
    assert "disabled" in (await response.json())["error"]


# ---- status ------------------------------------------------------------------------------------


async def test_status_of_all_breakers(client: TestClient) -> None:
    payload = await call(client, "GET", f"{BREAKER}/status")
    assert [b["exchange"] for b in payload["breakers"]] == ["kraken", "independent_reserve"]
    kraken = payload["breakers"][0]
    assert (kraken["state"], kraken["failureCount"], kraken["failureRate"]) == ("CLOSED", 0, 0.0)
    assert kraken["config"] == {
        "failureThreshold": 2, "recoveryTimeout": 30000, "monitoringWindow": 600000,
    }  # fmt: skip


async def test_status_of_one_breaker_as_the_runbook_reads_it(
    client: TestClient, db: asyncpg.Connection
) -> None:
    store = client.app[BREAKERS]
    await store.force_state("kraken", "OPEN", "automation", "kraken unavailable")
    # The incident model's evidence: both replicas see Kraken down.
    await db.execute(
        """UPDATE liquid_abt.circuit_breakers
           SET failure_count = 2, call_count = 2, last_failure_at = now()"""
    )
    payload = await call(client, "GET", f"{BREAKER}/kraken")
    assert (payload["state"], payload["failureCount"]) == ("OPEN", 2)
    assert payload["lastFailureTime"] is not None and payload["failureRate"] == 1.0


async def test_an_unknown_exchange_is_404_on_every_breaker_route(client: TestClient) -> None:
    for method, path, body in ENDPOINTS[1:5]:
        payload = await call(client, method, path.replace("kraken", "binance"), body, status=404)
        assert payload["error"].startswith("unknown exchange 'binance'")


# ---- force state ---------------------------------------------------------------------------------


async def test_force_state_moves_the_breaker_and_audits_the_admin(
    client: TestClient, db: asyncpg.Connection
) -> None:
    body = {"state": "open", "reason": "Kraken maintenance"}
    payload = await call(client, "POST", f"{BREAKER}/kraken/force-state", body)
    assert payload["transition"]["from"] == "CLOSED" and payload["transition"]["to"] == "OPEN"
    assert payload["status"]["state"] == "OPEN" and payload["status"]["manualHold"] is True
    [entry] = await audit_entries(db)
    assert (entry["actor"], entry["action"], entry["exchange"], entry["cause"]) == (
        "admin", "breaker_transition", "kraken", "Kraken maintenance",
    )  # fmt: skip
    assert (
        await db.fetchval("SELECT state FROM liquid_abt.circuit_breakers WHERE exchange = 'kraken'")
        == "open"
    )


async def test_forcing_the_current_state_again_changes_nothing(
    client: TestClient, db: asyncpg.Connection
) -> None:
    path = f"{BREAKER}/kraken/force-state"
    await call(client, "POST", path, {"state": "HALF_OPEN"})
    payload = await call(client, "POST", path, {"state": "HALF_OPEN"})
    assert payload["transition"] is None and payload["status"]["state"] == "HALF_OPEN"
    assert len(await audit_entries(db)) == 1


async def test_force_state_without_a_reason_records_a_default_cause(
    client: TestClient, db: asyncpg.Connection
) -> None:
    await call(client, "POST", f"{BREAKER}/kraken/force-state", {"state": "HALF_OPEN"})
    [entry] = await audit_entries(db)
    assert entry["cause"] == "forced HALF_OPEN through the admin API"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("not json", "body is not valid JSON: Expecting value: line 1 column 1 (char 0)"),
        (["OPEN"], "body must be a JSON object, got list"),
        ({}, "state: required, one of CLOSED, OPEN, HALF_OPEN"),
        (
            {"state": "ajar"},
            "state: unknown breaker state 'ajar': use one of CLOSED, OPEN, HALF_OPEN",
        ),
        ({"state": 1}, "state: expected one of CLOSED, OPEN, HALF_OPEN, got 1"),
        ({"state": None}, "state: expected one of CLOSED, OPEN, HALF_OPEN, got None"),
        ({"state": "OPEN", "force": True}, "unknown field(s) force: allowed are reason, state"),
        ({"state": "OPEN", "reason": 5}, "reason: expected a string, got 5"),
        ({"state": "OPEN", "reason": " "}, "reason: expected a non-empty string"),
        (
            {"state": "OPEN", "reason": "x" * 501},
            "reason: expected at most 500 characters, got 501",
        ),
        ({"state": "OPEN", "reason": "a\u0000b"}, "reason: must not contain a NUL character"),
        (
            {"state": "OPEN", "reason": "\ud800"},
            "reason: must be valid Unicode (it holds a lone surrogate)",
        ),
    ],
)
async def test_force_state_rejects_bad_bodies_saying_why(
    client: TestClient, db: asyncpg.Connection, body: Any, message: str
) -> None:
    path = f"{BREAKER}/kraken/force-state"
    if isinstance(body, str):
        response = await client.post(path, data=body, headers=AUTH)
    else:
        response = await client.post(path, json=body, headers=AUTH)
    assert response.status == 400
    assert (await response.json())["error"] == message
    assert await audit_entries(db) == []


# ---- reset ------------------------------------------------------------------------------


async def test_reset_closes_the_breaker(client: TestClient, db: asyncpg.Connection) -> None:
    await call(client, "POST", f"{BREAKER}/kraken/force-state", {"state": "OPEN"})
    payload = await call(client, "POST", f"{BREAKER}/kraken/reset", {"reason": "recovered"})
    assert payload["transition"]["to"] == "CLOSED" and payload["status"]["manualHold"] is False
    assert [(e["actor"], e["cause"]) for e in await audit_entries(db)][-1] == ("admin", "recovered")


async def test_reset_takes_no_body_at_all(client: TestClient, db: asyncpg.Connection) -> None:
    await call(client, "POST", f"{BREAKER}/kraken/force-state", {"state": "OPEN"})
    response = await client.post(f"{BREAKER}/kraken/reset", headers=AUTH)
    assert response.status == 200
    payload = await response.json()
    assert payload["transition"]["to"] == "CLOSED" and payload["status"]["failureCount"] == 0
    entry = (await audit_entries(db))[-1]
    assert (entry["action"], entry["cause"]) == (
        "breaker_transition",
        "reset through the admin API",
    )


async def test_reset_rejects_unknown_fields(client: TestClient) -> None:
    payload = await call(client, "POST", f"{BREAKER}/kraken/reset", {"why": "x"}, status=400)
    assert payload["error"] == "unknown field(s) why: allowed are reason"


# ---- settings -----------------------------------------------------------------------------------


async def test_update_config_takes_the_runbook_settings(
    client: TestClient, db: asyncpg.Connection
) -> None:
    body = {"failureThreshold": 3, "recoveryTimeout": 45000, "monitoringWindow": 600000}
    payload = await call(client, "PATCH", f"{BREAKER}/kraken/config", body)
    assert payload["config"] == body
    row = await db.fetchrow("SELECT * FROM liquid_abt.circuit_breakers WHERE exchange = 'kraken'")
    assert (row["failure_threshold"], row["recovery_timeout_ms"], row["monitoring_window_ms"]) == (
        3, 45000, 600000,
    )  # fmt: skip
    [entry] = await audit_entries(db)
    assert (entry["action"], entry["actor"]) == ("breaker_config", "admin")
    assert (await call(client, "GET", f"{BREAKER}/kraken"))["config"] == body


async def test_update_config_changes_only_the_given_setting(client: TestClient) -> None:
    payload = await call(client, "PATCH", f"{BREAKER}/kraken/config", {"recoveryTimeout": 45000})
    assert payload["config"] == {
        "failureThreshold": 2, "recoveryTimeout": 45000, "monitoringWindow": 600000,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "nothing to change: give any of failureThreshold, recoveryTimeout, monitoringWindow"),
        ({"reason": "tuning"}, "nothing to change"),
        (
            {"failureThreshold": 0},
            "failureThreshold: expected a whole number from 1 to 2147483647, got 0",
        ),
        (
            {"failureThreshold": "3"},
            "failureThreshold: expected a whole number from 1 to 2147483647, got '3'",
        ),
        (
            {"failureThreshold": True},
            "failureThreshold: expected a whole number from 1 to 2147483647, got True",
        ),
        (
            {"recoveryTimeout": -1},
            "recoveryTimeout: expected a whole number from 1 to 2147483647 (milliseconds), got -1",
        ),
        ({"monitoringWindow": 1.5}, "monitoringWindow: expected a whole number"),
        ({"monitoringWindow": 2**31}, "monitoringWindow: expected a whole number"),
        (
            {"failureThreshold": 3, "timeout": 1},
            "unknown field(s) timeout: allowed are failureThreshold, monitoringWindow, reason, "
            "recoveryTimeout",
        ),
        (
            {"failure_threshold": 3},
            "unknown field(s) failure_threshold: allowed are failureThreshold, ",
        ),
        ([3], "body must be a JSON object, got list"),
    ],
)
async def test_update_config_rejects_bad_bodies_saying_why(
    client: TestClient, db: asyncpg.Connection, body: Any, message: str
) -> None:
    payload = await call(client, "PATCH", f"{BREAKER}/kraken/config", body, status=400)
    assert payload["error"].startswith(message)
    assert await audit_entries(db) == []


# ---- audit log --------------------------------------------------------------------------


async def make_history(client: TestClient) -> None:
    """Five entries: kraken OPEN, HALF_OPEN, CLOSED; independent_reserve OPEN; a kraken config."""
    for state in ("OPEN", "HALF_OPEN", "CLOSED"):
        await call(client, "POST", f"{BREAKER}/kraken/force-state", {"state": state})
    await call(client, "POST", f"{BREAKER}/independent_reserve/force-state", {"state": "OPEN"})
    await call(client, "PATCH", f"{BREAKER}/kraken/config", {"failureThreshold": 3})


async def test_the_audit_log_lists_entries_newest_first(client: TestClient) -> None:
    await make_history(client)
    payload = await call(client, "GET", "/api/admin/audit-log")
    entries = payload["entries"]
    assert [e["action"] for e in entries] == ["breaker_config"] + ["breaker_transition"] * 4
    assert [e["id"] for e in entries] == sorted((e["id"] for e in entries), reverse=True)
    assert entries[1]["detail"]["to"] == "OPEN" and entries[1]["exchange"] == "independent_reserve"
    assert {e["actor"] for e in entries} == {"admin"}
    assert entries[0]["at"]
    assert (payload["total"], payload["limit"], payload["offset"], payload["nextOffset"]) == (
        5, 100, 0, None,
    )  # fmt: skip


async def test_the_audit_log_pages_with_the_total_and_filters_by_exchange(
    client: TestClient,
) -> None:
    await make_history(client)
    first = await call(client, "GET", "/api/admin/audit-log?limit=2&exchange=kraken")
    assert [e["exchange"] for e in first["entries"]] == ["kraken", "kraken"]
    assert (first["total"], first["nextOffset"]) == (4, 2)
    second = await call(client, "GET", "/api/admin/audit-log?limit=2&exchange=kraken&offset=2")
    assert [e["detail"]["to"] for e in second["entries"]] == ["HALF_OPEN", "OPEN"]
    assert (second["total"], second["nextOffset"]) == (4, None)
    gone = await call(client, "GET", "/api/admin/audit-log?exchange=bitstamp")
    assert (gone["entries"], gone["total"]) == ([], 0)  # any name: the log outlives the config


async def test_a_pinned_before_id_keeps_pages_still_while_the_log_grows(
    client: TestClient,
) -> None:
    await make_history(client)
    first = await call(client, "GET", "/api/admin/audit-log?limit=2")
    pin = first["entries"][0]["id"] + 1
    await call(client, "POST", f"{BREAKER}/kraken/force-state", {"state": "OPEN"})  # a new entry
    second = await call(client, "GET", f"/api/admin/audit-log?limit=2&offset=2&beforeId={pin}")
    assert second["total"] == 5
    assert [e["id"] for e in second["entries"]] == [pin - 3, pin - 4]


@pytest.mark.parametrize(
    ("query", "message"),
    [("limit=0", "limit: expected a whole number from 1 to 1000, got 0"),
     ("limit=1001", "limit: expected a whole number from 1 to 1000, got 1001"),
     ("limit=abc", "limit: expected a whole number from 1 to 1000, got 'abc'"),
     ("limit=-1", "limit: expected a whole number from 1 to 1000, got '-1'"),
     ("limit=1.5", "limit: expected a whole number from 1 to 1000, got '1.5'"),
     ("limit=" + "9" * 5000, "limit: expected a whole number from 1 to 1000, got '99999999"),
     ("limit=1&limit=2", "limit: given 2 times, give it once"),
     ("offset=-1", "offset: expected a whole number from 0 to 9223372036854775807, got '-1'"),
     ("beforeId=x", "beforeId: expected a whole number from 1 to 9223372036854775807, got 'x'"),
     ("beforeId=0", "beforeId: expected a whole number from 1 to 9223372036854775807, got 0"),
     ("beforeId=99999999999999999999", "beforeId: expected a whole number from 1 to"),
     ("exchange=%00", "exchange: must not contain a NUL character"),
     ("before_id=5", "unknown parameter(s) before_id: allowed are beforeId, exchange, limit, "
                     "offset")],
)  # fmt: skip
async def test_the_audit_log_rejects_bad_parameters_naming_them(
    client: TestClient, query: str, message: str
) -> None:
    payload = await call(client, "GET", f"/api/admin/audit-log?{query}", status=400)
    assert payload["error"].startswith(message)


async def test_an_empty_parameter_is_the_same_as_none(client: TestClient) -> None:
    await make_history(client)
    payload = await call(client, "GET", "/api/admin/audit-log?limit=&exchange=&offset=")
    assert (len(payload["entries"]), payload["total"], payload["limit"]) == (5, 5, 100)


async def test_the_audit_log_accepts_the_largest_limit(client: TestClient) -> None:
    await call(client, "GET", "/api/admin/audit-log?limit=1000")


# ---- metrics and the app's wiring --------------------------------------------------------------


async def test_transitions_appear_at_metrics(client: TestClient) -> None:
    name = "liquid_abt_circuit_breaker_transitions_total"
    before = await scrape(client)
    for exchange in ("kraken", "independent_reserve"):
        assert value(before, name, exchange=exchange, from_state="closed", to_state="open") == 0
        assert (
            value(before, name, exchange=exchange, from_state="half_open", to_state="closed") == 0
        )
    await call(client, "POST", f"{BREAKER}/kraken/force-state", {"state": "OPEN"})
    after = await scrape(client)
    assert value(after, name, exchange="kraken", from_state="closed", to_state="open") == 1
    assert value(after, name, exchange="kraken", from_state="open", to_state="closed") == 0


@pytest.mark.parametrize(
    "path", ["circuit-breaker/status", "purchases/status", "retry-queue", "audit-log"]
)
async def test_every_admin_call_answers_503_while_the_database_is_away(
    aiohttp_client, path: str
) -> None:
    from exporter.config import parse_config
    from exporter.database.embedded import free_port
    from exporter.database.pool import Connection
    from exporter.secrets import Secrets
    from exporter.web.app import create_app

    nowhere = Connection(f"postgresql://postgres@127.0.0.1:{free_port()}/postgres")
    config = parse_config({"kraken": {"enabled": False}, "database": {"connect_timeout": "1s"}})
    client = await aiohttp_client(create_app(config, nowhere, Secrets(admin_token="t")))
    response = await client.get(f"/api/admin/{path}", headers={"Authorization": "Bearer t"})
    assert response.status == 503
    assert "database unavailable" in (await response.json())["error"]


# ---- hostile input: a 4xx that names the problem, never a 500, nothing written ----------------

BODY_ENDPOINTS = [
    ("POST", f"{BREAKER}/kraken/force-state"),
    ("POST", f"{BREAKER}/kraken/reset"),
    ("PATCH", f"{BREAKER}/kraken/config"),
    ("POST", "/api/admin/purchases/pause"),
    ("POST", "/api/admin/purchases/resume"),
]
CORRUPT_GZIP = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + b"\xff" * 40


@pytest.mark.parametrize(("method", "path"), BODY_ENDPOINTS)
@pytest.mark.parametrize(
    ("data", "headers", "status", "message"),
    [
        (b"[" * 30_000 + b"]" * 30_000, {}, 400, "body is not valid JSON: nested too deeply"),
        (b'{"reason": ' + b"[" * 5000 + b"]" * 5000 + b"}", {}, 400,
         "body is not valid JSON: nested too deeply"),
        (b'{"failureThreshold": ' + b"9" * 5000 + b"}", {}, 400,
         "body is not valid JSON: Exceeds the limit (4300 digits)"),
        (CORRUPT_GZIP, {"Content-Encoding": "gzip"}, 400,
         "body cannot be read: Can not decode content-encoding: gzip"),
        (b"\xff\xfe{", {}, 400, "body is not valid JSON"),
        (b"{" + b" " * (64 * 1024) + b"}", {}, 413, "body too large: an admin body is at most "),
    ],
)  # fmt: skip
async def test_hostile_bodies_are_refused_naming_the_problem(
    client: TestClient, db: asyncpg.Connection, method: str, path: str, data: bytes,
    headers: dict, status: int, message: str,
) -> None:  # fmt: skip
    response = await client.request(method, path, data=data, headers={**AUTH, **headers})
    assert response.status == status, await response.text()
    assert (await response.json())["error"].startswith(message)
    assert await audit_entries(db) == []
    assert await db.fetchval("SELECT count(*) FROM liquid_abt.exchange_controls") == 0


async def test_an_unknown_admin_path_is_a_json_404(client: TestClient) -> None:
    payload = await call(client, "GET", "/api/admin/circuit-breakers", status=404)
    assert payload["error"] == (
        "no admin endpoint /api/admin/circuit-breakers: docs/admin.md lists them"
    )
    assert (await call(client, "GET", "/api/admin", status=404))["error"].startswith("no admin")


async def test_a_wrong_method_is_a_json_405_with_the_allowed_one(client: TestClient) -> None:
    response = await client.delete(f"{BREAKER}/kraken/reset", headers=AUTH)
    assert response.status == 405 and response.headers["Allow"] == "POST"
    assert (await response.json())["error"] == (
        "DELETE is not allowed on /api/admin/circuit-breaker/kraken/reset: use POST"
    )


async def test_an_unknown_path_still_wants_the_token(client: TestClient) -> None:
    response = await client.get("/api/admin/nope")
    assert response.status == 401 and (await response.json())["hint"].startswith("Authorization")


async def test_an_unexpected_error_is_a_json_500_pointing_at_the_log(
    client: TestClient, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    # A real fault from PostgreSQL that no input check can foresee: the table is gone.
    await db.execute("ALTER TABLE liquid_abt.audit_log RENAME TO audit_log_gone")
    payload = await call(client, "GET", "/api/admin/audit-log", status=500)
    assert payload == {"error": "internal error: the exporter's log has the details"}
    assert "admin API: unexpected error" in caplog.text and "audit_log" in caplog.text
