"""`liquid-abt-exporter demo`: the whole loop on one machine, for a walkthrough or a drill.

It starts an embedded PostgreSQL, the Kraken-compatible server, the exporter, the traffic
simulator and, when the Debian packages are installed, Prometheus with the shipped rules and
Alertmanager routing to the exporter's webhook. `--drill` then injects a Kraken outage, waits for
the breaker to open and purchases to pause, ends the outage, waits for verified recovery and
resumption, and exits 0 (or 1, saying which step did not happen in time).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from exporter.database.embedded import EmbeddedPostgres, free_port

WEBHOOK_TOKEN = "demo-webhook-token"  # a demo on loopback: these protect nothing
ADMIN_TOKEN = "demo-admin-token"


@dataclass(frozen=True)
class Timing:
    """How fast everything moves: `human` to watch, `fast` for the test suite."""

    interval: str  # probe, collectors, scrape and rule evaluation
    alert_for: str  # every `for:` of the shipped rules is cut to this
    recovery_timeout: str
    deadline: float  # seconds for each drill step


TIMINGS = {
    "human": Timing(interval="5s", alert_for="15s", recovery_timeout="15s", deadline=300),
    "fast": Timing(interval="1s", alert_for="2s", recovery_timeout="3s", deadline=120),
}


DEFAULT_PORTS = {
    "exporter": 9898, "kraken": 9988, "kraken_control": 9989, "prometheus": 9090, "alertmanager": 9093,
}  # fmt: skip


def _repo_file(*parts: str) -> Path | None:
    """Shipped files outside the package (alerts/): found when running from a checkout."""
    path = Path(str(resources.files("exporter"))).parent.joinpath(*parts)
    return path if path.exists() else None


def http(url: str, body: Any = None, token: str | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read().decode()
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def wait_for(what: str, check: Callable[[], bool], deadline: float) -> float:
    """Poll until `check()`; returns the seconds it took, or exits saying what did not happen."""
    started = time.monotonic()
    while True:
        try:
            if check():
                return time.monotonic() - started
        except OSError:
            pass
        if time.monotonic() - started > deadline:
            raise SystemExit(f"drill failed: {what} did not happen within {deadline:.0f}s")
        time.sleep(0.5)


class Demo:
    def __init__(self, folder: Path, timing: Timing, ports: dict[str, int]) -> None:
        self.folder = folder
        self.timing = timing
        self.ports = ports
        self.port = ports["exporter"]
        self.kraken_port, self.control_port = ports["kraken"], ports["kraken_control"]
        self.processes: list[subprocess.Popen[bytes]] = []
        self.database: EmbeddedPostgres | None = None
        self.alertmanager_url: str | None = None
        self.prometheus_url: str | None = None

    @property
    def exporter_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spawn(self, name: str, args: Sequence[str], env: dict[str, str] | None = None) -> None:
        log = (self.folder / f"{name}.log").open("wb")
        process = subprocess.Popen(
            args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )
        self.processes.append(process)

    def exporter_cmd(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "exporter", *args]

    def start(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True)
        self.folder.chmod(0o755)
        self.database = EmbeddedPostgres(self.folder / "pg")
        self.database.start()
        env = {"DATABASE_URL": self.database.dsn}
        self.spawn("kraken-server", self.exporter_cmd(
            "kraken-server", f"--listen=127.0.0.1:{self.kraken_port}",
            f"--control-listen=127.0.0.1:{self.control_port}",
        ))  # fmt: skip
        self.start_alerting()
        config = self.folder / "exporter.yml"
        config.write_text(yaml.safe_dump(self.exporter_config()))
        self.spawn("exporter", self.exporter_cmd(
            "serve", f"--web.listen-address=127.0.0.1:{self.port}", f"--config.file={config}",
            "--migrate", "--with-platform-schema",
        ), {**env, "LIQUID_ABT_WEBHOOK_TOKEN": WEBHOOK_TOKEN, "LIQUID_ABT_ADMIN_TOKEN": ADMIN_TOKEN})  # fmt: skip
        wait_for(
            "the exporter answering", lambda: http(f"{self.exporter_url}/-/ready")[0] == 200, 60
        )
        self.spawn("simulator", self.exporter_cmd(
            "simulate", "--backfill=1h", "--follow", "--rate=120", f"--config.file={config}",
        ), env)  # fmt: skip

    def exporter_config(self) -> dict[str, Any]:
        t = self.timing
        receiver: dict[str, Any] = {}
        if self.alertmanager_url:
            receiver |= {"alertmanager_url": self.alertmanager_url, "reconcile_interval": "30s"}
        return {
            "collectors": {"interval": t.interval, "timeout": t.interval},
            "kraken": {"base_url": f"http://127.0.0.1:{self.kraken_port}",
                       "probe_interval": t.interval, "timeout": "2s"},
            "breaker": {"failure_threshold": 2, "recovery_timeout": t.recovery_timeout},
            "incident": {"probation": t.recovery_timeout},
            "receiver": receiver,
        }  # fmt: skip

    def start_alerting(self) -> None:
        prometheus, alertmanager = (
            shutil.which("prometheus"),
            shutil.which("prometheus-alertmanager"),
        )
        rules_dir = _repo_file("alerts")
        if not (prometheus and alertmanager and rules_dir):
            print("prometheus / prometheus-alertmanager not installed: no alerts, so no automatic "
                  "pause; the breaker, metrics and admin API still work")  # fmt: skip
            return
        am_port, prom_port = self.ports["alertmanager"], self.ports["prometheus"]
        token = self.folder / "webhook-token"
        token.write_text(WEBHOOK_TOKEN)
        (self.folder / "alertmanager.yml").write_text(yaml.safe_dump({
            "route": {"receiver": "exporter", "group_by": ["alertname", "exchange"],
                      "group_wait": "1s", "group_interval": "5s", "repeat_interval": "1h"},
            "receivers": [{"name": "exporter", "webhook_configs": [{
                "url": f"{self.exporter_url}/webhook/alertmanager", "send_resolved": True,
                "http_config": {"authorization": {"type": "Bearer", "credentials_file": str(token)}},
            }]}],
        }))  # fmt: skip
        self.spawn("alertmanager", [
            alertmanager, f"--config.file={self.folder / 'alertmanager.yml'}",
            f"--storage.path={self.folder / 'am-data'}", f"--web.listen-address=127.0.0.1:{am_port}",
            "--cluster.listen-address=",
        ])  # fmt: skip
        self.alertmanager_url = f"http://127.0.0.1:{am_port}"
        rules = []
        for path in sorted(rules_dir.glob("*.rules.yml")):
            target = self.folder / path.name
            target.write_text(
                re.sub(r"(\n\s+for:\s*)\S+", rf"\g<1>{self.timing.alert_for}", path.read_text())
            )
            rules.append(str(target))
        (self.folder / "prometheus.yml").write_text(yaml.safe_dump({
            "global": {"scrape_interval": self.timing.interval, "scrape_timeout": self.timing.interval,
                       "evaluation_interval": self.timing.interval},
            "rule_files": rules,
            "scrape_configs": [{"job_name": "liquid-abt-exporter",
                                "static_configs": [{"targets": [f"127.0.0.1:{self.port}"]}]}],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]},
        }))  # fmt: skip
        self.spawn("prometheus", [
            prometheus, f"--config.file={self.folder / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.folder / 'prom-data'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ])  # fmt: skip
        self.prometheus_url = f"http://127.0.0.1:{prom_port}"

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.send_signal(signal.SIGTERM)
        for process in reversed(self.processes):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        if self.database is not None:
            self.database.stop()

    def set_kraken(self, mode: str) -> None:
        status, body = http(f"http://127.0.0.1:{self.control_port}/_control/mode", {"mode": mode})
        if status != 200:
            raise SystemExit(f"cannot switch the Kraken-compatible server to {mode}: {body}")

    def controls(self) -> tuple[str, bool]:
        _, breaker = http(
            f"{self.exporter_url}/api/admin/circuit-breaker/kraken", token=ADMIN_TOKEN
        )
        _, purchases = http(f"{self.exporter_url}/api/admin/purchases/status", token=ADMIN_TOKEN)
        kraken = next(p for p in purchases["exchanges"] if p["exchange"] == "kraken")
        return breaker["state"], bool(kraken["paused"])

    def queued(self, status: str) -> int:
        _, body = http(f"{self.exporter_url}/api/admin/retry-queue?status={status}&limit=1000",
                       token=ADMIN_TOKEN)  # fmt: skip
        return int(body["count"])

    def banner(self) -> str:
        lines = [
            f"exporter        {self.exporter_url}/metrics",
            f"admin API       curl -H 'Authorization: Bearer {ADMIN_TOKEN}' {self.exporter_url}/api/admin/circuit-breaker/status",
            f"Kraken outage   curl -X POST 127.0.0.1:{self.control_port}/_control/mode -d '{{\"mode\": \"down\"}}'",
            f"Kraken back     curl -X POST 127.0.0.1:{self.control_port}/_control/mode -d '{{\"mode\": \"healthy\"}}'",
        ]  # fmt: skip
        if self.prometheus_url:
            lines += [f"Prometheus      {self.prometheus_url}/alerts",
                      f"Alertmanager    {self.alertmanager_url}"]  # fmt: skip
        lines.append(f"logs            {self.folder}/*.log")
        return "\n".join(lines)

    def drill(self) -> None:
        deadline = self.timing.deadline
        took = wait_for("the first healthy probe", lambda: 'liquid_abt_exchange_up{exchange="kraken"} 1.0'
                        in urllib.request.urlopen(f"{self.exporter_url}/metrics").read().decode(), deadline)  # fmt: skip
        print(f"[{took:5.1f}s] Kraken healthy, purchases flowing: {self.controls()}")
        self.set_kraken("down")
        print("Kraken outage injected (connection refused)")
        took = wait_for("the breaker opening", lambda: self.controls()[0] == "OPEN", deadline)
        print(f"[{took:5.1f}s] circuit breaker OPEN")
        if self.prometheus_url:
            took = wait_for("purchases pausing", lambda: self.controls()[1], deadline)
            print(f"[{took:5.1f}s] ExchangeApiDown fired; automatic purchases paused, "
                  f"{self.queued('queued')} failed purchase(s) queued for retry")  # fmt: skip
        self.set_kraken("healthy")
        print("Kraken back")
        took = wait_for("recovery", lambda: self.controls() == ("CLOSED", False), deadline)
        print(f"[{took:5.1f}s] recovery verified: breaker CLOSED, purchases resumed")
        if self.prometheus_url:
            took = wait_for(
                "queued retries being bought", lambda: self.queued("succeeded") > 0, deadline
            )
            print(f"[{took:5.1f}s] queued retries bought again by the platform (the simulator): "
                  f"{self.queued('succeeded')} succeeded, {self.queued('queued')} still queued")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="liquid-abt-exporter demo", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--dir", default=".data/demo", help="working folder, emptied first (default: .data/demo)"
    )
    parser.add_argument("--ephemeral-ports", action="store_true",
                        help="free ports instead of 9898 (exporter), 9988/9989 (Kraken API/control), "
                             "9090 (Prometheus), 9093 (Alertmanager)")  # fmt: skip
    parser.add_argument(
        "--timing",
        choices=sorted(TIMINGS),
        default="human",
        help="human: 5 s intervals to watch; fast: 1 s, for tests",
    )
    parser.add_argument("--drill", action="store_true",
                        help="inject a Kraken outage, wait for pause and verified recovery, then exit")  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    ports = dict(DEFAULT_PORTS)
    if args.ephemeral_ports:
        ports = {name: free_port() for name in ports}
    demo = Demo(Path(args.dir).resolve(), TIMINGS[args.timing], ports)
    stop = False

    def request_stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, request_stop)
    try:
        demo.start()
        print(demo.banner(), flush=True)
        if args.drill:
            demo.drill()
            return 0
        print("Ctrl-C stops everything.", flush=True)
        while not stop:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        demo.stop()
    return 0
