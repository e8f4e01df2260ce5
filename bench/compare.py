"""Benchmark: liquid-abt-exporter beside query-exporter, same database, same SQL, one run.

query-exporter (PyPI, 5.x) is the anchor: it runs the exporter's own SQL (the runbook questions:
purchases by window and status, failures by reason class, affected tenants, retry eligibility,
platform API calls, controls), once per scrape and cached with a 15 s interval. The script fills
an embedded PostgreSQL with a busy hour, grows the history, then adds an outage storm, and prints
one table: scrape p50/p99 with 8 concurrent scrapers, RSS, database transactions a second
(pg_stat_database deltas while that system alone runs), and refresh times, with the targets of
issue 12 as ratios. Usage:

    python bench/compare.py --query-exporter .venv-bench/bin/query-exporter [--quick] [--only-storm]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import asyncpg
import yaml

from exporter.config import Config, format_duration
from exporter.controls.exposition import BACKLOG_SQL, CONTROLS_SQL
from exporter.database.embedded import EmbeddedPostgres, free_port
from exporter.database.migrate import migrate
from exporter.signals.classify import ReasonClassifier
from exporter.signals.collectors.api_calls import API_CALLS_SQL, ApiCallsSource
from exporter.signals.collectors.purchases import PurchasesSource, PurchasesSql, non_ascii_test
from liquid_abt_drill.simulate.scenarios import FAILURES

HOUR = 3600.0
RECENT = "now() - make_interval(secs => random() * 3000)"  # inside the hour for the whole run
OLD = "now() - make_interval(secs => 7200 + random() * 90 * 86400)"  # older than every window
# What Prometheus 3 sends.
ACCEPT = (
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,"
    "application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;q=0.3,"
    "text/plain;version=0.0.4;q=0.2,*/*;q=0.1"
)
PURCHASES = """
INSERT INTO bitcoin_purchases (tenant_id, amount_aud, status, failure_reason, created_at)
SELECT 'tenant-' || (i % 5000), (random() * 1000)::numeric(18, 2),
       (ARRAY['completed','completed','completed','failed','pending','refunded'])[1 + i % 6],
       CASE WHEN i % 6 = 3 THEN ($2::text[])[1 + i % cardinality($2::text[])] END,
       {when}
FROM generate_series(1, $1) AS i
"""
CALLS = """
INSERT INTO api_call_logs (provider, endpoint, success, response_time, created_at)
SELECT 'kraken', (ARRAY['getCurrentPrice','getBalance','getOrderBook','placeOrder','x'])[1 + i % 5],
       i % 10 <> 0, (random() * 3000)::int, {when}
FROM generate_series(1, $1) AS i
"""
# Real exchange errors carry order ids and timings: every failed purchase has its own text.
STORM = """
INSERT INTO bitcoin_purchases (tenant_id, amount_aud, status, failure_reason, created_at)
SELECT 'tenant-' || (i % 5000), (random() * 1000)::numeric(18, 2), 'failed',
       ($2::text[])[1 + i % cardinality($2::text[])] || ' (order O' || upper(substr(md5(i::text), 1, 5))
         || '-' || substr(md5(i::text), 6, 5) || ', after ' || (random() * 30000)::int || ' ms)',
       {when}
