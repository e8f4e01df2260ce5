"""Prometheus and Alertmanager (the Debian packages), configured for the exporter under test.

`shortened_rules` copies the shipped rules with every `for:` cut, the expressions untouched;
`webhook_alertmanager_config` routes every alert to the exporters' webhook with bearer auth and the
shipped inhibitions, and nowhere else.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from exporter.database.embedded import free_port

from .process import (
    DEFAULT_TIMEOUT,
    ManagedProcess,
    claim_name,
    find_binary,
    http_request,
    source_root,
)
from .waiting import StackError, wait_until

EXPORTER_JOB = "liquid-abt-exporter"  # the job name the alert rules watch (alerts/README.md)
ALERTMANAGER_BINARIES = ("prometheus-alertmanager", "alertmanager")  # Debian, upstream


def alerts_dir() -> Path:
    """The shipped `alerts/` of the checkout."""
    return source_root() / "alerts"


# The SLO rules (issue 15) judge days of purchases through 5-minute windows that no timer
# scales: in a run of minutes with shortened or scaled timers they only add noise.
SLO_RULES = "slo.rules.yml"


def rule_files(*, slo: bool = True) -> list[Path]:
    """The shipped rule files; `slo=False` leaves out the SLO rules (runs of minutes)."""
    return sorted(p for p in alerts_dir().glob("*.rules.yml") if slo or p.name != SLO_RULES)


def shortened_rules(
    folder: Path, alert_for: str, *, keep_firing_for: str | None = None, say_so: bool = False
) -> list[Path]:
    """Copies of the shipped runbook rules in `folder` with every `for:` set to `alert_for`
    (the SLO rules left out: see SLO_RULES). `keep_firing_for` cuts that too, so that a page
    does not linger minutes after its evidence cleared (the demo, between scenarios); `say_so`
    ends each changed alert's summary and description with what was cut, so that a text such as
    "sustained for 10 minutes" does not mislead whoever reads the page."""
    folder.mkdir(parents=True, exist_ok=True)
    copies = []
    for path in rule_files(slo=False):
        document = yaml.safe_load(path.read_text())
        for group in document["groups"]:
            for rule in group["rules"]:
                _shorten(rule, alert_for, keep_firing_for, say_so)
        target = folder / path.name
        target.write_text(yaml.safe_dump(document, sort_keys=False, width=1000))
        copies.append(target)
    return copies


def _shorten(
    rule: dict[str, Any], alert_for: str, keep_firing_for: str | None, say_so: bool
) -> None:
    changed = []
    for key, value in (("for", alert_for), ("keep_firing_for", keep_firing_for)):
        # An escalation twin's `keep_firing_for: 0s` is the point of the twin: never lengthened.
        if value is None or key not in rule or str(rule[key]) == "0s":
            continue
        if str(rule[key]) != value:
            changed.append(f"{key} {value} instead of {rule[key]}")
        rule[key] = value
    # A copy: rules merged from one anchor (a page and its escalation twin) share the mapping.
    annotations = dict(rule.get("annotations", {}))
    if say_so and changed and "alert" in rule:
        for key in ("summary", "description"):
            if key in annotations:
                annotations[key] = f"{annotations[key].rstrip()} (demo: {', '.join(changed)})"
        rule["annotations"] = annotations


def webhook_alertmanager_config(
    exporter_urls: Sequence[str],
    token_file: Path,
    *,
    group_interval: str = "1s",
    repeat_interval: str = "1m",
    send_resolved: bool = True,
) -> str:
    """The shipped webhook receiver and inhibitions, pointed at `exporter_urls`; the human
    receivers (pager, chat, mail) are left out so nothing tries to reach the outside."""
    shipped = yaml.safe_load((alerts_dir() / "alertmanager.yml").read_text())
    webhook = next(r for r in shipped["receivers"] if r["name"] == EXPORTER_JOB)
    template = webhook["webhook_configs"][0]
    configs = [
        {
            **template,
            "url": f"{url}/webhook/alertmanager",
            "send_resolved": send_resolved,
            "http_config": {
                "authorization": {"type": "Bearer", "credentials_file": str(token_file)}
            },
        }
        for url in exporter_urls
    ]
    return yaml.safe_dump({
        "route": {
            "receiver": EXPORTER_JOB, "group_by": ["alertname", "exchange"], "group_wait": "1s",
            "group_interval": group_interval, "repeat_interval": repeat_interval,
        },
        "inhibit_rules": shipped["inhibit_rules"],
        "receivers": [{"name": EXPORTER_JOB, "webhook_configs": configs}],
    })  # fmt: skip


# --- Prometheus ------------------------------------------------------------------------------


class PrometheusQueryError(StackError):
    """Prometheus rejected a query (parse error, bad data) or did not answer."""


class PrometheusProcess(ManagedProcess):
    def api(self, path: str, **params: str) -> Any:
        """`data` of a successful /api/v1 answer; PrometheusQueryError otherwise."""
        query = urllib.parse.urlencode(params)
        status, text = http_request(f"{self.url}/api/v1/{path}" + (f"?{query}" if query else ""))
        try:
            body = json.loads(text)
        except ValueError:
            raise PrometheusQueryError(
                f"/api/v1/{path} {params}: HTTP {status}: {text[:500]}"
            ) from None
        if body.get("status") != "success":
            raise PrometheusQueryError(
                f"/api/v1/{path} {params}: {body.get('errorType')}: {body.get('error')}"
            )
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query: the result list (`metric` and `value` of each series).

        A scalar or string result comes back as one entry without labels.
        """
        params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
        data = self.api("query", **params)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def wait_for(
        self,
        expr: str,
        condition: Callable[[list[dict[str, Any]]], bool] = bool,
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> list[dict[str, Any]]:
        """Poll `expr` until its result satisfies `condition` (default: at least one series)."""
        results: list[dict[str, Any]] = []

        def check() -> bool:
            nonlocal results
            results = self.query(expr)
            return condition(results)

        wait_until(
            check, timeout=timeout, what=f"query {expr!r} (last result {results})",
            on_timeout=self.fail,
        )  # fmt: skip
        return results

    def firing(self) -> set[str]:
        """Names of the alerts firing now (past their `for`)."""
        return {a["labels"]["alertname"] for a in self.alerts() if a["state"] == "firing"}

    def targets(self) -> list[dict[str, Any]]:
        return list(self.api("targets")["activeTargets"])

    def alerts(self) -> list[dict[str, Any]]:
        return list(self.api("alerts")["alerts"])


def prometheus_config(
    scrape_targets: Sequence[str],
    rule_files: Sequence[Path] = (),
    alertmanager_urls: Sequence[str] = (),
    scrape_interval: str = "1s",
    evaluation_interval: str = "1s",
    external_labels: Mapping[str, str] | None = None,
    job_name: str = EXPORTER_JOB,
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "global": {
            "scrape_interval": scrape_interval,
            # Must not exceed the interval (the default 10s would, at 1s).
            "scrape_timeout": scrape_interval,
            "evaluation_interval": evaluation_interval,
        },
        "rule_files": [str(Path(p).resolve()) for p in rule_files],
        "scrape_configs": [
            {"job_name": job_name, "static_configs": [{"targets": list(scrape_targets)}]}
        ],
    }
    if external_labels:
        config["global"]["external_labels"] = dict(external_labels)
    if alertmanager_urls:
        config["alerting"] = {"alertmanagers": [_alertmanager_target(u) for u in alertmanager_urls]}
    return config


def _alertmanager_target(url: str) -> dict[str, Any]:
    parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    target: dict[str, Any] = {
        "scheme": parts.scheme,
        "static_configs": [{"targets": [parts.netloc]}],
    }
    if parts.path.strip("/"):
        target["path_prefix"] = parts.path
    return target


def start_prometheus(
    folder: Path,
    scrape_targets: Sequence[str],
    rule_files: Sequence[Path] = (),
    alertmanager_urls: Sequence[str] = (),
    scrape_interval: str = "1s",
    evaluation_interval: str = "1s",
    external_labels: Mapping[str, str] | None = None,
    *,
    job_name: str = EXPORTER_JOB,
    port: int | None = None,
    ready_timeout: float = DEFAULT_TIMEOUT,
) -> PrometheusProcess:
    """A Prometheus scraping `scrape_targets` ("host:port") as `job_name`, ready to query.

    `rule_files` are loaded as they are (`rule_files()`: the shipped ones; `shortened_rules()`:
    faster `for:`); `alertmanager_urls` ("http://127.0.0.1:9093") receive its alerts.
    """
    binary = find_binary("prometheus")
    name = claim_name(Path(folder), "prometheus")
    workdir = Path(folder) / name
    config = prometheus_config(
        scrape_targets, rule_files, alertmanager_urls, scrape_interval, evaluation_interval,
        external_labels, job_name,
    )  # fmt: skip
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    port = port or free_port()
    process = PrometheusProcess(name, [
        binary, f"--config.file={workdir / 'prometheus.yml'}",
        f"--storage.tsdb.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
        "--web.enable-lifecycle",  # POST /-/reload for tests that change the rules
        "--log.level=info",
    ], workdir, url=f"http://127.0.0.1:{port}")  # fmt: skip
    return process.ready_or_stop(lambda: process.wait_http("/-/ready", timeout=ready_timeout))


# --- Alertmanager ----------------------------------------------------------------------------


class AlertmanagerProcess(ManagedProcess):
    cluster_address: str | None = None  # host:port peers use to reach this instance

    def _json(self, path: str, body: Any = None) -> Any:
        status, text = http_request(f"{self.url}{path}", body)
        if status >= 300:
            self.fail(f"{path}: HTTP {status}: {text[:500]}")
        return json.loads(text) if text.strip() else None

    def alerts(self) -> list[dict[str, Any]]:
        """The alerts Alertmanager holds (API v2)."""
        return list(self._json("/api/v2/alerts"))

    def post_alerts(self, alerts: list[dict[str, Any]]) -> None:
        """Send alerts as Prometheus would (`labels`, `annotations`, `startsAt`, `endsAt`)."""
        self._json("/api/v2/alerts", alerts)

    def status(self) -> dict[str, Any]:
        return dict(self._json("/api/v2/status"))


def start_alertmanager(
    folder: Path,
    config_yaml: str,
    peers: Sequence[str] = (),
    cluster_listen: str | None = None,
    *,
    port: int | None = None,
    ready_timeout: float = DEFAULT_TIMEOUT,
    extra_args: Sequence[str] = (),
) -> AlertmanagerProcess:
    """An Alertmanager with `config_yaml`, ready to receive alerts.

    Without `cluster_listen` clustering is off (a single instance); for an HA pair pass
    `cluster_listen="127.0.0.1:<free port>"` to each and the other's address in `peers`.
    """
    binary = find_binary(*ALERTMANAGER_BINARIES)
    name = claim_name(Path(folder), "alertmanager")
    workdir = Path(folder) / name
    (workdir / "alertmanager.yml").write_text(config_yaml)
    port = port or free_port()
    process = AlertmanagerProcess(name, [
        binary, f"--config.file={workdir / 'alertmanager.yml'}",
        f"--storage.path={workdir / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
        f"--cluster.listen-address={cluster_listen or ''}",  # empty: no clustering
        *(f"--cluster.peer={peer}" for peer in peers), *extra_args,
    ], workdir, url=f"http://127.0.0.1:{port}")  # fmt: skip
    process.cluster_address = cluster_listen
    process.stop_timeout = 10.0  # a clustered instance may wait for its departed peers
    return process.ready_or_stop(lambda: process.wait_http("/-/ready", timeout=ready_timeout))
