"""Benchmark: how fast the webhook answers Alertmanager, and how fast the actions follow.

The receiver records alert states and answers; the actions run afterwards. This measures the
answer time of new and of repeated notifications, and the time until every recorded state was
processed, against an embedded PostgreSQL. Usage: `python bench/webhook_latency.py [--count 500]`.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
import asyncpg
from aiohttp import web

from exporter.config import parse_config
from exporter.database.embedded import EmbeddedPostgres, free_port
from exporter.database.migrate import migrate
from exporter.database.pool import Connection
from exporter.secrets import Secrets
from exporter.web.app import create_app

TOKEN = "bench"


def notification(index: int, alerts_per_notification: int) -> dict:
    # Alert names without actions: this measures the receiver and the worker's bookkeeping.
    alerts = [
        {
            "status": "firing",
            "labels": {"alertname": "LiquidAbtCollectorStale", "collector": f"c{index}-{i}"},
            "annotations": {"summary": "bench"},
            "startsAt": "2026-11-25T10:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "fingerprint": f"bench-{index}-{i}",
        }
        for i in range(alerts_per_notification)
    ]
    return {"version": "4", "groupKey": f"g{index}", "truncatedAlerts": 0, "status": "firing",
            "receiver": "exporter", "alerts": alerts}  # fmt: skip


def summary(name: str, values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[max(0, int(len(ordered) * 0.95) - 1)]
    p99 = ordered[max(0, int(len(ordered) * 0.99) - 1)]
    return (f"{name:<22} median {statistics.median(values) * 1000:6.1f} ms  "
            f"p95 {p95 * 1000:6.1f} ms  p99 {p99 * 1000:6.1f} ms")  # fmt: skip


async def post_all(session: aiohttp.ClientSession, url: str, payloads: list[dict]) -> list[float]:
    durations = []
    for payload in payloads:
        started = time.perf_counter()
        async with session.post(
            url, json=payload, headers={"Authorization": f"Bearer {TOKEN}"}
        ) as r:
            assert r.status == 200, await r.text()
        durations.append(time.perf_counter() - started)
    return durations


async def run(count: int, per_notification: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="liquid-abt-bench-"))
    folder.chmod(0o755)  # noqa: ASYNC240 (set-up, before anything is timed)
    server = EmbeddedPostgres(folder / "pg")
    server.start()
    runner: web.AppRunner | None = None
    try:
        conn = await asyncpg.connect(server.dsn)
        await migrate(conn, with_platform_schema=True)
        config = parse_config({"kraken": {"enabled": False}})
        runner = web.AppRunner(
            create_app(config, Connection(server.dsn), Secrets(webhook_token=TOKEN))
        )
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        url = f"http://127.0.0.1:{port}/webhook/alertmanager"
        payloads = [notification(i, per_notification) for i in range(count)]
        async with aiohttp.ClientSession() as session:
            started = time.perf_counter()
            new = await post_all(session, url, payloads)
            # Polling the database is the measurement here.
            while await conn.fetchval(  # noqa: ASYNC110
                "SELECT count(*) FROM liquid_abt.notifications WHERE processed_at IS NULL"
            ):
                await asyncio.sleep(0.01)
            drained = time.perf_counter() - started
            repeated = await post_all(session, url, payloads)
        print(f"{count} notifications of {per_notification} alerts, one client, sequential")
        print(summary("new (recorded)", new))
        print(summary("repeat (duplicate)", repeated))
        states = count * per_notification
        print(f"all {states} alert states recorded and processed in {drained:.2f} s "
              f"({states / drained:.0f} states/s)")  # fmt: skip
        print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
        await conn.close()
    finally:
        if runner is not None:
            await runner.cleanup()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500, help="notifications to send")
    parser.add_argument("--alerts", type=int, default=5, help="alerts per notification")
    args = parser.parse_args()
    asyncio.run(run(args.count, args.alerts))


if __name__ == "__main__":
    main()