FROM generate_series($3::int, $3 + $1 - 1) AS i
UNION ALL
SELECT 'tenant-' || (i % 5000), (random() * 1000)::numeric(18, 2), 'completed', NULL, {when}
FROM generate_series(1, $1) AS i
"""


@dataclass
class Row:
    system: str
    rows: str
    p50: float | None = None  # seconds
    p99: float | None = None
    rss: float | None = None  # MiB, at the end of the load
    peak_rss: float | None = None
    xacts: float | None = None  # transactions a second
    refresh: dict[str, float] = field(default_factory=dict)  # purchases refresh, by data set
    first_refresh: dict[str, float] = field(default_factory=dict)  # nothing kept yet


# --- data ---------------------------------------------------------------------------------------


async def fill(conn: asyncpg.Connection, purchases: int, calls: int, when: str) -> None:
    reasons = [f.reason for f in FAILURES]
    for start in range(0, purchases, 1_000_000):  # one statement per million: bounded WAL
        n = min(1_000_000, purchases - start)
        await conn.execute(PURCHASES.format(when=when), n, reasons)
    for start in range(0, calls, 1_000_000):
        await conn.execute(CALLS.format(when=when), min(1_000_000, calls - start))
    await conn.execute("ANALYZE")


async def storm(conn: asyncpg.Connection, failed: int) -> None:
    await conn.execute(STORM.format(when=RECENT), failed, [f.reason for f in FAILURES], 1)
    await conn.execute("ANALYZE")


async def storm_goes_on(conn: asyncpg.Connection, failed: int, round_: int) -> None:
    """The storm's purchases of one refresh interval (15 s of an hour), created now, with texts
    of their own: what a refresh in the middle of the storm finds new."""
    n = failed // 240
    await conn.execute(
        STORM.format(when="now()"), n, [f.reason for f in FAILURES], failed + round_ * n
    )


async def xact_count(conn: asyncpg.Connection) -> int:
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    return int(
        await conn.fetchval(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database"
            " WHERE datname = current_database()"
        )
    )


# --- the systems ---------------------------------------------------------------------------------


def inline(sql: str, *values: object) -> str:
    """The SQL with its $n parameters as constants (query-exporter takes plain SQL)."""

    def constant(value: object) -> str:
        if isinstance(value, list):
            kind = "float8" if value and isinstance(value[0], float) else "text"
            return f"ARRAY[{', '.join(map(constant, value))}]::{kind}[]"
        if isinstance(value, str):
            return "'" + value.replace("'", "''") + "'"
        return repr(value)

    return re.sub(r"\$(\d+)", lambda m: constant(values[int(m.group(1)) - 1]), sql)


def anchor_config(dsn: str, config: Config, interval: float | None) -> dict:
    """query-exporter running the exporter's queries: one metric per value column."""
    sql = PurchasesSql(config, non_ascii_test("UTF8"))
    windows = config.api_calls.windows
    queries = {
        "purchases": (
            # The collector's recount of every slice (its first refresh), summed over slices.
            f"SELECT provider, status, coalesce(reason, '') AS reason, bucket::text AS bucket,"
            f" sum(purchases) AS purchases, sum(amount_aud)::float8 AS amount_aud,"
            f" coalesce(sum(retry_candidates) FILTER (WHERE in_retry), 0) AS retry_eligible"
            f" FROM ({inline(sql.recount_all, 3, ['pending', 'completed', 'failed', 'refunded'])}) q"
            f" GROUP BY 1, 2, 3, 4",
            ["provider", "status", "reason", "bucket"], ["purchases", "amount_aud", "retry_eligible"],
        ),
        "tenants": (
            f"SELECT exchange, bucket::text AS bucket, tenants FROM ({inline(sql.tenants, config.exchanges)}) q",
            ["exchange", "bucket"], ["tenants"],
        ),
        "api_calls": (
            "SELECT \"window\", exchange, endpoint, succeeded, failed, coalesce(mean_seconds, 0) AS mean_seconds,"
            " coalesce(p95_seconds, 0) AS p95_seconds FROM ("
            + inline(API_CALLS_SQL, [format_duration(w) for w in windows], list(windows),
                     config.exchanges, config.api_calls.endpoints, max(windows))
            + ") q",
            ["window", "exchange", "endpoint"], ["succeeded", "failed", "mean_seconds", "p95_seconds"],
        ),
        "controls": (
            "SELECT exchange, state, failure_count, queue_depth, oldest_age, rate_multiplier,"
            f" ({BACKLOG_SQL}) AS backlog FROM ({inline(CONTROLS_SQL, config.exchanges)}) q",
            ["exchange", "state"],
            ["failure_count", "queue_depth", "oldest_age", "rate_multiplier", "backlog"],
        ),
    }  # fmt: skip
    metrics, query_config = {}, {}
    for name, (text, labels, values) in queries.items():
        for value in values:
            metrics[f"{name}_{value}"] = {"type": "gauge", "labels": labels}
        select = ", ".join(
            [*(f'"{label}"' for label in labels), *(f"{v} AS {name}_{v}" for v in values)]
        )
        query_config[name] = {
            "databases": ["db"],
            "metrics": [f"{name}_{v}" for v in values],
            "sql": f"SELECT {select} FROM ({text}) AS r",
            **({"interval": int(interval)} if interval else {}),
        }
    return {
        # The exporter's collector sets the same work_mem for its transaction.
        "databases": {
            "db": {
                "dsn": dsn.replace("postgresql://", "postgresql+psycopg2://", 1)
                + "?options=-c%20work_mem%3D64MB"
            }
        },
        "metrics": metrics,
        "queries": query_config,
    }


