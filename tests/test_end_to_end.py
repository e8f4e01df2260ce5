"""End to end with the real programs: PostgreSQL, two exporter replicas, the Kraken-compatible
server, a real Prometheus loading the shipped rules, and two clustered Alertmanagers routing to
the webhook with bearer auth.

Kraken goes down: the breaker opens and purchases pause, as read from PostgreSQL. Kraken comes
back: the breaker closes and purchases resume. Both Alertmanagers and both exporters see every
notification; no action happens twice. Only `for` durations and intervals are shortened.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from exporter.database.embedded import free_port
from exporter.database.pool import Connection
from exporter.runbook import retry_filler
from tests.harness import (
    AlertmanagerProcess,
    ExporterProcess,
    KrakenServerProcess,
    PrometheusProcess,
    exporter_config,
    shortened_rules,
    start_alertmanager,
    start_exporter,
    start_kraken_server,
    start_prometheus,
    webhook_alertmanager_config,
)
from tests.helpers import wait_until

TOKEN = "e2e-webhook-token"
DEADLINE = 120.0  # a bound on each phase on a loaded 2-core machine; typically 10-30 s


@pytest.fixture
def kraken(tmp_path: Path) -> Iterator[KrakenServerProcess]:
    with start_kraken_server(tmp_path) as server:
        yield server


@pytest.fixture
def exporters(
    tmp_path: Path, database: Connection, kraken: KrakenServerProcess
) -> Iterator[list[ExporterProcess]]:
    config = exporter_config(
        kraken.url,
        breaker={"failure_threshold": 2, "recovery_timeout": "3s"},
        incident={"probation": "2s"},
    )
    env = {"LIQUID_ABT_WEBHOOK_TOKEN": TOKEN}
    started: list[ExporterProcess] = []
    try:
        for i in range(2):
            started.append(start_exporter(
                tmp_path / f"exporter-{i}", database_url=database.dsn, config_yaml=config, env=env,
            ))  # fmt: skip
        yield started
    finally:
        for process in started:
            process.stop()


@pytest.fixture
def alertmanagers(
    tmp_path: Path, exporters: list[ExporterProcess]
) -> Iterator[list[AlertmanagerProcess]]:
    token = tmp_path / "webhook-token"
    token.write_text(TOKEN)
    config = webhook_alertmanager_config([e.url for e in exporters], token)
    first_cluster = f"127.0.0.1:{free_port()}"
    second_cluster = f"127.0.0.1:{free_port()}"
    with (
        start_alertmanager(tmp_path / "am-0", config, cluster_listen=first_cluster) as first,
        start_alertmanager(
            tmp_path / "am-1", config, peers=[first_cluster], cluster_listen=second_cluster
        ) as second,
    ):
        yield [first, second]


@pytest.fixture
def prometheus(
    tmp_path: Path, exporters: list[ExporterProcess], alertmanagers: list[AlertmanagerProcess]
) -> Iterator[PrometheusProcess]:
    # The shipped rules with every `for` cut to 2s: the expressions stay exactly as shipped.
    with start_prometheus(
        tmp_path, [e.target for e in exporters], shortened_rules(tmp_path / "rules", "2s"),
        [am.url for am in alertmanagers],
    ) as server:  # fmt: skip
        yield server


async def controls(db: asyncpg.Connection) -> dict[str, Any]:
    row = await db.fetchrow(
        """SELECT coalesce(b.state, 'closed') AS state, coalesce(c.purchases_paused, false) AS paused
           FROM (SELECT 'kraken' AS exchange) x
           LEFT JOIN liquid_abt.circuit_breakers b USING (exchange)
           LEFT JOIN liquid_abt.exchange_controls c USING (exchange)"""
    )
    return dict(row)


async def audit_count(db: asyncpg.Connection, action: str, result: str = "success") -> int:
    return int(await db.fetchval(
        "SELECT count(*) FROM liquid_abt.audit_log WHERE action = $1 AND result = $2", action, result
    ))  # fmt: skip


async def test_kraken_outage_pauses_purchases_and_recovery_resumes_them(
    db: asyncpg.Connection,
    kraken: KrakenServerProcess,
    exporters: list[ExporterProcess],
    alertmanagers: list[AlertmanagerProcess],
    prometheus: PrometheusProcess,
) -> None:
    await db.execute(
        """INSERT INTO bitcoin_purchases (tenant_id, amount_aud, status, failure_reason, created_at)
           SELECT 'tenant-' || i, 100 + i, 'failed', 'EService:Unavailable', now() - interval '5 minutes'
           FROM generate_series(1, 5) AS i"""
    )
    prometheus.wait_for('liquid_abt_exchange_up{exchange="kraken"} == 1', timeout=DEADLINE)
    assert await controls(db) == {"state": "closed", "paused": False}

    kraken.set_mode("down")

    async def outage_handled() -> bool:
        return await controls(db) == {"state": "open", "paused": True}

    await wait_until(outage_handled, timeout=DEADLINE, interval=0.5)
    assert await db.fetchval("SELECT count(*) FROM liquid_abt.retry_queue") == 5

    async def alert_recorded() -> bool:
        # The exporters stopped purchases on their own evidence; the page follows from the same.
        return bool(await db.fetchval(
            """SELECT count(*) FROM liquid_abt.notifications
               WHERE alertname = 'ExchangeApiDown' AND status = 'firing'"""
        ))  # fmt: skip

    await wait_until(alert_recorded, timeout=DEADLINE, interval=0.5)

    kraken.set_mode("healthy")

    async def recovered() -> bool:
        return await controls(db) == {"state": "closed", "paused": False}

    await wait_until(recovered, timeout=DEADLINE, interval=0.5)
    assert await audit_count(db, "verify_recovery") >= 1
    due = await db.fetchval(
        "SELECT count(*) FROM liquid_abt.retry_queue WHERE next_attempt_at <= now()"
    )
    assert due == 5, "the queued purchases are due again once Kraken recovered"

    # Two Alertmanagers, two exporters, repeats: each alert state recorded once, acted on once.
    duplicates = await db.fetchval(
        """SELECT count(*) FROM (SELECT fingerprint, status, starts_at FROM liquid_abt.notifications
           GROUP BY 1, 2, 3 HAVING count(*) > 1) d"""
    )
    assert duplicates == 0
    episodes = await db.fetchval(
        "SELECT count(*) FROM liquid_abt.notifications WHERE alertname = 'ExchangeApiDown' AND status = 'firing'"
    )
    assert await audit_count(db, "pause_purchases") == 1
    # The incident's own queueing, once per episode (the retry filler queues the rest).
    incident_queueing = await db.fetchval(
        """SELECT count(*) FROM liquid_abt.audit_log
           WHERE action = 'queue_failed_purchases_for_retry' AND cause IS DISTINCT FROM $1""",
        retry_filler.CAUSE,
    )
    assert incident_queueing <= episodes
    assert await audit_count(db, "resume_purchases") <= 1
