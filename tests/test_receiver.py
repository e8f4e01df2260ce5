"""The Alertmanager webhook: credentials, validation, size limit, de-duplication, database outage."""

from __future__ import annotations

import base64
import gzip
import json
import random
import socket
import string
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from exporter.config import parse_config
from exporter.database.pool import Connection
from exporter.runbook.receiver import Alert, AllRefused, Notification, Parsed, record
from exporter.secrets import Secrets
from exporter.web.app import create_app
from tests.alertmanager_payloads import alert, notification
from tests.harness import exporter_config, start_exporter
from tests.harness import wait_until as harness_wait_until
from tests.helpers import scrape, value, wait_until

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
        ([1, 2], "body is not a JSON object"),
        (b"[" * 100_000 + b"]" * 100_000, "body is not valid JSON: recursion limit exceeded"),
        ({**notification([alert("X")]), "truncatedAlerts": 10**40}, "truncatedAlerts: Input should be less than"),
        (b'{"version": "4", "truncatedAlerts": ' + b"9" * 5000 + b"}", "body is not valid JSON: number out of range"),
        ({**notification([alert("X")]), "groupKey": "g\x00"}, "groupKey: contains a NUL character"),
        (notification([{**alert("X"), "startsAt": "2026-11-25T10:00:00"}]), "alerts.0.startsAt: Input should have timezone info"),
        (notification([{**alert("X"), "startsAt": "0001-01-01T00:00:00+14:00"}]), "alerts.0.startsAt: is out of the range of dates"),
        (notification([{**alert("X"), "endsAt": "9999-12-31T23:59:59-14:00"}]), "alerts.0.endsAt: is out of the range of dates"),
        (notification([{**alert("X"), "fingerprint": "f\x00"}]), "alerts.0.fingerprint: contains a NUL character"),
        (notification([{**alert("X"), "fingerprint": "f" * 129}]), "alerts.0.fingerprint: String should have at most 128 characters"),
        (notification([alert("X", instance=7)]), "alerts.0.labels.instance: Input should be a valid string"),
        (notification([alert("X", instance="i" * 4097)]), "alerts.0.labels: label instance is longer than 4096 characters"),
        (notification([alert("X" * 201)]), "alerts.0.labels: alertname is longer than 200 characters"),
        (notification([alert("X", **{"a\x00": "b"})]), "alerts.0.labels: label name contains a NUL character"),
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


async def test_an_invalid_notification_gets_400_even_while_the_database_is_down(
    aiohttp_client,
) -> None:
    """A retry cannot fix it: Alertmanager must not be told to retry (503) first."""
    from exporter.database.embedded import free_port

    nowhere = Connection(f"postgresql://postgres@127.0.0.1:{free_port()}/postgres")
    config = parse_config({"kraken": {"enabled": False}, "database": {"connect_timeout": "1s"}})
    client = await aiohttp_client(create_app(config, nowhere, Secrets(webhook_token=TOKEN)))
    status, reply = await post(client, notification([alert("X", fingerprint="f" * 3000)]))
    assert status == 400 and reply["status"] == "invalid", reply


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


async def test_a_deeply_nested_label_value_refuses_that_alert_only(
    client: TestClient, db: asyncpg.Connection
) -> None:
    nested: object = "x"
    for _ in range(150):  # under the parser's nesting limit: the alert model refuses it
        nested = [nested]
    status, reply = await post(client, notification([alert("X", instance=nested), alert("Y")]))
    assert status == 200 and reply["status"] == "partial", reply
    assert [r["index"] for r in reply["refused"]] == [0]
    assert [r["alertname"] for r in await notifications(db)] == ["Y"]


# A valid gzip header followed by a deflate block of an invalid type.
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03"


def gzip_post(client: TestClient, data: bytes, encoding: str = "gzip"):
    return client.post(
        "/webhook/alertmanager", data=data, headers={**AUTH, "Content-Encoding": encoding}
    )


async def test_a_gzip_body_is_decompressed(client: TestClient, db: asyncpg.Connection) -> None:
    body = gzip.compress(json.dumps(notification([alert("ExchangeApiDown")])).encode())
    response = await gzip_post(client, body)
    assert response.status == 200, await response.text()
    assert len(await notifications(db)) == 1


@pytest.mark.parametrize(
    ("encoding", "data"),
    [("gzip", b"not gzip at all"), ("gzip", GZIP_HEADER + bytes(range(7, 40))),
     ("deflate", b"\x78\x9cnot deflate")],
)  # fmt: skip
async def test_a_corrupt_compressed_body_gets_400(
    client: TestClient, db: asyncpg.Connection, encoding: str, data: bytes
) -> None:
    response = await gzip_post(client, data, encoding)
    assert response.status == 400, await response.text()
    reply = await response.json()
    assert reply["status"] == "invalid"
    assert f"body cannot be read as Content-Encoding {encoding} says" in reply["message"]
    assert await notifications(db) == []


