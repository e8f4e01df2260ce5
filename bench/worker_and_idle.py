"""Benchmark: how fast the action worker drains recorded alert states, and how quiet an idle
replica keeps the database (issue 12, targets 4 and 5).

1. Worker: N alert states already recorded (a storm: two exchanges, alerts with and without
   actions, firing and resolved), drained by one worker with the shipped settings; states a
   second, and whether per-exchange order held.
2. Idle: one exporter process with the shipped timers, probing a healthy Kraken-compatible server,
   nobody scraping, no incident: database transactions a second (pg_stat_database), measured
   over `--idle-seconds`.

Usage: `python bench/worker_and_idle.py [--states 20000] [--idle-seconds 120]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import asyncpg
from prometheus_client import CollectorRegistry

from exporter.config import parse_config
from exporter.controls.breaker import BreakerStore
from exporter.database.embedded import EmbeddedPostgres
from exporter.database.migrate import migrate
from exporter.database.pool import Connection, create_pool
from exporter.runbook.incident import IncidentModel
from exporter.runbook.metrics import ActionMetrics, IncidentMetrics
from exporter.runbook.worker import ActionWorker
from liquid_abt_drill.stack import Stack

CONFIG = parse_config({"exchanges": ["kraken", "independent_reserve"]})
ALERTS = [  # (alertname, has actions)
    ("LiquidAbtCollectorStale", False),
    ("ExchangeApiSlow", False),
    ("ExchangeApiRateLimited", True),
    ("BitcoinPurchaseFailureRateWarning", False),
]


async def record_storm(conn: asyncpg.Connection, states: int) -> None:
    rows = []
    for i in range(states):
        name, _ = ALERTS[i % len(ALERTS)]
        exchange = CONFIG.exchanges[i % 2]
        labels = json.dumps({"alertname": name, "exchange": exchange, "summary": "bench"})
        status = "firing" if i % 3 else "resolved"
        rows.append((f"fp-{i}", status, name, exchange, labels))
    await conn.executemany(
        """INSERT INTO liquid_abt.notifications (fingerprint, status, starts_at, alertname,
                                                 exchange, labels)
           VALUES ($1, $2, now(), $3, $4, $5::jsonb)""",
        rows,
    )


async def worker_rate(dsn: str, states: int) -> tuple[float, bool]:
    conn = await asyncpg.connect(dsn)
    await record_storm(conn, states)
    pool = await create_pool(Connection(dsn), CONFIG.database)
    registry = CollectorRegistry()
    actions = ActionMetrics(registry)
    model = IncidentModel(
        pool, CONFIG, BreakerStore(pool, CONFIG, registry), actions,
        IncidentMetrics(registry, list(CONFIG.exchanges)),
    )  # fmt: skip
    worker = ActionWorker(pool, CONFIG, model, actions)
    started = time.perf_counter()
    while (await worker.process_batch())[0]:
        pass
    elapsed = time.perf_counter() - started
    # Per exchange, states were processed in arrival order: processed_at never goes backwards.
    inversions = await conn.fetchval(
        """SELECT count(*) FROM (
               SELECT processed_at < lag(processed_at) OVER (PARTITION BY exchange ORDER BY id)
                      AS backwards
               FROM liquid_abt.notifications) t WHERE backwards"""
    )
    left = await conn.fetchval(
        "SELECT count(*) FROM liquid_abt.notifications WHERE processed_at IS NULL"
    )
    await pool.close()
    await conn.close()
    assert left == 0, f"{left} states left unprocessed"
    return states / elapsed, inversions == 0


async def idle_transactions(dsn: str, folder: Path, seconds: float) -> float:
    async def commits() -> int:
        conn = await asyncpg.connect(dsn)
        try:
            return int(await conn.fetchval(
                "SELECT xact_commit + xact_rollback FROM pg_stat_database "
                "WHERE datname = current_database()"
            ))  # fmt: skip
        finally:
            await conn.close()

    with Stack(folder) as stack:
        kraken = await asyncio.to_thread(stack.kraken_server)
        config = f"kraken:\n  base_url: {kraken.url}\n"
        await asyncio.to_thread(stack.exporter, database_url=dsn, config_yaml=config)
        await asyncio.sleep(10)  # past start-up: migrations, first refreshes, first probe round
        before = await commits()
        await asyncio.sleep(seconds)
        after = await commits()
    # Less this script's own two statistics reads.
    return (after - before - 2) / seconds


async def main(states: int, idle_seconds: float, folder: Path) -> None:
    server = EmbeddedPostgres(folder / "pg")
    server.start()
    try:
        for name in ("worker", "idle"):
            admin = await asyncpg.connect(server.dsn)
            await admin.execute(f"CREATE DATABASE {name}")
            await admin.close()
            conn = await asyncpg.connect(server.dsn.rsplit("/", 1)[0] + f"/{name}")
            await migrate(conn, with_platform_schema=True)
            await conn.close()
        rate, ordered = await worker_rate(server.dsn.rsplit("/", 1)[0] + "/worker", states)
        print(f"worker: {states} alert states drained at {rate:,.0f} states/s "
              f"(target >= 1,000); per-exchange order kept: {ordered}")  # fmt: skip
        idle = await idle_transactions(
            server.dsn.rsplit("/", 1)[0] + "/idle", folder / "stack", idle_seconds
        )
        print(f"idle replica: {idle:.2f} database transactions/s over {idle_seconds:g}s "
              f"(target <= 1)")  # fmt: skip
    finally:
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--states", type=int, default=20000)
    parser.add_argument("--idle-seconds", type=float, default=120.0)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="liquid-abt-bench-"))
    folder.chmod(0o755)  # the embedded server's own user must reach it
    asyncio.run(main(args.states, args.idle_seconds, folder))
