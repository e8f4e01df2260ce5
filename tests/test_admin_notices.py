"""The admin API's customer-notice routes over HTTP: list with filters, hold / release / cancel,
bad input named, auth."""

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

TOKEN = "s3cret-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CONFIG = parse_config({
    "collectors": {"interval": "1h", "timeout": "10s"}, "kraken": {"enabled": False},
    "notices": {"enabled": False},  # the notices are arranged by hand
})  # fmt: skip


@pytest.fixture
async def client(aiohttp_client, database: Connection) -> AsyncIterator[TestClient]:
    yield await aiohttp_client(create_app(CONFIG, database, Secrets(admin_token=TOKEN)))


async def call(client: TestClient, method: str, path: str, body: Any = None,
               status: int = 200) -> Any:  # fmt: skip
    response = await client.request(method, path, json=body, headers=AUTH)
    payload = await response.json()
    assert response.status == status, payload
    return payload


async def arrange(db: asyncpg.Connection) -> tuple[int, list[int]]:
    incident = await db.fetchval(
        """INSERT INTO liquid_abt.incident_periods (exchange, cause, started_at)
           VALUES ('kraken', 'unavailable', now() - interval '10 minutes') RETURNING id"""
    )
    ids = [
        await db.fetchval(
            """INSERT INTO liquid_abt.customer_notices (incident_id, exchange, kind, tenant_id,
                   channels, message) VALUES ($1, 'kraken', $2, $3, '{email}', 'text')
               RETURNING id""",
            incident,
            kind,
            tenant,
        )  # fmt: skip
        for kind, tenant in [
            ("incident_started", None),
            ("purchase_failed", "t1"),
            ("purchase_failed", "t2"),
        ]  # fmt: skip
    ]
    return incident, ids


async def test_list_filters_and_pages(client: TestClient, db: asyncpg.Connection) -> None:
    incident, ids = await arrange(db)
    page = await call(client, "GET", "/api/admin/notices?kind=purchase_failed&limit=1")
    assert (page["total"], page["nextOffset"]) == (2, 1)
    (entry,) = page["entries"]
    assert (entry["id"], entry["incidentId"], entry["tenantId"]) == (ids[2], incident, "t2")
    assert entry["channels"] == ["email"] and entry["state"] == "queued"
    page = await call(client, "GET", f"/api/admin/notices?incident={incident}&state=held")
    assert page["total"] == 0


async def test_hold_release_cancel(client: TestClient, db: asyncpg.Connection) -> None:
    incident, ids = await arrange(db)
    held = await call(client, "POST", "/api/admin/notices/hold", {"ids": ids[:2]})
    assert held == {"action": "hold", "changed": ids[:2]}
    released = await call(client, "POST", "/api/admin/notices/release", {"ids": [ids[0]]})
    assert released["changed"] == [ids[0]]
    cancelled = await call(client, "POST", "/api/admin/notices/cancel",
                           {"incident": incident, "reason": "false alarm"})  # fmt: skip
    assert cancelled["changed"] == ids
    entry = await db.fetchrow(
        "SELECT actor, cause FROM liquid_abt.audit_log WHERE action = 'cancel_customer_notices'"
    )
    assert (entry["actor"], entry["cause"]) == ("admin", "false alarm")


@pytest.mark.parametrize(("method", "path", "body", "message"), [
    ("POST", "/api/admin/notices/hold", {}, "name the notices: ids, or incident"),
    ("POST", "/api/admin/notices/cancel", {"ids": [0]}, "expected a whole number from 1"),
    ("GET", "/api/admin/notices?state=lost", None, "expected one of queued, held, claimed"),
    ("GET", "/api/admin/notices?kind=sms", None, "expected one of incident_started"),
])  # fmt: skip
async def test_bad_input_is_named(client: TestClient, method: str, path: str, body: Any,
                                  message: str) -> None:  # fmt: skip
    answer = await call(client, method, path, body, status=400)
    assert message in answer["error"], answer


async def test_the_routes_need_the_admin_token(client: TestClient) -> None:
    response = await client.post("/api/admin/notices/cancel", json={"ids": [1]})
    assert response.status == 401