async def test_a_gzip_bomb_stops_at_the_body_limit(
    client: TestClient, db: asyncpg.Connection
) -> None:
    bomb = gzip.compress(b"[" + b" " * 50_000_000 + b"]")  # 50 MB from about 50 kB
    response = await gzip_post(client, bomb)
    assert response.status == 413
    assert await notifications(db) == []


async def test_one_invalid_alert_is_refused_and_the_others_recorded(
    client: TestClient, db: asyncpg.Connection
) -> None:
    down = alert("ExchangeApiDown", fingerprint="aaa")
    huge = alert("ExchangeApiSlow", fingerprint="f" * 3000)
    status, reply = await post(client, notification([down, huge]))
    assert status == 200 and reply["status"] == "partial", reply
    assert reply["new"] == 1
    assert reply["refused"] == [{
        "index": 1, "fingerprint": "f" * 37 + "...",
        "reason": "alerts.1.fingerprint: String should have at most 128 characters",
    }]  # fmt: skip
    assert [r["fingerprint"] for r in await notifications(db)] == ["aaa"]
    audit = await db.fetchrow("SELECT * FROM liquid_abt.audit_log WHERE action = 'alert_refused'")
    assert audit["result"] == "refused" and "fingerprint" in json.loads(audit["detail"])["reason"]
    samples = await scrape(client)
    assert value(samples, "liquid_abt_webhook_notifications_total", result="partial") == 1
    assert value(samples, "liquid_abt_webhook_refused_alerts_total") == 1
    # Alertmanager sends the same group again: nothing new, the refusal is reported again.
    status, reply = await post(client, notification([down, huge]))
    assert status == 200 and reply["new"] == 0 and len(reply["refused"]) == 1


async def test_a_notification_whose_every_alert_is_refused_gets_400_and_changes_nothing(
    client: TestClient, db: asyncpg.Connection
) -> None:
    bad = [alert("A", fingerprint="f" * 3000), {**alert("B"), "status": "pending"}]
    status, reply = await post(client, notification(bad))
    assert status == 400 and reply["status"] == "invalid", reply
    assert "alerts.0.fingerprint" in reply["message"] and "alerts.1.status" in reply["message"]
    assert [r["index"] for r in reply["refused"]] == [0, 1]
    assert await notifications(db) == []
    assert await db.fetchval("SELECT count(*) FROM liquid_abt.audit_log") == 0


async def test_postgresql_refusing_one_alert_spares_the_others(
    database: Connection, db: asyncpg.Connection
) -> None:
    """Past validation, a permanent refusal by PostgreSQL (here an index entry over 2,704 bytes)
    refuses that alert only; it is not taken for an outage (503, retried forever)."""
    good = Alert.model_validate(alert("ExchangeApiDown", fingerprint="aaa"))
    # Built without validation, as if a limit had been missed.
    # Random characters: PostgreSQL compresses a repetitive key below its limit.
    fingerprint = "".join(random.Random(1).choices(string.ascii_letters, k=3000))
    huge = good.model_copy(update={"fingerprint": fingerprint})
    parsed = Parsed(Notification.model_validate(notification([])), [(0, good), (1, huge)], [])
    pool = await asyncpg.create_pool(database.dsn, min_size=1, max_size=1)
    try:
        recorded = await record(pool, parsed)
        assert recorded.new == 1
        assert [r.index for r in recorded.refused] == [1]
        assert "PostgreSQL refused it: index row" in recorded.refused[0].reason
        with pytest.raises(AllRefused):
            await record(pool, Parsed(parsed.notification, [(0, huge)], []))
    finally:
        await pool.close()
    assert [r["fingerprint"] for r in await notifications(db)] == ["aaa"]
    assert await db.fetchval(
        "SELECT count(*) FROM liquid_abt.audit_log WHERE action = 'alert_refused'"
    ) == 1  # fmt: skip


@pytest.mark.parametrize(
    ("annotations", "labels", "summary"),
    [({"summary": "Kraken API is down"}, {}, "Kraken API is down"),
     ({}, {"summary": "from the labels"}, "from the labels"),
     ({"summary": "s" * 5000}, {}, "s" * 999 + "…"),
     ({"summary": "nul\x00inside"}, {}, "nul\ufffdinside"),
     ({"description": "no summary"}, {}, None)],
)  # fmt: skip
async def test_the_summary_comes_from_the_annotations(
    client: TestClient, db: asyncpg.Connection, annotations: dict, labels: dict, summary: str
) -> None:
    payload = alert("ExchangeApiDown", **labels)
    payload["annotations"] = annotations
    assert (await post(client, notification([payload])))[0] == 200
    assert (await notifications(db))[0]["summary"] == summary


