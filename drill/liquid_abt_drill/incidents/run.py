"""Running scenarios: a fresh stack each, the platform and the watcher beside it; and the
`liquid-abt-drill drill` command."""

from __future__ import annotations

import argparse
import asyncio
import base64
import secrets
import time
from collections.abc import Sequence
from pathlib import Path

import asyncpg

from exporter.database.embedded import free_port
from exporter.database.migrate import migrate

from ..platform import Platform, SecondaryAccount
from ..stack import (
    ExporterProcess,
    Stack,
)
from .pager import Pager
from .scenarios import SCENARIOS, Drill, Scenario
from .timeline import (
    Timeline,
    Watcher,
    decisions,
    incident_reviews,
    notices,
    reason_classes,
    retry_report,
)
from .timing import (
    ESCALATIONS,
    PAGER,
    TOKEN,
    Timing,
    alertmanager_config,
    exporter_config,
    scaled_rules,
)

# ---- running one ------------------------------------------------------------------------------


def invalid_nonces(metrics: str) -> float:
    """Probe calls refused for their nonce, in one exporter's /metrics text."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("liquid_abt_exchange_requests_total{")
        and 'outcome="invalid_nonce"' in line
    )


def _kraken_key(name: str) -> tuple[str, str]:
    return name, base64.b64encode(secrets.token_bytes(64)).decode()


async def run_scenario(
    scenario: Scenario, folder: Path, timing: Timing, database_url: str
) -> Timeline:
    """Run one scenario on a fresh stack in `folder` against `database_url` (migrated, empty)."""
    timeline = Timeline(scenario.name, timing)
    pager = Pager()
    await pager.start()
    # One key per program, as the runbook asks of production: Kraken nonces must increase per
    # key, so replicas sharing one interleave theirs and read `EAPI:Invalid nonce`.
    replica_keys = [_kraken_key(f"drill-replica-{i}") for i in range(scenario.replicas)]
    key, secret = _kraken_key("drill-platform")
    token = folder / "webhook-token"
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    await asyncio.to_thread(token.write_text, TOKEN)
    with Stack(folder) as stack:
        kraken = await asyncio.to_thread(
            stack.kraken_server, keys=dict([*replica_keys, (key, secret)])
        )
        # Each replica its own read-only key on each secondary, as on Kraken.
        secondary_keys = {
            name: [(f"{name}-replica-{i}", secrets.token_urlsafe(32))
                   for i in range(scenario.replicas)]
            for name in scenario.secondaries
        }  # fmt: skip
        # The platform's own key on each: it buys there while purchases are routed.
        platform_keys = {name: (f"drill-platform-{name}", secrets.token_urlsafe(32))
                         for name in scenario.secondaries}  # fmt: skip
        secondaries = {
            name: await asyncio.to_thread(
                stack.secondary_exchange, name, keys=dict([*keys, platform_keys[name]])
            )
            for name, keys in secondary_keys.items()
        }
        ports = [free_port() for _ in range(scenario.replicas)]
        am_port = free_port()
        alertmanager_url = f"http://127.0.0.1:{am_port}"

        def start(i: int) -> ExporterProcess:
            url = kraken.url
            if scenario.bad_network_replica and i == 0:
                url = f"http://127.0.0.1:{free_port()}"  # nothing listens: this replica's network
            urls = {name: fake.url for name, fake in secondaries.items()}
            config = exporter_config(timing, url, alertmanager_url, urls)
            replica_key, replica_secret = replica_keys[i]
            env = {
                "LIQUID_ABT_WEBHOOK_TOKEN": TOKEN,
                "KRAKEN_API_KEY": replica_key,
                "KRAKEN_API_SECRET": replica_secret,
            }
            for name, keys in secondary_keys.items():
                env[f"{name.upper()}_API_KEY"], env[f"{name.upper()}_API_SECRET"] = keys[i]
            return stack.exporter(database_url=database_url, config_yaml=config, env=env,
                                  port=ports[i])  # fmt: skip

        # The replica with the bad network joins a running cluster (started last): as one
        # whose network breaks would, and unlike a first replica, which has nobody to ask.
        order = list(range(scenario.replicas))[:: -1 if scenario.bad_network_replica else 1]
        started = {i: await asyncio.to_thread(start, i) for i in order}
        exporters = [started[i] for i in range(scenario.replicas)]
        config = alertmanager_config(timing, [e.url for e in exporters], token, pager.url)
        await asyncio.to_thread(stack.alertmanager, config, port=am_port)
        prometheus = await asyncio.to_thread(
            stack.prometheus, [e.target for e in exporters],
            scaled_rules(folder / "rules", timing), [alertmanager_url],
            scrape_interval=timing.d(15), evaluation_interval=timing.d(15),
        )  # fmt: skip

        async def restart(shipped_gap: float) -> None:
            for exporter in exporters:
                await asyncio.to_thread(exporter.stop)
            await asyncio.sleep(timing.s(shipped_gap))
            for i in range(len(exporters)):
                exporters[i] = await asyncio.to_thread(start, i)

        # 60 purchases a minute in shipped time (issue 10's platform), so faster when scaled; with
        # secondaries it follows routes (the gate's buy_on), an account on each.
        accounts = {name: SecondaryAccount(fake.url, *platform_keys[name])
                    for name, fake in secondaries.items()}  # fmt: skip
        platform = Platform(database_url, kraken.url, key, secret, timeout=timing.timeout(10),
                            rate_per_minute=60 / timing.scale, secondaries=accounts)  # fmt: skip
        drill = Drill(timing, stack, kraken, exporters, timeline, restart, secondaries)
        watcher = Watcher(database_url, prometheus, pager, timeline, exporters)
        stop = asyncio.Event()
        tasks = [asyncio.create_task(platform.run(stop)), asyncio.create_task(watcher.run(stop))]
        try:
            await scenario.act(drill)
            timeline.isolated_seen = (
                any(
                    'liquid_abt_exchange_isolated{exchange="kraken"} 1.0' in e.metrics()
                    for e in exporters
                    if e.alive()
                )
                or timeline.isolated_seen
            )
            timeline.invalid_nonces = sum(
                invalid_nonces(e.metrics()) for e in exporters if e.alive()
            )
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            await pager.stop()
        timeline.notifications = pager.notifications({PAGER, *ESCALATIONS})
        timeline.retry = await retry_report(database_url, timing)  # the exporters still run
        timeline.reasons = await reason_classes(database_url)
        timeline.decisions = await decisions(database_url, timeline)
        timeline.reviews = await incident_reviews(database_url)
        timeline.notices = await notices(database_url, timeline)
        timeline.bought_on = dict(platform.counts.bought_on)
        timeline.failed_on = dict(platform.counts.failed_on)
        timeline.orders = [(timeline.at(at), on, ok) for at, on, ok in platform.counts.orders]
    return timeline


# ---- `liquid-abt-drill drill` ----------------------------------------------------------------


async def _fresh_database(server_dsn: str, name: str) -> str:
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    url = server_dsn.rsplit("/", 1)[0] + f"/{name}"
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn, with_platform_schema=True)
    finally:
        await conn.close()
    return url


async def run_all(names: Sequence[str], folder: Path, timing: Timing) -> int:
    failed = 0
    with Stack(folder) as stack:
        postgres = await asyncio.to_thread(stack.postgres)
        for name in names:
            scenario = SCENARIOS[name]
            url = await _fresh_database(postgres.dsn, f"drill_{name.replace('-', '_')}")
            started = time.monotonic()
            timeline = await run_scenario(scenario, folder / name, timing, url)
            problems = scenario.expect(timeline)
            print(timeline.table())
            print(f"  issue 10 case(s) {scenario.case}; ran {time.monotonic() - started:.0f}s; "
                  + ("as expected" if not problems else "NOT AS EXPECTED: " + "; ".join(problems)),
                  flush=True)  # fmt: skip
            for line in scenario.figures(timeline) if scenario.figures else []:
                print(f"  figure: {line}")
            print()
            print_reviews(timeline, folder / name)
            failed += bool(problems)
    return 1 if failed else 0


def print_reviews(timeline: Timeline, folder: Path) -> None:
    """Each incident's generated review, printed for the closing note and kept beside the
    scenario's logs (incident-<id>.md)."""
    if not timeline.reviews:
        print(f"  no incident recorded: no post-incident review for {timeline.scenario}\n")
    for incident, text in timeline.reviews:
        path = folder / f"incident-{incident}.md"
        path.write_text(text)
        print(f"---- post-incident review of incident {incident} ({path}) ----\n")
        print(text, flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="liquid-abt-drill drill",
        description="Replay the runbooks' incidents on the whole loop (PostgreSQL, the "
        "Kraken-compatible server, two exporters, Prometheus with the shipped rules, "
        "Alertmanager with the shipped routes, a platform buying through the exchange) and "
        "print one timeline per scenario: when purchases stopped, what paged, how often the "
        "breaker changed state, when purchases resumed.",
    )
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS),
                        help="run only this scenario (repeatable; default: all)")  # fmt: skip
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply every timer by this (default 1: the shipped timers; "
                        "figures are always reported in shipped seconds)")  # fmt: skip
    parser.add_argument("--folder", type=Path, default=Path(".data/drill"),
                        help="where the programs run and log (default .data/drill)")  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.scale <= 0:
        build_parser().error(f"--scale {args.scale}: must be above 0")
    names = args.scenario or list(SCENARIOS)
    return asyncio.run(run_all(names, args.folder.resolve(), Timing(args.scale)))