@dataclass
class Process:
    popen: subprocess.Popen
    url: str

    def rss(self) -> tuple[float, float]:
        """Current and peak resident set, MiB."""
        status = Path(f"/proc/{self.popen.pid}/status").read_text()
        kib = {
            k: int(v.split()[0]) for k, v in re.findall(r"^(VmRSS|VmHWM):\s+(.*)$", status, re.M)
        }
        return kib["VmRSS"] / 1024, kib["VmHWM"] / 1024


@contextlib.asynccontextmanager
async def started(argv: Sequence[str], port: int, folder: Path) -> AsyncIterator[Process]:
    log = (folder / f"{port}.log").open("w")
    popen = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)  # noqa: ASYNC220 (not timed)
    try:
        yield Process(popen, f"http://127.0.0.1:{port}/metrics")
    finally:
        popen.terminate()
        try:
            popen.wait(timeout=20)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()
        log.close()


async def wait_for(
    url: str, ready: Sequence[re.Pattern[str]], timeout: float, proc: Process
) -> str:
    """Scrape until every pattern is found; returns that exposition."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{proc.popen.args} exited with {proc.popen.returncode}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url) as response:
                    text = await response.text()
                    if response.status == 200 and all(r.search(text) for r in ready):
                        return text
            await asyncio.sleep(0.5)
    raise RuntimeError(f"{url} not ready within {timeout:.0f} s")


async def scrape_load(url: str, seconds: float, scrapers: int = 8) -> list[float]:
    """`scrapers` clients scraping back to back, as Prometheus asks (OpenMetrics, gzip)."""
    headers = {"Accept": ACCEPT, "Accept-Encoding": "gzip"}
    durations: list[float] = []
    end = time.monotonic() + seconds

    async def scraper(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < end:
            started_at = time.perf_counter()
            async with session.get(url, headers=headers) as response:
                await response.read()
                assert response.status == 200, response.status
            durations.append(time.perf_counter() - started_at)

    connector = aiohttp.TCPConnector(limit=scrapers)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
        await asyncio.gather(*(scraper(session) for _ in range(scrapers)))
    return durations


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def measure(row: Row, proc: Process, conn: asyncpg.Connection, seconds: float) -> None:
    # Backends report their counts up to 10 s late: over 30 s the lags at both ends cancel out.
    before, started_at = await xact_count(conn), time.monotonic()
    durations = await scrape_load(proc.url, seconds)
    elapsed = time.monotonic() - started_at
    row.xacts = (await xact_count(conn) - before - 2) / elapsed
    row.p50, row.p99 = percentile(durations, 0.5), percentile(durations, 0.99)
    row.rss, row.peak_rss = proc.rss()


def anchor_latency(text: str) -> float:
    """query-exporter's mean time for one round of every query, from its query_latency."""
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for name, labels, value in re.findall(
        r"^query_latency_(sum|count)\{([^}]*)\} (\S+)$", text, re.M
    ):
        query = re.search(r'query="([^"]+)"', labels).group(1)  # type: ignore[union-attr]
        (sums if name == "sum" else counts)[query] = float(value)
    return sum(sums[q] / counts[q] for q in sums if counts.get(q))