async def test_the_alerts_summary_is_the_cause_of_the_pause(
    aiohttp_client, database: Connection, db: asyncpg.Connection
) -> None:
    config = parse_config({"kraken": {"enabled": False}})  # the runbook's default actions
    client = await aiohttp_client(create_app(config, database, Secrets(webhook_token=TOKEN)))
    down = alert(
        "ExchangeApiDown", annotations={"summary": "Kraken API unreachable from 3 replicas"}
    )
    assert (await post(client, notification([down])))[0] == 200

    async def paused() -> bool:
        return bool(await db.fetchval(
            "SELECT purchases_paused FROM liquid_abt.exchange_controls WHERE exchange = 'kraken'"
        ))  # fmt: skip

    await wait_until(paused)
    cause = await db.fetchval(
        "SELECT cause FROM liquid_abt.audit_log WHERE action = 'pause_purchases' AND exchange = 'kraken'"
    )
    assert "ExchangeApiDown firing (Kraken API unreachable from 3 replicas)" in cause


# Requests aiohttp cannot parse, each carrying the webhook token somewhere in its raw bytes.
MALFORMED = [
    b"POST /webhook/alertmanager HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\x00x\r\n"
    b"Content-Length: 2\r\n\r\n{}",
    b"POST /webhook/alertmanager HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
    b"X-Trace: a\x00b\r\nContent-Length: 2\r\n\r\n{}",
    b"GET /metrics?token=%s\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /webhook/alertmanager HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s"
    + b"A" * 10_000
    + b"\r\n\r\n",
    b"POST /webhook/alertmanager HTTP/1.1\r\nHost: x\r\nBearer %s no colon\r\n\r\n",
    b"POST /webhook/alertmanager HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
    b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
]


def send_raw(address: str, request: bytes) -> bytes:
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)  # aiohttp closes the connection after its 400
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_malformed_requests_log_one_line_without_header_values(
    tmp_path: Path, database: Connection
) -> None:
    with start_exporter(
        tmp_path, database_url=database.dsn, migrate=True, config_yaml=exporter_config(),
        env={"LIQUID_ABT_WEBHOOK_TOKEN": TOKEN, "LIQUID_ABT_ADMIN_TOKEN": "admin-secret"},
    ) as exporter:  # fmt: skip
        for request in MALFORMED:
            answer = send_raw(exporter.target, request.replace(b"%s", TOKEN.encode()))
            assert answer.split(b" ", 2)[1] == b"400", answer[:200]

        def server_lines() -> list[dict]:
            text = exporter.log_text(tail=10**7)
            records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
            return [r for r in records if r["logger"] == "aiohttp.server"]

        harness_wait_until(lambda: len(server_lines()) >= len(MALFORMED), timeout=20)
        assert exporter.get("/metrics")[0] == 200
        log_text = exporter.log_text(tail=10**7)
    assert TOKEN not in log_text
    assert "Traceback" not in log_text
    # One line per request, naming the peer and the kind of error, quoting nothing it sent.
    assert [(r["msg"], r["level"], r["remote"]) for r in server_lines()] == [
        ("malformed HTTP request refused with 400", "warn", "127.0.0.1")
    ] * len(MALFORMED)
    assert all(r["error"] for r in server_lines())


@pytest.mark.parametrize(("field", "number"), [("startsAt", 0), ("startsAt", -1),
                                               ("startsAt", 1.5), ("endsAt", 1e12)])  # fmt: skip
async def test_a_numeric_time_is_refused_naming_the_field(
    client: TestClient, db: asyncpg.Connection, field: str, number: float
) -> None:
    """Alertmanager sends RFC 3339 strings; a number is not read as a Unix time (rows of 1938)."""
    body = notification([{**alert("X"), field: number}])
    status, reply = await post(client, body)
    assert status == 400, reply
    assert f"alerts.0.{field}: must be an RFC 3339 time string" in reply["message"], reply
    assert await notifications(db) == []


async def test_a_database_outage_logs_once_not_once_per_503(
    aiohttp_client, caplog: pytest.LogCaptureFixture
) -> None:
    from exporter.database.embedded import free_port

    nowhere = Connection(f"postgresql://postgres@127.0.0.1:{free_port()}/postgres")
    config = parse_config({"kraken": {"enabled": False}, "database": {"connect_timeout": "1s"}})
    client = await aiohttp_client(create_app(config, nowhere, Secrets(webhook_token=TOKEN)))
    with caplog.at_level("INFO", logger="exporter.runbook.receiver"):
        for index in range(5):
            status, _ = await post(client, notification([alert(f"Down{index}")]))
            assert status == 503
    lines = [r for r in caplog.records if r.name == "exporter.runbook.receiver"]
    assert [r.getMessage() for r in lines] == [
        "webhook: cannot record, asking Alertmanager to retry until the database is back"
    ]
