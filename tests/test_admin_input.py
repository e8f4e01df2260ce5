"""The admin API refuses what it must, saying why, and writes nothing: missing or wrong tokens,
bad bodies, bad parameters, hostile input, unknown paths and methods.

None of these tests changes anything, so they share one database and one app (with every
background loop) per module instead of starting both for each of their ~100 cases; each still
checks that nothing was written. The admin API's effects are tested in test_admin_api.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from exporter.database.pool import Connection
from exporter.secrets import Secrets
from exporter.web.app import create_app
from tests.conftest import create_database, drop_database, with_database
from tests.test_admin_api import AUTH, BREAKER, CONFIG, ENDPOINTS, TOKEN, audit_entries, call

# One event loop for the module: its app and its clients live as long as the module.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def database(pg_server_dsn: str, template_db: str) -> AsyncIterator[Connection]:
    """The module's database: written by no test here (each checks)."""
    name = await create_database(pg_server_dsn, template_db, prefix="input")
    yield Connection(with_database(pg_server_dsn, name))
    await drop_database(pg_server_dsn, name)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def db(database: Connection) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database.dsn)
    yield conn
    await conn.close()


async def _client(database: Connection, secrets: Secrets) -> TestClient:
    # A new connection per request: a refused body may close its connection, and the next
    # test must not inherit that (keep-alive has tests of its own).
    client = TestClient(
        TestServer(create_app(CONFIG, database, secrets)),
        connector=aiohttp.TCPConnector(force_close=True),
    )
    await client.start_server()
    return client


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(database: Connection) -> AsyncIterator[TestClient]:
    started = await _client(database, Secrets(admin_token=TOKEN))
    yield started
    await started.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def disabled_client(database: Connection) -> AsyncIterator[TestClient]:
    """The same app without an admin token: the admin API is off."""
    started = await _client(database, Secrets())
    yield started
    await started.close()


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
    disabled_client: TestClient, method: str, path: str, body: Any
) -> None:
    response = await disabled_client.request(method, path, json=body, headers=AUTH)
    assert response.status == 403
    assert "disabled" in (await response.json())["error"]


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
