"""The optional customer-notice webhook against a real HTTP receiver and PostgreSQL: signed
bodies, retries with backoff on errors, the dead letter after the last attempt."""

from __future__ import annotations

import json
from datetime import datetime

import aiohttp
import asyncpg
import pytest
from aiohttp import web

from exporter.config import parse_config
from exporter.controls import notices as outbox
from exporter.controls.notices import Notice
from exporter.database.embedded import free_port
from exporter.database.pool import Connection, close_pool, create_pool
from exporter.runbook.notices.webhook import (
    SIGNATURE_HEADER,
    WebhookSender,
    sign,
    verify,
)

SECRET = "webhook-signing-secret"


class Receiver:
    """The notifier's endpoint: records each request, answers the next status in `answers`."""

    def __init__(self) -> None:
        self.requests: list[tuple[bytes, dict[str, str]]] = []
        self.answers: list[int] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((await request.read(), dict(request.headers)))
        status = self.answers.pop(0) if self.answers else 200
        return web.Response(status=status, text="busy" if status >= 300 else "ok")


@pytest.fixture
async def receiver(aiohttp_server) -> tuple[Receiver, str]:
    found = Receiver()
    app = web.Application()
    app.router.add_post("/notices", found.handle)
    server = await aiohttp_server(app)
    return found, str(server.make_url("/notices"))


def notices_config(url: str, **more: object):
    return parse_config({"notices": {"webhook_url": url, "max_attempts": 2, **more}}).notices


async def queue_one(db: asyncpg.Connection) -> int:
    incident = await db.fetchval(
        """INSERT INTO liquid_abt.incident_periods (exchange, cause, started_at)
           VALUES ('kraken', 'unavailable', now()) RETURNING id"""
    )
    long_ago = datetime.fromisoformat("2000-01-01T00:00:00+00:00")
    notice = Notice(incident, "kraken", "incident_started", 0, None, ("email",), "hello", {},
                    long_ago)  # fmt: skip
    [(notice_id, _)] = await outbox.insert(db, [notice])
    return notice_id


@pytest.fixture
async def pool(database: Connection):
    pool = await create_pool(database, parse_config({}).database)
    yield pool
    await close_pool(pool, 5)


async def test_a_notice_is_posted_once_signed_and_marked_sent(receiver, pool, db) -> None:
    found, url = receiver
    notice_id = await queue_one(db)
    sender = WebhookSender(pool, notices_config(url), SECRET, "replica-a")
    async with aiohttp.ClientSession() as session:
        assert await sender.deliver(session) == 1
        assert await sender.deliver(session) == 0
    [(body, headers)] = found.requests
    assert verify(SECRET, body, headers[SIGNATURE_HEADER])
    assert not verify("another-secret", body, headers[SIGNATURE_HEADER])
    assert headers["Idempotency-Key"] == str(notice_id)
    payload = json.loads(body)
    assert (payload["id"], payload["kind"], payload["message"]) == (notice_id, "incident_started",
                                                                    "hello")  # fmt: skip
    assert "claimedBy" not in payload and payload["sentAt"]
    state = await db.fetchval("SELECT state FROM liquid_abt.customer_notices")
    assert state == "sent"


def test_the_signature_is_hmac_sha256_of_the_body() -> None:
    # printf '%s' '{"id":1}' | openssl dgst -sha256 -hmac webhook-signing-secret
    assert (
        sign(SECRET, b'{"id":1}')
        == "sha256=8648df541518305575da8bfcdc55cedf933449d6250573d47984d9645110d2e8"
    )


async def test_an_error_is_retried_after_a_backoff_then_dead_lettered(receiver, pool, db) -> None:
    found, url = receiver
    found.answers = [503, 500]
    await queue_one(db)
    sender = WebhookSender(pool, notices_config(url), SECRET, "replica-a")
    async with aiohttp.ClientSession() as session:
        assert await sender.deliver(session) == 1
        row = await db.fetchrow(
            """SELECT state, last_error, ready_at > now() AS later
               FROM liquid_abt.customer_notices"""
        )
        assert (row["state"], row["last_error"], row["later"]) == ("queued", "HTTP 503: busy", True)
        assert await sender.deliver(session) == 0  # not before its backoff
        await db.execute("UPDATE liquid_abt.customer_notices SET ready_at = now()")
        assert await sender.deliver(session) == 1
    row = await db.fetchrow("SELECT state, attempts, last_error FROM liquid_abt.customer_notices")
    assert tuple(row) == ("failed", 2, "HTTP 500: busy")  # the dead letter
    assert len(found.requests) == 2


async def test_no_answer_is_a_network_error_and_retried(pool, db) -> None:
    await queue_one(db)
    url = f"http://127.0.0.1:{free_port()}/notices"  # nobody listens
    sender = WebhookSender(pool, notices_config(url), SECRET, "replica-a")
    async with aiohttp.ClientSession() as session:
        assert await sender.deliver(session) == 1
    row = await db.fetchrow("SELECT state, last_error FROM liquid_abt.customer_notices")
    assert row["state"] == "queued" and row["last_error"].startswith("ClientConnectorError")
