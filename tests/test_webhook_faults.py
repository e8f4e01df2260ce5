"""The webhook under load while PostgreSQL fails: its connections killed mid-transaction, then the
server restarted. Senders behave like Alertmanager (a 5xx or a broken connection is retried until
answered 2xx; some notifications are sent again after their 200). Afterwards every alert state is
recorded exactly once, the only answers were 200 and 503, and the worker processed every row.
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from exporter.config import parse_config
from exporter.database.migrate import migrate
from exporter.database.pool import Connection
from exporter.secrets import Secrets
from exporter.web.app import create_app
from tests.alertmanager_payloads import alert, notification
from tests.harness import PostgresServer, searchable_tmp_dir
from tests.helpers import wait_until

TOKEN = "fault-secret"
NOTIFICATIONS = 240
SENDERS = 8
PACE = 0.2  # seconds between a sender's notifications: about 40 a second in all
CONFIG = parse_config({
    "kraken": {"enabled": False},
    "receiver": {"actions": {}},  # recording and the worker's bookkeeping only
    "collectors": {"interval": "1h", "timeout": "5s"},
    "database": {"connect_timeout": "1s", "health_interval": "200ms"},
})  # fmt: skip


@pytest.fixture
async def own_server() -> AsyncIterator[PostgresServer]:
    """A server of the test's own, since the test kills its connections and restarts it."""
    folder = searchable_tmp_dir("liquid-abt-webhook-faults-")
    server = PostgresServer(folder)
    await asyncio.to_thread(server.start)
    conn = await asyncpg.connect(server.dsn)
    await migrate(conn)
    await conn.close()
    yield server
    await asyncio.to_thread(server.stop)
    shutil.rmtree(folder, ignore_errors=True)


@dataclass
class Load:
    """Alertmanager-like senders: each notification is retried until answered 200."""

    client: TestClient
    pending: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    statuses: Counter[str] = field(default_factory=Counter)
    accepted: int = 0
    sent_again: int = 0

    async def post(self, payload: dict[str, Any]) -> int:
        try:
            response = await self.client.post(
                "/webhook/alertmanager", json=payload,
                headers={"Authorization": f"Bearer {TOKEN}"},
            )  # fmt: skip
        except aiohttp.ClientError as exc:
            self.statuses[type(exc).__name__] += 1
            return 0
        async with response:
            self.statuses[str(response.status)] += 1
            return response.status

    async def deliver(self, payload: dict[str, Any], deadline: float) -> None:
        delay = 0.02
        while await self.post(payload) != 200:
            assert time.monotonic() < deadline, f"not delivered in time: {self.statuses}"
            await asyncio.sleep(delay)  # Alertmanager backs off between retries
            delay = min(delay * 2, 0.5)

    async def sender(self, deadline: float) -> None:
        while not self.pending.empty():
            payload = self.pending.get_nowait()
            await self.deliver(payload, deadline)
            self.accepted += 1
            if self.accepted % 5 == 0:  # repeat_interval, an HA peer: the same again
                await self.deliver(payload, deadline)
                self.sent_again += 1
            await asyncio.sleep(PACE)


def payloads(count: int) -> list[dict[str, Any]]:
    """Notifications of one to three alerts each, every alert state unique."""
    made = []
    for index in range(count):
        alerts = [
            alert("LiquidAbtCollectorStale", fingerprint=uuid.uuid4().hex, exchange=None,
                  status="resolved" if k == 2 else "firing", collector=f"c{index}-{k}")
            for k in range(index % 3 + 1)
        ]  # fmt: skip
        made.append(notification(alerts))
    return made


async def kill_connections(admin_dsn: str) -> int:
    conn = await asyncpg.connect(admin_dsn)
    try:
        return len(await conn.fetch(
            """SELECT pg_terminate_backend(pid) FROM pg_stat_activity
               WHERE application_name = 'liquid-abt-exporter' AND pid <> pg_backend_pid()"""
        ))  # fmt: skip
    finally:
        await conn.close()


async def faults(load: Load, server: PostgresServer) -> dict[str, int]:
    """Connections killed five times, then the server stopped until the webhook answered 503
    several times, then started again; all while the senders run."""
    done: dict[str, int] = {"killed": 0}
    for round_ in range(5):
        await wait_until(lambda r=round_: _accepted_at_least(load, 15 * (r + 1)), timeout=60)
        done["killed"] += await kill_connections(server.dsn)
    await asyncio.to_thread(server.stop)
    unavailable = load.statuses["503"]
    await wait_until(lambda: _more_503(load, unavailable + 10), timeout=60)
    await asyncio.to_thread(server.start)
    done["503 while stopped"] = load.statuses["503"] - unavailable
    return done


async def _accepted_at_least(load: Load, count: int) -> bool:
    return load.accepted >= count or load.pending.empty()


async def _more_503(load: Load, count: int) -> bool:
    return load.statuses["503"] >= count


async def test_every_notification_is_recorded_exactly_once_across_database_faults(
    aiohttp_client, own_server: PostgresServer
) -> None:
    client = await aiohttp_client(
        create_app(CONFIG, Connection(own_server.dsn), Secrets(webhook_token=TOKEN))
    )
    sent = payloads(NOTIFICATIONS)
    load = Load(client)
    for payload in sent:
        load.pending.put_nowait(payload)
    deadline = time.monotonic() + 120
    senders = [asyncio.create_task(load.sender(deadline)) for _ in range(SENDERS)]
    done = await faults(load, own_server)
    await asyncio.gather(*senders)

    print(f"\nwebhook faults: {done}, answers {dict(load.statuses)}, "
          f"{NOTIFICATIONS} notifications + {load.sent_again} sent again")  # fmt: skip
    assert load.accepted == NOTIFICATIONS
    assert set(load.statuses) <= {"200", "503"}, load.statuses
    assert done["killed"] > 0 and done["503 while stopped"] >= 10

    expected = Counter(
        (a["fingerprint"], a["status"]) for a in itertools.chain(*(p["alerts"] for p in sent))
    )
    conn = await asyncpg.connect(own_server.dsn)
    try:
        rows = await conn.fetch("SELECT fingerprint, status FROM liquid_abt.notifications")
        assert Counter((r["fingerprint"], r["status"]) for r in rows) == expected

        async def all_processed() -> bool:
            return not await conn.fetchval(
                "SELECT count(*) FROM liquid_abt.notifications WHERE processed_at IS NULL"
            )

        await wait_until(all_processed, timeout=30)
    finally:
        await conn.close()
