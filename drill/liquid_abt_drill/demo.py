"""`liquid-abt-drill demo`: the whole loop on one machine, for a walkthrough or a drill.

It starts an embedded PostgreSQL, the Kraken-compatible server (with throwaway API keys, so
signed calls and `auth_failure` work), the exporter, the traffic simulator playing the platform
and, when the Debian packages are installed, Prometheus with the shipped rules and Alertmanager
routing to the exporter's webhook. `--drill` then runs a Kraken outage from first failure to
worked-off retry queue and exits 0 (or 1, saying which step did not happen in time).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import shutil
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from exporter.database.embedded import free_port

from .outage_drill import Target, run_drill
from .stack import (
    ALERTMANAGER_BINARIES,
    EXPORTER_JOB,
    AlertmanagerProcess,
    ExporterProcess,
    KrakenServerProcess,
    MissingBinary,
    PrometheusProcess,
    Stack,
    StackError,
    exporter_config,
    find_binary,
    http_request,
    shortened_rules,
    webhook_alertmanager_config,
)

# A demo on loopback: these protect nothing. The Kraken-compatible server checks signatures
# made with this key pair, so the probe's Balance call and the `auth_failure` mode are real.
WEBHOOK_TOKEN = "demo-webhook-token"
ADMIN_TOKEN = "demo-admin-token"
KRAKEN_API_KEY = "demo-kraken-key"
KRAKEN_API_SECRET = base64.b64encode(b"demo-kraken-secret, protects nothing").decode()
# The normal day of the simulator, minus the reasons whose alerts fire on a single purchase
# (rate limited, auth): the demo's baseline stays quiet until you inject a fault.
BASELINE_MIX = "exchange_unavailable=0.004,network_timeout=0.004,insufficient_funds=0.002,invalid_amount=0.001,other=0.001"  # fmt: skip


@dataclass(frozen=True)
class Timing:
    """How fast everything moves: `human` to watch, `fast` for the test suite."""

    interval: str  # probe, collectors, scrape and rule evaluation
    alert_for: str  # every `for:` of the shipped rules is cut to this
    recovery_timeout: str  # breaker.recovery_timeout and incident.probation
    deadline: float  # seconds for each drill step


TIMINGS = {
    "human": Timing(interval="5s", alert_for="15s", recovery_timeout="15s", deadline=300),
    "fast": Timing(interval="1s", alert_for="2s", recovery_timeout="3s", deadline=120),
}
DEFAULT_PORTS = {
    "exporter": 9898, "kraken": 9988, "kraken_control": 9989, "prometheus": 9090, "alertmanager": 9093,
}  # fmt: skip


class Demo:
    """The demo's programs in `folder`; `start()` then `stop()`."""

    def __init__(self, folder: Path, timing: Timing, ports: dict[str, int]) -> None:
        self.folder, self.timing, self.ports = folder, timing, ports
        self.stack = Stack(folder)
        self.database_url = ""
        self.kraken: KrakenServerProcess | None = None
        self.exporter: ExporterProcess | None = None
        self.alertmanager: AlertmanagerProcess | None = None
        self.prometheus: PrometheusProcess | None = None

    @property
    def exporter_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['exporter']}"

    @property
    def control_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['kraken_control']}"

    def start(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True)
        self.folder.chmod(0o755)  # PostgreSQL's own user reaches its data folder through it
        self.database_url = self.stack.postgres().dsn
        self.kraken = self.stack.kraken_server(
            port=self.ports["kraken"], control_port=self.ports["kraken_control"],
            api_key=KRAKEN_API_KEY, api_secret=KRAKEN_API_SECRET,
        )  # fmt: skip
        alerting = self._alerting_binaries()
        if alerting:
            token = self.folder / "webhook-token"
            token.write_text(WEBHOOK_TOKEN)
            self.alertmanager = self.stack.alertmanager(
                webhook_alertmanager_config(
                    [self.exporter_url], token, group_interval=self.timing.interval,
                    repeat_interval="1h",
                ), port=self.ports["alertmanager"],
            )  # fmt: skip
        self.exporter = self.stack.exporter(
            database_url=self.database_url, migrate=True, port=self.ports["exporter"],
            config_yaml=self.exporter_config(), env={
                "LIQUID_ABT_WEBHOOK_TOKEN": WEBHOOK_TOKEN, "LIQUID_ABT_ADMIN_TOKEN": ADMIN_TOKEN,
                "KRAKEN_API_KEY": KRAKEN_API_KEY, "KRAKEN_API_SECRET": KRAKEN_API_SECRET,
            },
        )  # fmt: skip
        if self.alertmanager is not None:
            interval = self.timing.interval
            self.prometheus = self.stack.prometheus(
                [self.exporter.target], shortened_rules(
                    self.folder / "rules", self.timing.alert_for,
                    keep_firing_for=self.timing.alert_for, say_so=True,
                ),
                [self.alertmanager.url], scrape_interval=interval, evaluation_interval=interval,
                port=self.ports["prometheus"],
            )  # fmt: skip
        self.stack.simulator(
            database_url=self.database_url, config_file=self.exporter.workdir / "config.yml",
            args=["--backfill=1h", "--follow", "--rate=120", f"--failure-mix={BASELINE_MIX}",
                  f"--kraken-url={self.kraken.url}"],
        )  # fmt: skip
        self._wait_until_warm()

    def _wait_until_warm(self) -> None:
        """The banner promises a quiet baseline: the probe has answered and Prometheus scrapes.

        Before its first probe round the exporter says `exchange_up 0`, and before the first
        scrape the meta alert on an absent `up` may blip; a reader must not see either.
        """
        assert self.exporter is not None
        self.exporter.wait_for_metric('liquid_abt_exchange_up{exchange="kraken"} 1.0')
        if self.prometheus is not None:
            self.prometheus.wait_for(f'up{{job="{EXPORTER_JOB}"}} == 1')

    def _alerting_binaries(self) -> bool:
        try:
            find_binary("prometheus")
            find_binary(*ALERTMANAGER_BINARIES)
        except MissingBinary:
            print("prometheus / prometheus-alertmanager not installed: no alerts, so no automatic "
                  "pause; the breaker, metrics and admin API still work")  # fmt: skip
            return False
        return True

    def exporter_config(self) -> str:
        t = self.timing
        receiver: dict[str, str] = {}
        if self.alertmanager is not None:
            receiver |= {"alertmanager_url": self.alertmanager.url, "reconcile_interval": "30s"}
        assert self.kraken is not None
        return exporter_config(
            self.kraken.url, interval=t.interval,
            # The production default: `slow` (6 s) is then slow, not down.
            kraken={"timeout": "10s"},
            breaker={"failure_threshold": 2, "recovery_timeout": t.recovery_timeout},
            incident={"probation": t.recovery_timeout},
            receiver=receiver,
        )  # fmt: skip

    def stop(self) -> None:
        self.stack.close()

    def drill_target(self) -> Target:
        assert self.kraken is not None, "start() first"
        return Target(
            self.database_url, self.exporter_url, self.kraken,
            self.prometheus.url if self.prometheus else None, self.timing.deadline, self.folder,
        )  # fmt: skip

    def exited(self) -> str | None:
        """The first program that stopped on its own, with its log, or None."""
        for process in (self.kraken, self.exporter, self.alertmanager, self.prometheus):
            if process is not None and not process.alive():
                return (
                    f"{process.name} exited ({process.process.returncode}): see {process.log_path}"
                )
        return None

    def banner(self) -> str:
        admin = f"curl -H 'Authorization: Bearer {ADMIN_TOKEN}' {self.exporter_url}/api/admin"
        mode = f"curl -X POST {self.control_url}/_control/mode -d"
        lines = [
            f"exporter        {self.exporter_url}/metrics",
            f"admin API       {admin}/circuit-breaker/status",
            f'Kraken outage   {mode} \'{{"mode": "down"}}\'',
            f'Kraken back     {mode} \'{{"mode": "healthy"}}\'',
        ]
        if self.prometheus is not None and self.alertmanager is not None:
            lines += [
                f"Prometheus      {self.prometheus.url}{alerts_page(self.prometheus.url)}",
                f"Alertmanager    amtool --alertmanager.url={self.alertmanager.url} alert query",
            ]
        lines.append(f"logs            {self.folder}/*.log")
        return "\n".join(lines)


