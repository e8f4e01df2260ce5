"""A resolved notification that never arrives: the exporter asks a real Alertmanager which alerts
are still active, and resumes once the alert that paused purchases is gone and recovery passes."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
import yaml
from aiohttp.test_utils import TestClient

from exporter.config import parse_config
from exporter.database.pool import Connection
from exporter.secrets import Secrets
from exporter.web.app import create_app
from liquid_abt_drill.kraken_server.server import FakeKraken
from tests.harness import AlertmanagerProcess, start_alertmanager
from tests.helpers import wait_until

TOKEN = "reconcile-token"


@pytest.fixture
def exporter_port() -> int:
    from exporter.database.embedded import free_port

    return free_port()


@pytest.fixture
def alertmanager(tmp_path: Path, exporter_port: int) -> Iterator[AlertmanagerProcess]:
    """Started first, pointed at the port the exporter will listen on."""
    token = tmp_path / "token"
    token.write_text(TOKEN)
    config = {
        "route": {"receiver": "exporter", "group_by": ["alertname", "exchange"],
                  "group_wait": "1s", "group_interval": "1s", "repeat_interval": "1h"},
        "receivers": [{"name": "exporter", "webhook_configs": [{
            "url": f"http://127.0.0.1:{exporter_port}/webhook/alertmanager",
            # The resolved notification is "lost": Alertmanager never sends it.
            "send_resolved": False,
            "http_config": {"authorization": {"type": "Bearer", "credentials_file": str(token)}},
        }]}],
    }  # fmt: skip
    with start_alertmanager(tmp_path, yaml.safe_dump(config)) as am:
        yield am


@pytest.fixture
async def client(
    aiohttp_client, database: Connection, kraken: FakeKraken, alertmanager: AlertmanagerProcess,
    exporter_port: int,
) -> TestClient:  # fmt: skip
    config = parse_config({
        "collectors": {"interval": "1h", "timeout": "10s"},
        "kraken": {"enabled": False, "base_url": kraken.url, "timeout": "2s",
                   "incident_interval": "100ms"},
        "breaker": {"recovery_timeout": "100ms"},
        "incident": {"probation": "200ms"},
        "receiver": {"reconcile_interval": "500ms",
                     "alertmanager_url": alertmanager.url},
    })  # fmt: skip
    app = create_app(config, database, Secrets(webhook_token=TOKEN))
    return await aiohttp_client(app, server_kwargs={"port": exporter_port})


def exchange_down(ends_in: timedelta) -> dict:
    now = datetime.now(UTC)
    return {
        "labels": {"alertname": "ExchangeApiDown", "exchange": "kraken", "severity": "critical"},
        "annotations": {"summary": "Kraken API down"},
        "startsAt": (now - timedelta(minutes=1)).isoformat(),
        "endsAt": (now + ends_in).isoformat(),
    }


async def paused(db: asyncpg.Connection) -> bool:
    return bool(await db.fetchval(
        "SELECT purchases_paused FROM liquid_abt.exchange_controls WHERE exchange = 'kraken'"
    ))  # fmt: skip


async def test_a_lost_resolved_notification_is_reconciled(
    client: TestClient, alertmanager: AlertmanagerProcess, db: asyncpg.Connection
) -> None:
    firing = exchange_down(timedelta(minutes=10))
    alertmanager.post_alerts([firing])

    async def is_paused() -> bool:
        return await paused(db)

    await wait_until(is_paused, timeout=60)
    # The alert ends in Alertmanager; with send_resolved off, the exporter is never told.
    alertmanager.post_alerts([{**firing, "endsAt": datetime.now(UTC).isoformat()}])

    async def resumed() -> bool:
        return not await paused(db)

    await wait_until(resumed, timeout=60)
    reconciled = await db.fetch("SELECT * FROM liquid_abt.audit_log WHERE action = 'reconcile'")
    assert len(reconciled) == 1 and "no longer active in Alertmanager" in reconciled[0]["cause"]
    synthetic = await db.fetchval(
        "SELECT count(*) FROM liquid_abt.notifications WHERE group_key = 'reconciliation'"
    )
    assert synthetic == 1
