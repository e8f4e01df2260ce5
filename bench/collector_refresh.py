"""Benchmark: the cost of a collector refresh and of a scrape, as the tables grow.

The claim under test: a refresh costs what the rows inside the longest window cost, not what the
table holds, given the indexes of the README. The script fills an embedded PostgreSQL with a
history of old purchases and API calls plus a fixed recent hour, then times refreshes and scrapes
at each table size. Usage: `python bench/collector_refresh.py [--sizes 0,1000000,4000000]`.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import tempfile
import time
from pathlib import Path

import asyncpg
from prometheus_client import CollectorRegistry, generate_latest

from exporter.config import Config
from exporter.database.embedded import EmbeddedPostgres
from exporter.database.migrate import migrate
from exporter.database.pool import Connection, create_pool
from exporter.signals.classify import ReasonClassifier
from exporter.signals.collectors.api_calls import ApiCallsSource
from exporter.signals.collectors.base import SelfMetrics, SnapshotRunner, snapshot_sections
from exporter.signals.collectors.purchases import PurchasesSource
from exporter.web.exposition import MetricsExposition, RegistrySection

RECENT_PURCHASES = 20_000  # one busy hour
RECENT_CALLS = 50_000

FILL_PURCHASES = """
INSERT INTO bitcoin_purchases (tenant_id, amount_aud, status, failure_reason, created_at)
SELECT 'tenant-' || (i % 5000),
       (random() * 1000)::numeric(18, 2),
       (ARRAY['completed','completed','completed','failed','pending','refunded'])[1 + i % 6],
       (ARRAY[NULL,'EService:Unavailable','EAPI:Rate limit exceeded','insufficient_funds',
              'Request timed out','something else'])[1 + i % 6],
       now() - make_interval(secs => $2::float8 + random() * $3::float8)
FROM generate_series(1, $1) AS i
"""

FILL_CALLS = """
INSERT INTO api_call_logs (provider, endpoint, success, response_time, created_at)
SELECT 'kraken', (ARRAY['getCurrentPrice','getBalance','getOrderBook','placeOrder','x'])[1 + i % 5],
       i % 10 <> 0, (random() * 3000)::int,
       now() - make_interval(secs => $2::float8 + random() * $3::float8)
FROM generate_series(1, $1) AS i
"""

HOUR, DAYS_90 = 3600.0, 90 * 86400.0


async def grow(conn: asyncpg.Connection, old_rows: int) -> None:
    """Add history older than every window: it must not change the refresh cost."""
    if old_rows:
        await conn.execute(FILL_PURCHASES, old_rows, 2 * HOUR, DAYS_90)
        await conn.execute(FILL_CALLS, old_rows, 2 * HOUR, DAYS_90)
        await conn.execute("ANALYZE")


async def time_refreshes(runner: SnapshotRunner, rounds: int) -> list[float]:
    durations = []
    for _ in range(rounds):
        started = time.perf_counter()
        assert await runner.refresh(), f"{runner.name} refresh failed"
        durations.append(time.perf_counter() - started)
    return durations


def time_scrapes(exposition: MetricsExposition, rounds: int) -> tuple[list[float], int]:
    """A full render each round (what a scrape cost before bodies were kept between changes)."""
    durations, size = [], 0
    for _ in range(rounds):
        started = time.perf_counter()
        size = len(generate_latest(exposition))
        durations.append(time.perf_counter() - started)
    return durations, size


def ms(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[max(0, int(len(ordered) * 0.95) - 1)]
    return f"median {statistics.median(values) * 1000:7.1f} ms  p95 {p95 * 1000:7.1f} ms"


async def run(sizes: list[int], rounds: int) -> None:
    folder = Path(tempfile.mkdtemp(prefix="liquid-abt-bench-"))
    folder.chmod(0o755)  # noqa: ASYNC240 (set-up, before anything is timed)
    server = EmbeddedPostgres(folder / "pg")
    server.start()
    try:
        conn = await asyncpg.connect(server.dsn)
        await migrate(conn, with_platform_schema=True)
        await conn.execute(FILL_PURCHASES, RECENT_PURCHASES, 0.0, HOUR)
        await conn.execute(FILL_CALLS, RECENT_CALLS, 0.0, HOUR)
        config = Config()
        pool = await create_pool(Connection(server.dsn), config.database)
        registry = CollectorRegistry(auto_describe=False)
        metrics = SelfMetrics(registry, ["purchases", "api_calls"])
        sources = [
            PurchasesSource(config, ReasonClassifier(config.purchases.failure_reasons)),
            ApiCallsSource(config),
        ]
        runners = [SnapshotRunner(s, pool, metrics, 3600, 60, None) for s in sources]
        exposition = MetricsExposition([RegistrySection(registry), *snapshot_sections(runners)])
        print(f"recent hour: {RECENT_PURCHASES} purchases, {RECENT_CALLS} API calls")
        total = 0
        for size in sizes:
            await grow(conn, size - total)
            total = size
            for runner in runners:
                await runner.refresh()  # warm the cache before timing
                print(f"history {total:>9} rows  {runner.name:<10} refresh "
                      f"{ms(await time_refreshes(runner, rounds))}")  # fmt: skip
            scrapes, size_bytes = time_scrapes(exposition, rounds * 10)
            print(f"history {total:>9} rows  scrape ({size_bytes} bytes)  {ms(scrapes)}")
        rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"exporter process peak RSS: {rss_mib:.0f} MiB")
        await pool.close()
        await conn.close()
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        default="0,1000000,3000000",
        help="history sizes (rows older than every window), comma-separated",
    )
    parser.add_argument("--rounds", type=int, default=10, help="timed refreshes per size")  # fmt: skip
    args = parser.parse_args()
    asyncio.run(run([int(s) for s in args.sizes.split(",")], args.rounds))


if __name__ == "__main__":
    main()