# --- the run -------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, folder: Path, dsn: str, kraken: str) -> None:
        self.args, self.folder, self.dsn, self.kraken = args, folder, dsn, kraken
        self.config = Config()
        self.rows: list[Row] = []

    def row(self, system: str, rows: str) -> Row:
        found = next((r for r in self.rows if r.system == system and r.rows == rows), None)
        if found is None:
            found = Row(system, rows)
            self.rows.append(found)
        return found

    async def refresh_times(
        self, conn: asyncpg.Connection, storm: bool, rounds: int = 5
    ) -> tuple[float, float]:
        """The first and the median of the next purchases refreshes of the exporter's collector,
        in this process: the first counts every slice, the next ones what changed since."""
        source = PurchasesSource(
            self.config, ReasonClassifier(self.config.purchases.failure_reasons)
        )
        started_at = time.perf_counter()
        await source.collect(conn)
        first = time.perf_counter() - started_at
        durations = []
        for round_ in range(rounds):
            if storm:
                await storm_goes_on(conn, self.args.storm, round_)
            started_at = time.perf_counter()
            await source.collect(conn)
            durations.append(time.perf_counter() - started_at)
        await ApiCallsSource(self.config).collect(conn)
        return first, statistics.median(durations)

    async def ours(self, conn: asyncpg.Connection, label: str, dataset: str) -> Row:
        port = free_port()
        config = self.folder / "exporter.yml"
        config.write_text(
            yaml.safe_dump({"database": {"dsn": self.dsn}, "kraken": {"base_url": self.kraken}})
        )
        argv = [sys.executable, "-m", "exporter", "serve", "--config.file", str(config),
                "--web.listen-address", f"127.0.0.1:{port}", "--log.level", "warn"]  # fmt: skip
        row = self.row("liquid-abt-exporter", label)
        async with started(argv, port, self.folder) as proc:
            ready = re.compile(
                r'^liquid_abt_collector_last_success_timestamp_seconds\{collector="purchases"\} [1-9]',
                re.M,
            )
            await wait_for(proc.url, [ready], 300, proc)
            await measure(row, proc, conn, self.args.seconds)
        row.first_refresh[dataset], row.refresh[dataset] = await self.refresh_times(
            conn, storm=dataset == "storm"
        )
        return row

    async def anchor(
        self,
        conn: asyncpg.Connection,
        label: str,
        dataset: str,
        interval: float | None,
        load: bool = True,
    ) -> Row:
        port = free_port()
        config = self.folder / f"query-exporter-{interval}.yml"
        config.write_text(yaml.safe_dump(anchor_config(self.dsn, self.config, interval)))
        argv = [self.args.query_exporter, "--config", str(config), "-H", "127.0.0.1", "-p", str(port),
                "-L", "warning", "--process-stats"]  # fmt: skip
        mode = "queries on scrape" if interval is None else f"cached ({interval:.0f} s)"
        row = self.row(f"query-exporter, {mode}", label)
        async with started(argv, port, self.folder) as proc:
            # Every query done once: its latency is then part of the round.
            ready = [
                re.compile(rf'^queries_total\{{[^}}]*query="{q}"[^}}]*\}} [1-9]', re.M)
                for q in ("purchases", "tenants", "api_calls", "controls")
            ]
            text = await wait_for(proc.url, ready, 600, proc)
            if load:
                await measure(row, proc, conn, self.args.seconds)
            async with aiohttp.ClientSession() as session, session.get(proc.url) as response:
                text = await response.text()
            row.refresh[dataset] = anchor_latency(text)
            if not load:
                row.rss, row.peak_rss = proc.rss()
        return row

    async def run(self, conn: asyncpg.Connection) -> None:
        small, large, failed = self.args.sizes
        await fill(conn, 20_000, 50_000, RECENT)  # the busy hour
        await fill(conn, small, min(small, 1_000_000), OLD)
        label = f"{small / 1e6:g}M"
        if self.args.only_storm:
            await self.storm(conn, label, failed)
            return
        print(f"{datetime.now():%H:%M:%S} {label} rows", flush=True)
        await self.ours(conn, label, label)
        await self.anchor(conn, label, label, None)
        await self.anchor(conn, label, label, 15)
        await fill(conn, large - small, 0, OLD)
        label = f"{large / 1e6:g}M"
        print(f"{datetime.now():%H:%M:%S} {label} rows", flush=True)
        await self.ours(conn, label, label)
        await self.anchor(conn, label, label, 15)
        await self.storm(conn, label, failed)

    async def storm(self, conn: asyncpg.Connection, label: str, failed: int) -> None:
        await storm(conn, failed)
        label = f"{label} + storm"
        print(
            f"{datetime.now():%H:%M:%S} storm: {failed} failed purchases with their own texts",
            flush=True,
        )
        await self.ours(conn, label, "storm")
        await self.anchor(conn, label, "storm", 15, load=False)


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f} ms" if value < 10 else f"{value:.1f} s"


