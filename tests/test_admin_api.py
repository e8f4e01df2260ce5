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
    ("GET", "/api/admin/incidents", None),
    ("GET", "/api/admin/incidents/latest", None),
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


async def test_an_unexpected_error_is_a_json_500_pointing_at_the_log(
    client: TestClient, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    # A real fault from PostgreSQL that no input check can foresee: the table is gone.
    await db.execute("ALTER TABLE liquid_abt.audit_log RENAME TO audit_log_gone")
    payload = await call(client, "GET", "/api/admin/audit-log", status=500)
    assert payload == {"error": "internal error: the exporter's log has the details"}
    assert "admin API: unexpected error" in caplog.text and "audit_log" in caplog.text
