"""The Alertmanager webhook: credentials, validation, size limit, de-duplication, database outage."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from exporter.config import parse_config
from exporter.database.pool import Connection
from exporter.secrets import Secrets
from exporter.web.app import create_app
from tests.alertmanager_payloads import alert, notification
from tests.helpers import scrape, value

TOKEN = "webhook-secret"
CONFIG = parse_config({"kraken": {"enabled": False}, "receiver": {"actions": {}}})
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def client(aiohttp_client, database: Connection) -> AsyncIterator[TestClient]:
    secrets = Secrets(webhook_token=TOKEN, webhook_basic_user="am", webhook_basic_password="pw")
    yield await aiohttp_client(create_app(CONFIG, database, secrets))


async def post(client: TestClient, body: object, headers: dict | None = None):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = await client.post(
        "/webhook/alertmanager", data=data, headers=AUTH if headers is None else headers
    )
    return response.status, await response.json()


async def notifications(db: asyncpg.Connection) -> list[asyncpg.Record]:
    return await db.fetch("SELECT * FROM liquid_abt.notifications ORDER BY id")


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
     {"Authorization": "Basic " + base64.b64encode(b"am:nope").decode()}, {"Authorization": TOKEN}],
)  # fmt: skip
async def test_without_valid_credentials_nothing_is_recorded(
    client: TestClient, db: asyncpg.Connection, headers: dict
) -> None:
    status, body = await post(client, notification([alert("ExchangeApiDown")]), headers)
    assert status == 401 and body["status"] == "unauthorized"
    assert await notifications(db) == []
    assert (
        value(await scrape(client), "liquid_abt_webhook_notifications_total", result="unauthorized")
        == 1
    )


async def test_basic_auth_is_accepted(client: TestClient, db: asyncpg.Connection) -> None:
    basic = {"Authorization": "Basic " + base64.b64encode(b"am:pw").decode()}
    status, _ = await post(client, notification([alert("ExchangeApiDown")]), basic)
    assert status == 200
    assert len(await notifications(db)) == 1


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "body is not valid JSON"),
        ({"version": "3", "groupKey": "g", "status": "firing", "receiver": "r", "alerts": []},
         "version: Input should be '4'"),
        ({"version": "4", "groupKey": "g", "status": "firing", "receiver": "r"}, "alerts: Field required"),
        (notification([{**alert("X"), "status": "pending"}]), "alerts.0.status"),
        (notification([{**alert("X"), "startsAt": "yesterday"}]), "alerts.0.startsAt"),
        (notification([{**alert("X"), "fingerprint": ""}]), "alerts.0.fingerprint"),
        (notification([{**alert("X"), "labels": {"exchange": "kraken"}}]), "alerts.0.labels: alertname is missing"),
        ([1, 2], "Input should be a valid dictionary"),
    ],
)  # fmt: skip
async def test_invalid_payloads_get_400_and_say_why(
    client: TestClient, db: asyncpg.Connection, body: object, message: str
) -> None:
    status, reply = await post(client, body)
    assert status == 400, reply
    assert message in reply["message"]
    assert await notifications(db) == []


async def test_a_body_over_the_limit_gets_413(client: TestClient, db: asyncpg.Connection) -> None:
    big = notification([alert("X", annotations={"description": "x" * 2_000_000})])
    status, reply = await post(client, big)
    assert status == 413 and "larger than 1048576 bytes" in reply["message"]
    assert await notifications(db) == []


async def test_each_alert_is_recorded_once_with_its_own_status(
    client: TestClient, db: asyncpg.Connection
) -> None:
    down = alert("ExchangeApiDown", fingerprint="aaa")
    slow = alert("ExchangeApiSlow", fingerprint="bbb", status="resolved")
    payload = notification([down, slow], status="firing")
    assert (await post(client, payload))[0] == 200
    # The same notification again: repeat_interval, a second Alertmanager, a retry.
    status, reply = await post(client, payload)
    assert status == 200 and reply["status"] == "duplicate"
    rows = await notifications(db)
    assert [(r["fingerprint"], r["status"], r["alertname"], r["exchange"]) for r in rows] == [
        ("aaa", "firing", "ExchangeApiDown", "kraken"),
        ("bbb", "resolved", "ExchangeApiSlow", "kraken"),
    ]
    samples = await scrape(client)
    assert value(samples, "liquid_abt_webhook_notifications_total", result="accepted") == 1
    assert value(samples, "liquid_abt_webhook_notifications_total", result="duplicate") == 1


async def test_a_new_start_is_a_new_alert_state(client: TestClient, db: asyncpg.Connection) -> None:
    await post(client, notification([alert("ExchangeApiDown", starts_at="2026-11-25T10:00:00Z")]))
    await post(client, notification([alert("ExchangeApiDown", starts_at="2026-11-25T11:00:00Z")]))
    assert len(await notifications(db)) == 2


async def test_truncated_alerts_are_recorded(client: TestClient, db: asyncpg.Connection) -> None:
    payload = {**notification([alert("ExchangeApiDown")]), "truncatedAlerts": 7}
    assert (await post(client, payload))[0] == 200
    row = await db.fetchrow(
        "SELECT * FROM liquid_abt.audit_log WHERE action = 'notification_truncated'"
    )
    assert json.loads(row["detail"]) == {"truncated_alerts": 7}
    assert (await notifications(db))[0]["truncated_alerts"] == 7


async def test_database_down_gets_503_so_alertmanager_retries(aiohttp_client) -> None:
    from exporter.database.embedded import free_port

    nowhere = Connection(f"postgresql://postgres@127.0.0.1:{free_port()}/postgres")
    config = parse_config({"kraken": {"enabled": False}, "database": {"connect_timeout": "1s"}})
    client = await aiohttp_client(create_app(config, nowhere, Secrets(webhook_token=TOKEN)))
    status, reply = await post(client, notification([alert("ExchangeApiDown")]))
    assert status == 503 and reply["status"] == "error"


async def test_undecodable_credentials_get_401_not_500(
    client: TestClient, db: asyncpg.Connection
) -> None:
    response = await client.post(
        "/webhook/alertmanager", data=b"{}",
        headers={"Authorization": "Bearer caf\udcc3".encode("utf-8", "surrogateescape").decode("latin-1")},
    )  # fmt: skip
    assert response.status == 401


async def test_a_value_postgresql_cannot_store_gets_400(
    client: TestClient, db: asyncpg.Connection
) -> None:
    status, reply = await post(
        client, notification([alert("ExchangeApiDown", summary_label="a\x00b")])
    )
    assert status == 400 and reply["status"] == "invalid", reply
    assert await notifications(db) == []