def alerts_page(prometheus_url: str) -> str:
    """Debian's Prometheus serves only the classic UI (`/classic/alerts`); upstream, `/alerts`."""
    return "/alerts" if http_request(f"{prometheus_url}/alerts")[0] == 200 else "/classic/alerts"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="liquid-abt-drill demo", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument(
        "--dir", default=".data/demo", help="working folder, emptied first (default: .data/demo)"
    )
    parser.add_argument("--ephemeral-ports", action="store_true",
                        help="free ports instead of 9898 (exporter), 9988/9989 (Kraken API/control), "
                             "9090 (Prometheus), 9093 (Alertmanager)")  # fmt: skip
    parser.add_argument("--timing", choices=sorted(TIMINGS), default="human",
                        help="human: 5 s intervals to watch; fast: 1 s, for tests")  # fmt: skip
    parser.add_argument("--drill", action="store_true",
                        help="run a Kraken outage until the retry queue is worked off, then exit")  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ports = dict(DEFAULT_PORTS)
    if args.ephemeral_ports:
        ports = {name: free_port() for name in ports}
    demo = Demo(Path(args.dir).resolve(), TIMINGS[args.timing], ports)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        demo.start()
        print(demo.banner(), flush=True)
        if args.drill:
            return asyncio.run(run_drill(demo.drill_target()))
        print("Ctrl-C stops everything.", flush=True)
        while not stop.wait(1.0):
            if gone := demo.exited():
                print(f"demo stopped: {gone}", file=sys.stderr)
                return 1
    except KeyboardInterrupt:
        pass
    except StackError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        demo.stop()
    return 0
