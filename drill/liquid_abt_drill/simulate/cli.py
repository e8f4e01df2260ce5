"""`liquid-abt-drill simulate`: flags, the exporter's config and database, backfill then live."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import asyncpg

from exporter.config import (
    Config,
    ConfigError,
    format_duration,
    load_config,
    parse_duration,
)
from exporter.database.pool import database_connection
from exporter.logs import FORMATS, LEVELS, setup_logging
from exporter.secrets import SecretError
from exporter.signals.classify import ReasonClassifier

from .database import backfill, check_database
from .exchange import ExchangeWatch
from .generator import Simulator, Summary
from .live import Live
from .scenarios import CATALOGUE, SCENARIOS, SimulateError, parse_mix

log = logging.getLogger("liquid_abt_drill.simulate")


def _duration(value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _mix(value: str) -> dict[str, float]:
    try:
        return parse_mix(value)
    except SimulateError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = 0.0
    if not number > 0:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a number above 0")
    return number


def build_parser() -> argparse.ArgumentParser:
    scenarios = "; ".join(f"{name}: {s.summary}" for name, s in SCENARIOS.items())
    parser = argparse.ArgumentParser(
        prog="liquid-abt-drill simulate",
        description="Write simulated Bitcoin purchases and exchange API call logs into the "
        "platform tables (DATABASE_URL, password from DATABASE_PASSWORD[_FILE], or database.dsn "
        "of the config file). Development, demo and drill databases only.",
    )
    parser.add_argument(
        "--rate", type=_positive, default=30.0, help="purchases per minute (default: 30)"
    )
    parser.add_argument(
        "--scenario",
        choices=sorted(SCENARIOS),
        default="normal",
        help=f"failure mix and latencies of a runbook scenario: {scenarios}",
    )
    parser.add_argument(
        "--failure-mix",
        type=_mix,
        metavar="CLASS=P,...",
        help="probability per purchase of each failure class, replacing the "
        "scenario's mix, e.g. exchange_unavailable=0.02,rate_limited=0.01",
    )
    parser.add_argument(
        "--duration",
        type=_duration,
        help="stop after this long (e.g. 10m; default: until SIGINT or SIGTERM)",
    )
    parser.add_argument(
        "--backfill",
        type=_duration,
        metavar="DURATION",
        help="write this much history (e.g. 1h) at once, then exit unless --follow",
    )
    parser.add_argument("--follow", action="store_true", help="after --backfill, go on live")
    parser.add_argument("--tenants", type=int, default=40, help="number of tenants (default: 40)")
    parser.add_argument(
        "--exchange", help="exchange_provider (default: the first configured exchange)"
    )
    parser.add_argument("--seed", type=int, help="random seed, for a reproducible run")
    parser.add_argument(
        "--kraken-url",
        metavar="URL",
        help="live: meet this exchange as it is now (a public call to it every second): "
        "purchases fail when it fails and are slow when it is; for drills against "
        "`kraken-server` (default: the failure mix alone decides)",
    )
    parser.add_argument(
        "--ignore-controls",
        action="store_true",
        help="live: go on buying while purchases are paused or the breaker is open",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="write even into a database holding purchases of other tenants",
    )
    # The exporter's own variables, so both read one environment in a container.
    env = os.environ.get
    parser.add_argument(
        "--config.file",
        dest="config_file",
        default=env("LIQUID_ABT_CONFIG_FILE"),
        help="the exporter's config file (env LIQUID_ABT_CONFIG_FILE)",
    )
    parser.add_argument(
        "--log.level",
        dest="log_level",
        choices=LEVELS,
        default=env("LIQUID_ABT_LOG_LEVEL", "info"),
        help="env LIQUID_ABT_LOG_LEVEL",
    )
    parser.add_argument(
        "--log.format",
        dest="log_format",
        choices=FORMATS,
        default=env("LIQUID_ABT_LOG_FORMAT", "logfmt"),
        help="env LIQUID_ABT_LOG_FORMAT",
    )
    return parser


def _warn_on_misclassification(config: Config) -> None:
    """Configured patterns may differ from the defaults: say which texts would be misread."""
    classify = ReasonClassifier(config.purchases.failure_reasons).classify
    for failure in CATALOGUE:
        got = classify(failure.text)
        if got != failure.reason:
            log.warning(
                "configured failure_reasons classify a simulated reason differently",
                extra={"text": failure.text, "intended": failure.reason, "classified": got},
            )


async def _simulate(args: argparse.Namespace, config: Config) -> Summary:
    connection = database_connection(config)
    if connection is None:
        raise SimulateError("no database: set DATABASE_URL or database.dsn in the config file")
    scenario = SCENARIOS[args.scenario]
    mix = args.failure_mix if args.failure_mix is not None else dict(scenario.mix)
    simulator = Simulator(mix, slowdown=scenario.slowdown, tenants=args.tenants, seed=args.seed)
    exchange = args.exchange or config.exchanges[0]

    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(
            connection.dsn,
            password=connection.password,
            timeout=10,
            server_settings={"application_name": "liquid-abt-simulator"},
        )

    # From the start, so that a SIGTERM during the backfill also ends the run cleanly (the live
    # part then stops at once).
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    conn = await connect()
    try:
        await check_database(conn, force=args.force)
        log.info(
            "simulating",
            extra={
                "database": connection.masked,
                "exchange": exchange,
                "scenario": args.scenario,
                "rate_per_minute": args.rate,
                "mix": ",".join(f"{k}={v:g}" for k, v in mix.items()) or "none",
            },
        )
        if args.backfill:
            started = time.monotonic()
            summary = await backfill(
                conn, simulator, seconds=args.backfill, rate_per_minute=args.rate, exchange=exchange
            )
            log.info(
                "backfill written",
                extra={
                    "period": format_duration(args.backfill),
                    "seconds": round(time.monotonic() - started, 2),
                    **summary.describe(),
                },
            )
            if not args.follow:
                return summary
    finally:
        await conn.close()
    live = Live(
        connect,
        simulator,
        rate_per_minute=args.rate,
        exchange=exchange,
        honour_controls=not args.ignore_controls,
        retry_config=config.retry,
        watch=_watch(args.kraken_url, config),
    )
    summary = await live.run(stop, args.duration)
    log.info("simulation stopped", extra={**summary.describe(), "lost": live.lost})
    return summary


def _watch(kraken_url: str | None, config: Config) -> ExchangeWatch | None:
    if kraken_url is None:
        return None
    return ExchangeWatch(kraken_url, ReasonClassifier(config.purchases.failure_reasons).classify)


def main(argv: Sequence[str] | None = None) -> int:
    """`liquid-abt-drill simulate [--rate N] [--scenario S] [--backfill 1h [--follow]] ...`."""
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    try:
        config = load_config(Path(args.config_file) if args.config_file else None)
        _warn_on_misclassification(config)
        asyncio.run(_simulate(args, config))
    except (SimulateError, ConfigError, SecretError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        print(f"error: database: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