def report(bench: Bench, sizes: tuple[int, int, int], command: str, took: float) -> str:
    datasets = [f"{sizes[0] / 1e6:g}M", f"{sizes[1] / 1e6:g}M", "storm"]
    lines = [
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}: {os.cpu_count()} cores,"
        f" Python {platform.python_version()}, `{command}`, {took / 60:.0f} min",
        f"storm: {sizes[2]:,} failed purchases with their own texts and {sizes[2]:,} completed in the"
        " last hour; refresh: the purchases collector, median of 5 (in the storm, each after 15 s"
        " more of it: 1/240 of its purchases, created then; query-exporter: its mean time for one"
        " round of the same queries)",
        "",
        "| system | purchase rows | p50 | p99 | RSS (peak) | DB transactions/s | "
        + " | ".join(f"refresh {d}" for d in datasets)
        + " |",
        "|---|---|---|---|---|---|" + "---|" * len(datasets),
    ]
    for r in bench.rows:
        rss = "-" if r.rss is None else f"{r.rss:.0f} MiB ({r.peak_rss:.0f})"
        xacts = "-" if r.xacts is None else f"{r.xacts:.1f}"
        refresh = " | ".join(ms(r.refresh.get(d)) for d in datasets)
        lines.append(
            f"| {r.system} | {r.rows} | {ms(r.p50)} | {ms(r.p99)} | {rss} | {xacts} | {refresh} |"
        )
    firsts = [
        f"{d} {ms(r.first_refresh[d])}"
        for r in bench.rows
        if r.system == "liquid-abt-exporter"
        for d in datasets
        if d in r.first_refresh
    ]
    lines += [
        "",
        "liquid-abt-exporter's first refresh after a start (nothing kept yet, every slice"
        f" counted): {', '.join(firsts)}",
        "",
        *targets(bench, datasets),
    ]
    return "\n".join(lines)


def targets(bench: Bench, datasets: list[str]) -> list[str]:
    ours = [r for r in bench.rows if r.system == "liquid-abt-exporter"]
    cached = [r for r in bench.rows if r.system.startswith("query-exporter, cached")]
    lines = ["| target | measured | |", "|---|---|---|"]

    def check(name: str, value: float, limit: float, shown: str) -> None:
        lines.append(f"| {name} | {shown} | {'met' if value <= limit else 'MISSED'} |")

    for mine, anchor in zip(ours, cached, strict=False):
        if mine.p99 and anchor.p99:
            ratio = mine.p99 / anchor.p99
            check(f"scrape p99 at {mine.rows} <= 1/5 of query-exporter cached", ratio, 0.2,
                  f"{ms(mine.p99)} / {ms(anchor.p99)} = {ratio:.3f}")  # fmt: skip
    refresh = {k: v for r in ours for k, v in r.refresh.items()}
    if datasets[0] in refresh and datasets[1] in refresh:
        ratio = refresh[datasets[1]] / refresh[datasets[0]]
        check(f"refresh {datasets[1]} <= 2x {datasets[0]}", ratio, 2.0, f"{ratio:.2f}x")
    if "storm" in refresh:
        check("storm: purchases refresh <= 1 s", refresh["storm"], 1.0, ms(refresh["storm"]))
    if ours[-1].peak_rss:
        check("storm: RSS <= 80 MB (peak, MiB)", ours[-1].peak_rss * 1.048576, 80.0,
              f"{ours[-1].peak_rss:.0f} MiB ({ours[-1].peak_rss * 1.048576:.0f} MB)")  # fmt: skip
    return lines


async def main(args: argparse.Namespace) -> None:
    command = " ".join(["python", *sys.argv])
    folder = Path(tempfile.mkdtemp(prefix="liquid-abt-compare-"))
    folder.chmod(0o755)  # noqa: ASYNC240 (set-up, before anything is timed)
    server = EmbeddedPostgres(folder / "pg")
    server.start()
    kraken_port = free_port()
    kraken = subprocess.Popen(  # noqa: ASYNC220 (set-up)
        [sys.executable, "-m", "liquid_abt_drill.kraken_server", "--listen", f"127.0.0.1:{kraken_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    started_at = time.monotonic()
    try:
        conn = await asyncpg.connect(server.dsn)
        await migrate(conn, with_platform_schema=True)
        bench = Bench(args, folder, server.dsn, f"http://127.0.0.1:{kraken_port}")
        try:
            await bench.run(conn)
        finally:
            print(report(bench, args.sizes, command, time.monotonic() - started_at), flush=True)
        await conn.close()
    finally:
        kraken.terminate()
        kraken.wait()
        server.stop()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--query-exporter", required=True, help="the query-exporter executable")
    parser.add_argument("--quick", action="store_true",
                        help="100k / 1M rows and 8 s of scraping instead of 1M / 10M and 30 s")  # fmt: skip
    parser.add_argument("--storm", type=int, default=200_000, help="failed purchases in the storm")
    parser.add_argument("--only-storm", action="store_true",
                        help="only the storm, over the smaller history: the storm row alone")  # fmt: skip
    args = parser.parse_args()
    small, large = (100_000, 1_000_000) if args.quick else (1_000_000, 10_000_000)
    args.sizes = (small, large, args.storm)
    args.seconds = 8.0 if args.quick else 30.0
    return args


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
