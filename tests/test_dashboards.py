"""The Grafana dashboards: well formed, generated from grafana/generate.py where they say so,
linked to the shipped runbooks, and every query answered by a real Prometheus.

The generic checks run over every grafana/dashboards/*.json. The live tests run a real Prometheus
with the shipped rules, scraping a real exporter that reads simulated purchases and API calls
and probes the Kraken-compatible server; the metric names the dashboards use are checked against
that exporter's own /metrics.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from liquid_abt_drill.simulate import Simulator, backfill
from tests.conftest import create_database, drop_database, with_database
from tests.harness import (
    EXPORTER_JOB,
    REPO,
    RULE_FILES,
    AlertmanagerProcess,
    ExporterProcess,
    PrometheusProcess,
    exporter_config,
    start_alertmanager,
    start_exporter,
    start_kraken_server,
    start_prometheus,
    wait_until,
)
from tests.helpers import parse_samples
from tests.rules.test_runbooks import PAGES, RUNBOOK_BASE_DEFAULT, RUNBOOKS, github_anchors

GRAFANA = REPO / "grafana"
DASHBOARD_FILES = sorted((GRAFANA / "dashboards").glob("*.json"))
INCIDENT = GRAFANA / "dashboards" / "liquid-abt-incident.json"
EXPORTER = GRAFANA / "dashboards" / "liquid-abt-exporter.json"
GENERATED = (INCIDENT, EXPORTER)  # by grafana/generate.py
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# Queries that are empty outside an incident (or before the exporter acted): they must still
# parse and evaluate without error. Keyed by (file name, panel title or "annotation", refId or
# annotation name).
INCIDENT_ONLY = {
    ("liquid-abt-incident.json", "Runbook actions", "A"): "only after an action",
    ("liquid-abt-incident.json", "Circuit breaker transitions", "A"): "only on a transition",
    ("liquid-abt-incident.json", "annotation", "Runbook actions"): "only after an action",
    ("liquid-abt-incident.json", "annotation", "Circuit breaker transitions"): "on a transition",
    ("liquid-abt-incident.json", "annotation", "Incident down"): "only while purchases stopped",
    ("liquid-abt-incident.json", "Age of the newest verification", "A"): "only with a secondary",
    ("liquid-abt-incident.json", "Customer notices", "A"): "only while notices wait",
    ("liquid-abt-incident.json", "Customer notices", "C"): "only once notices are planned",
    ("liquid-abt-incident.json", "Customer notices", "D"): "only with a webhook configured",
}
# What Grafana substitutes; the values are those of a 1s-scrape test Prometheus.
GRAFANA_VARIABLES = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "5m",
}
# Names a query may use besides the exporter's metrics and the shipped recording rules.
PROMETHEUS_OWN = {"ALERTS", "ALERTS_FOR_STATE", "up"}


def _load(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def _panel(dashboard: dict[str, Any], title: str) -> dict[str, Any]:
    [panel] = [p for p in _panels(dashboard) if p["title"] == title]
    return panel


def _queries(dashboard: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(panel title or "annotation", refId or annotation name, expr) of every PromQL query."""
    queries = [
        (panel["title"], target["refId"], target["expr"])
        for panel in _panels(dashboard)
        for target in panel.get("targets", [])
    ]
    queries += [
        ("annotation", a["name"], a["expr"])
        for a in dashboard["annotations"]["list"]
        if not a.get("builtIn")
    ]
    return queries


def _variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


DASHBOARDS = {path.name: _load(path) for path in DASHBOARD_FILES}
QUERIES = [
    (name, title, ref, expr)
    for name, dashboard in DASHBOARDS.items()
    for title, ref, expr in _queries(dashboard)
]


def _fixed_value(variable: dict[str, Any]) -> str | None:
    """The value of a variable that is not a query: custom, constant, interval, textbox."""
    if variable["type"] in ("query", "datasource"):
        return None
    current = variable.get("current", {}).get("value")
    if isinstance(current, list):
        current = current[0] if current else None
    return str(current or variable.get("query", "")).split(",")[0]


def concrete(dashboard: dict[str, Any], expr: str, selected: dict[str, str]) -> str:
    """The query as Grafana would send it: `selected` values for job, instance and exchange,
    the current value of any other non-query variable, Grafana's own intervals."""
    values = dict(GRAFANA_VARIABLES)
    for name, variable in _variables(dashboard).items():
        fixed = _fixed_value(variable)
        if fixed is not None:
            values[name] = fixed
    values.update(selected)
    for name in sorted(values, key=len, reverse=True):  # $__interval after $__interval_ms
        expr = expr.replace("${" + name + "}", values[name]).replace("$" + name, values[name])
    assert "$" not in expr, f"unknown variable left in {expr!r}"
    return expr


# --- Structure, every dashboard ----------------------------------------------------------------


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_dashboard_is_a_modern_provisionable_dashboard(path: Path) -> None:
    dashboard = _load(path)
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["uid"] and len(dashboard["uid"]) <= 40 and dashboard["title"]
    assert dashboard.get("id") is None, "a provisioned dashboard carries no database id"
    assert "__inputs" not in dashboard, "export 'for sharing externally' breaks provisioning"
    assert "liquid-abt" in dashboard["tags"], "the dashboards link each other by this tag"
    variables = _variables(dashboard)
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"


def test_dashboards_have_distinct_uids_and_titles() -> None:
    uids = [d["uid"] for d in DASHBOARDS.values()]
    titles = [d["title"] for d in DASHBOARDS.values()]
    assert len(set(uids)) == len(uids) and len(set(titles)) == len(titles)


def _overlap(a: dict[str, int], b: dict[str, int]) -> bool:
    return (
        a["x"] < b["x"] + b["w"]
        and b["x"] < a["x"] + a["w"]
        and a["y"] < b["y"] + b["h"]
        and b["y"] < a["y"] + a["h"]
    )


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_panels_have_unique_ids_and_titles_and_do_not_overlap(path: Path) -> None:
    dashboard = _load(path)
    panels = _panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    titles = [p["title"] for p in panels]
    assert len(titles) == len(set(titles)), "duplicate panel titles"
    for panel in panels:
        grid = panel["gridPos"]
        assert set(grid) >= {"h", "w", "x", "y"}, panel["title"]
        assert all(isinstance(grid[k], int) and grid[k] >= 0 for k in "hwxy"), panel["title"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
    # The panels of a collapsed row lie under it only while it is open: compare them among
    # themselves, the visible panels among themselves.
    layers = [dashboard["panels"]] + [p["panels"] for p in dashboard["panels"] if p.get("panels")]
    for layer in layers:
        for a, b in combinations(layer, 2):
            assert not _overlap(a["gridPos"], b["gridPos"]), f"{a['title']!r} / {b['title']!r}"


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_every_query_uses_the_datasource_variable(path: Path) -> None:
    dashboard = _load(path)
    for panel in _panels(dashboard):
        if panel["type"] in ("row", "text"):
            assert not panel.get("targets"), panel["title"]
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", DATASOURCE) == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]
    for annotation in dashboard["annotations"]["list"]:
        if not annotation.get("builtIn"):
            assert annotation["datasource"] == DATASOURCE, annotation["name"]


QUERY_IDS = [f"{Path(name).stem}/{title}/{ref}" for name, title, ref, _ in QUERIES]


@pytest.mark.parametrize(("name", "title", "ref", "expr"), QUERIES, ids=QUERY_IDS)
def test_no_query_hard_codes_the_job(name: str, title: str, ref: str, expr: str) -> None:
    """The job the exporter is scraped as is the deployment's choice: a variable."""
    assert not re.search(r"\bjob\s*(=|!=|=~)\s*\"(?!\$job\")", expr), (name, title, ref)
    for selector in re.findall(r"(?<![\w:])up\{([^}]*)\}", expr):
        assert 'job=~"$job"' in selector, (name, title, ref)


def _documented_metrics() -> set[str]:
    return set(re.findall(r"`(liquid_abt_\w+)`", (REPO / "docs" / "metrics.md").read_text()))


def _recorded() -> set[str]:
    return {
        rule["record"]
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    }


def test_dashboards_use_only_documented_metrics_and_shipped_recording_rules() -> None:
    documented, recorded = _documented_metrics(), _recorded()
    for name, title, ref, expr in QUERIES:
        for metric in re.findall(r"(?<![:\w])liquid_abt_\w+", expr):  # not rule names
            base = re.sub(r"_(bucket|sum|count)$", "", metric)
            assert metric in documented or base in documented, (name, title, ref, metric)
        for record in re.findall(r"\b\w+:liquid_abt_\w+:\w+\b", expr):
            assert record in recorded, (name, title, ref, record)


def _links(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = [link for link in dashboard.get("links", []) if link.get("url")]
    for panel in _panels(dashboard):
        found.extend(panel.get("links", []))
    return found


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_runbook_links_land_on_a_heading_of_a_shipped_runbook(path: Path) -> None:
    """The alerts' base (or the dashboard's `runbook_base`, set to it), a shipped page, a
    heading that exists there."""
    dashboard = _load(path)
    base = _variables(dashboard).get("runbook_base")
    if base is not None:
        assert base["type"] == "constant" and base["query"] == RUNBOOK_BASE_DEFAULT
    for link in _links(dashboard):
        url = link["url"]
        if ".md" not in url and "runbook" not in url.lower():
            continue
        prefix = next(
            (p for p in ("${runbook_base}/", RUNBOOK_BASE_DEFAULT + "/") if url.startswith(p)),
            None,
        )
        assert prefix, f"{link['title']}: {url} is not under the runbooks' base"
        page, _, anchor = url.removeprefix(prefix).partition("#")
        assert page in PAGES, url
        if anchor:
            assert anchor in github_anchors((RUNBOOKS / page).read_text()), url


def test_generated_dashboards_are_the_committed_ones() -> None:
    result = subprocess.run(
        [sys.executable, str(GRAFANA / "generate.py"), "--check"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, "run `make dashboards` and commit:\n" + result.stderr


def test_provisioning_points_grafana_at_prometheus_and_the_dashboards() -> None:
    datasources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    assert datasources["apiVersion"] == 1
    [prometheus] = datasources["datasources"]
    assert prometheus["type"] == "prometheus" and prometheus["url"].startswith("http")
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/liquid-abt.yml").read_text())
    [provider] = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    home = compose["services"]["grafana"]["environment"][
        "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"
    ]
    assert home == f"{provider['options']['path']}/{INCIDENT.name}"


# --- The generated dashboards: what they promise -----------------------------------------------

INCIDENT_DASHBOARD = _load(INCIDENT)
EXPORTER_DASHBOARD = _load(EXPORTER)


@pytest.mark.parametrize("path", GENERATED, ids=lambda p: p.name)
def test_job_and_instance_come_from_variables(path: Path) -> None:
    dashboard = _load(path)
    variables = _variables(dashboard)
    assert variables["job"]["definition"] == "label_values(liquid_abt_build_info, job)"
    assert variables["instance"]["definition"] == (
        'label_values(liquid_abt_build_info{job=~"$job"}, instance)'
    )
    for name in ("job", "instance"):
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*"
    assert (
        'up{job=~"$job", instance=~"$instance"}'
        in (_panel(dashboard, "Exporters up")["targets"][0]["expr"])
    )
    # Every raw selector reads the selected scrape; recording rules are across replicas.
    for title, ref, expr in _queries(dashboard):
        for metric, matchers in re.findall(r"(?<![\w:])([a-z_]+)\{([^}]*)\}", expr):
            if metric not in PROMETHEUS_OWN - {"up"}:
                assert 'job=~"$job"' in matchers, (title, ref, metric)
                assert 'instance=~"$instance"' in matchers, (title, ref, metric)


def test_exchange_variable_lists_the_guarded_exchanges() -> None:
    exchange = _variables(INCIDENT_DASHBOARD)["exchange"]
    assert exchange["type"] == "query" and exchange["datasource"] == DATASOURCE
    assert exchange["definition"] == (
        'label_values(liquid_abt_circuit_breaker_state{job=~"$job"}, exchange)'
    )
    assert exchange["query"]["query"] == exchange["definition"]
    assert exchange["includeAll"] and exchange["allValue"] == ".*" and exchange["multi"]


def test_exchange_panels_follow_the_exchange_variable() -> None:
    for title, ref, expr in _queries(INCIDENT_DASHBOARD):
        if "ALERTS" in expr:
            continue
        for selector in re.findall(r"\b(liquid_abt_\w+|\w+:\w+:\w+)\{([^}]*)\}", expr):
            if "window" in selector[1] or "exchange" in selector[1]:
                assert 'exchange=~"$exchange"' in selector[1], (title, ref, selector)


def _top_block(dashboard: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The first row and the panels under it, up to the next row."""
    first, *rest = dashboard["panels"]
    block = []
    for panel in rest:
        if panel["type"] == "row":
            break
        block.append(panel)
    return first, block


def test_the_top_is_per_exchange_and_fits_on_one_screen() -> None:
    """What an on-call engineer asks first, per exchange, without scrolling (issue 13)."""
    row, block = _top_block(INCIDENT_DASHBOARD)
    assert row["type"] == "row" and row["gridPos"]["y"] == 0
    assert row["repeat"] == "exchange" and "$exchange" in row["title"]
    assert {p["title"] for p in block} >= {
        "Purchases flowing (5m)",
        "Automatic purchases",
        "Circuit breaker",
        "Incident",
        "Cause",
        "Firing alerts",
    }
    bottom = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in block)
    # A 1080p browser shows about 22 grid units under Grafana's header: two exchanges fit.
    assert bottom <= 10, bottom
    exprs = "\n".join(t["expr"] for p in block for t in p["targets"])
    for metric in [
        "liquid_abt_incident_phase",
        "liquid_abt_incident_cause",
        "liquid_abt_circuit_breaker_state",
        "liquid_abt_purchases_paused",
        "liquid_abt_manual_hold",
        'liquid_abt_purchases{job=~"$job", instance=~"$instance", exchange=~"$exchange", '
        'window="5m", status="completed"}',
        'ALERTS{alertstate="firing", exchange=~"$exchange|"}',
    ]:
        assert metric in exprs, metric


def test_sections_follow_the_order_of_an_incident() -> None:
    rows = [p["title"] for p in INCIDENT_DASHBOARD["panels"] if p["type"] == "row"]
    order = ["right now", "automation", "Purchases", "Exchange API"]
    positions = [next(i for i, t in enumerate(rows) if word in t) for word in order]
    assert positions == sorted(positions), rows


def test_failure_ratio_panels_draw_the_runbook_thresholds() -> None:
    for title in ("Failure ratio by window", "Failure ratio (15m)"):
        defaults = _panel(INCIDENT_DASHBOARD, title)["fieldConfig"]["defaults"]
        assert [s["value"] for s in defaults["thresholds"]["steps"]] == [None, 0.03, 0.05]
        assert defaults["unit"] == "percentunit"
    panel = _panel(INCIDENT_DASHBOARD, "Failure ratio by window")
    assert panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] != "off"
    exprs = [t["expr"] for t in panel["targets"]]
    assert any("exchange:liquid_abt_purchase_failure_ratio:15m" in e for e in exprs)
    assert any("exchange:liquid_abt_purchase_unhandled_failure_ratio:15m" in e for e in exprs)


def _exprs(dashboard: dict[str, Any]) -> str:
    return "\n".join(expr for _, _, expr in _queries(dashboard))


def test_incident_dashboard_charts_what_the_runbooks_watch() -> None:
    exprs = _exprs(INCIDENT_DASHBOARD)
    for needle in [
        "liquid_abt_purchase_failure_ratio",
        "liquid_abt_purchase_failures",
        "liquid_abt_purchase_failed_amount_aud",
        "liquid_abt_purchase_affected_tenants",
        "liquid_abt_purchase_handled_failures",
        "histogram_quantile(0.95",
        "liquid_abt_exchange_request_duration_seconds_bucket",
        "liquid_abt_exchange_requests_total",
        "liquid_abt_exchange_status",
        "liquid_abt_exchange_consecutive_failures",
        "liquid_abt_exchange_up",
        'liquid_abt_actions_total{job=~"$job", instance=~"$instance", action="verify_recovery"}',
        "liquid_abt_retry_queue_depth",
        "liquid_abt_retry_queue_oldest_age_seconds",
        "liquid_abt_webhook_dead_letters_total",
        "liquid_abt_api_rate_multiplier",
        "liquid_abt_platform_api_mean_response_time_seconds",
        "liquid_abt_platform_api_p95_response_time_seconds",
    ]:
        assert needle in exprs, needle
    annotations = {a["name"]: a for a in INCIDENT_DASHBOARD["annotations"]["list"]}
    assert "liquid_abt_actions_total" in annotations["Runbook actions"]["expr"]
    assert (
        "liquid_abt_circuit_breaker_transitions_total"
        in (annotations["Circuit breaker transitions"]["expr"])
    )


def test_exporter_dashboard_charts_the_exporter_itself() -> None:
    exprs = _exprs(EXPORTER_DASHBOARD)
    for needle in [
        # collectors and database
        "liquid_abt_collector_duration_seconds",
        "liquid_abt_collector_errors_total",
        "liquid_abt_collector_last_success_timestamp_seconds",
        "liquid_abt_collector_snapshot_age_seconds",
        "liquid_abt_db_up",
        # webhook receiver and worker
        "liquid_abt_webhook_notifications_total",
        "liquid_abt_webhook_refused_alerts_total",
        "liquid_abt_webhook_unprocessed_notifications",
        "liquid_abt_webhook_dead_letters_total",
        "liquid_abt_actions_total",
        # process, build, reload
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
        "python_gc_collections_total",
        "liquid_abt_build_info",
        "liquid_abt_config_last_reload_successful",
        "liquid_abt_config_last_reload_success_timestamp_seconds",
        'ALERTS{alertstate="firing", exchange=""}',
    ]:
        assert needle in exprs, needle


# Served families no generated dashboard charts, and why.
NOT_CHARTED = {
    "liquid_abt_circuit_breaker_failures": "the same evidence as liquid_abt_exchange_failing_replicas",
}


def _served_families(exposition: str) -> set[str]:
    return {re.sub(r"_(bucket|sum|count)$", "", name) for name, _ in parse_samples(exposition)}


# --- Every query against a real Prometheus ----------------------------------------------------

# Failures of every kind the runbooks name, enough that each window has some.
SEED_MIX = {
    "exchange_unavailable": 0.04,
    "rate_limited": 0.02,
    "network_timeout": 0.02,
    "insufficient_funds": 0.01,
    "auth": 0.01,
}


async def _create_database(server_dsn: str, template: str) -> str:
    name = await create_database(server_dsn, template, "t_dash")
    dsn = with_database(server_dsn, name)
    conn = await asyncpg.connect(dsn)
    try:
        await backfill(conn, Simulator(SEED_MIX, seed=42), seconds=3600, rate_per_minute=60)
    finally:
        await conn.close()
    return name


def _finite(results: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(r["value"][1])) for r in results)


# Two alerts that need no waiting (no `for`), so the alert panels and annotations have something
# to show, and Alertmanager something to receive: one about the exchange, one about the exporter.
INCIDENT_RULES = """
groups:
  - name: dashboard-test
    rules:
      - alert: DashboardTestIncident
        expr: max by (exchange) (liquid_abt_purchases_paused) >= 0
        labels:
          severity: critical
      - alert: DashboardTestExporterIncident
        expr: min(liquid_abt_db_up) >= 0
        labels:
          severity: warning
"""
TEST_ALERTS = {"DashboardTestIncident", "DashboardTestExporterIncident"}
BLACKHOLE = "route:\n  receiver: blackhole\nreceivers:\n  - name: blackhole\n"


@dataclass
class Stack:
    prometheus: PrometheusProcess
    alertmanager: AlertmanagerProcess
    exporter: ExporterProcess
    exposition: str

    def selections(self) -> list[dict[str, str]]:
        """The "All" values, and one job, instance and exchange."""
        return [
            {"job": ".*", "instance": ".*", "exchange": ".*"},
            {"job": EXPORTER_JOB, "instance": self.exporter.target, "exchange": "kraken"},
        ]


@pytest.fixture(scope="module")
def stack(
    pg_server_dsn: str, template_db: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """Prometheus with the shipped rules, scraping an exporter over seeded data and a live probe."""
    tmp = tmp_path_factory.mktemp("dashboards")
    (tmp / "incident.rules.yml").write_text(INCIDENT_RULES)
    name = asyncio.run(_create_database(pg_server_dsn, template_db))
    try:
        with (
            start_kraken_server(tmp) as kraken,
            start_exporter(
                tmp,
                database_url=with_database(pg_server_dsn, name),
                config_yaml=exporter_config(kraken.url),
            ) as exporter,
            start_alertmanager(tmp, BLACKHOLE) as alertmanager,
            start_prometheus(
                tmp,
                [exporter.target],
                [*RULE_FILES, tmp / "incident.rules.yml"],
                alertmanager_urls=[alertmanager.url],
            ) as prometheus,
        ):
            # Rates need two scrapes, recording rules an evaluation after them.
            prometheus.wait_for(
                "histogram_quantile(0.5, sum by (le) "
                "(rate(liquid_abt_exchange_request_duration_seconds_bucket[1m])))",
                _finite,
            )
            prometheus.wait_for("exchange:liquid_abt_exchange_request_duration_seconds:mean5m")
            prometheus.wait_for(
                'exchange:liquid_abt_purchase_failure_ratio:15m{exchange="kraken"} > 0'
            )
            yield Stack(prometheus, alertmanager, exporter, exporter.metrics())
    finally:
        asyncio.run(drop_database(pg_server_dsn, name))


@pytest.fixture
def prometheus(stack: Stack) -> PrometheusProcess:
    return stack.prometheus


@pytest.mark.parametrize(("name", "title", "ref", "expr"), QUERIES, ids=QUERY_IDS)
def test_query_parses_and_returns_data(
    stack: Stack, name: str, title: str, ref: str, expr: str
) -> None:
    for selected in stack.selections():
        query = concrete(DASHBOARDS[name], expr, selected)
        if (name, title, ref) in INCIDENT_ONLY:
            stack.prometheus.query(query)  # raises on a parse or evaluation error
        else:
            stack.prometheus.wait_for(query, timeout=30)


def test_incident_only_entries_name_real_queries() -> None:
    keys = {(name, title, ref) for name, title, ref, _ in QUERIES}
    assert set(INCIDENT_ONLY) <= keys


def test_queries_read_only_what_the_exporter_serves(stack: Stack) -> None:
    """Every name a query selects is on the exporter's /metrics, a shipped recording rule, or
    Prometheus's own (ALERTS, up): a renamed metric fails here, not on a dashboard at 3 a.m."""
    served = {name for name, _ in parse_samples(stack.exposition)}
    known = served | _recorded() | PROMETHEUS_OWN
    for name, title, ref, expr in QUERIES:
        for metric in re.findall(r"(?<![\w:])([A-Za-z_:][\w:]*)\s*[{\[]", expr):
            assert metric in known, (name, title, ref, metric)


def test_every_served_family_is_charted(stack: Stack) -> None:
    families = {f for f in _served_families(stack.exposition) if f.startswith("liquid_abt_")}
    charted = _exprs(INCIDENT_DASHBOARD) + _exprs(EXPORTER_DASHBOARD)
    missing = {f for f in families - set(NOT_CHARTED) if f not in charted}
    assert not missing, f"served but on no dashboard: {sorted(missing)}"
    assert set(NOT_CHARTED) <= families


def test_exchange_variable_query_finds_kraken(prometheus: PrometheusProcess) -> None:
    match = 'liquid_abt_circuit_breaker_state{job=~".*"}'
    assert "kraken" in prometheus.api("label/exchange/values", **{"match[]": match})
    assert EXPORTER_JOB in prometheus.api(
        "label/job/values", **{"match[]": "liquid_abt_build_info"}
    )


def _state_panels() -> list[tuple[str, dict[str, Any]]]:
    return [
        (name, panel)
        for name in (INCIDENT.name, EXPORTER.name)
        for panel in _panels(DASHBOARDS[name])
        if panel["type"] in ("stat", "state-timeline")
        and panel["fieldConfig"]["defaults"].get("mappings")
        and panel["fieldConfig"]["defaults"].get("unit", "short") == "short"
        and not panel["fieldConfig"]["overrides"]
    ]


STATE_PANELS = _state_panels()


@pytest.mark.parametrize(
    ("name", "panel"), STATE_PANELS, ids=[f"{Path(n).stem}/{p['title']}" for n, p in STATE_PANELS]
)
def test_state_panels_show_a_named_state(stack: Stack, name: str, panel: dict[str, Any]) -> None:
    """The numbers the state encodings compute are ones the value mappings name."""
    [mapping] = panel["fieldConfig"]["defaults"]["mappings"]
    for target in panel["targets"]:
        for selected in stack.selections():
            query = concrete(DASHBOARDS[name], target["expr"], selected)
            for result in stack.prometheus.wait_for(query, timeout=30):
                value = float(result["value"][1])
                assert f"{value:g}" in mapping["options"], (panel["title"], query, value)


def test_alert_panels_show_a_firing_alert(stack: Stack) -> None:
    alert_queries = [(n, t, r, e) for n, t, r, e in QUERIES if "ALERTS" in e]
    assert alert_queries
    for name, title, ref, expr in alert_queries:
        for selected in stack.selections():
            results = stack.prometheus.wait_for(
                concrete(DASHBOARDS[name], expr, selected), timeout=30
            )
            assert {r["metric"].get("alertname") for r in results} & TEST_ALERTS, (
                name,
                title,
                ref,
                results,
            )
    # The exchange's table shows the exporter's alerts too; the exporter's only its own.
    top = concrete(
        INCIDENT_DASHBOARD,
        _panel(INCIDENT_DASHBOARD, "Firing alerts")["targets"][0]["expr"],
        stack.selections()[1],
    )
    names = {r["metric"]["alertname"] for r in stack.prometheus.query(top)}
    assert names >= TEST_ALERTS
    own = concrete(
        EXPORTER_DASHBOARD,
        _panel(EXPORTER_DASHBOARD, "Firing alerts (exporter)")["targets"][0]["expr"],
        stack.selections()[1],
    )
    assert "DashboardTestIncident" not in {
        r["metric"]["alertname"] for r in stack.prometheus.query(own)
    }
    # And Prometheus delivers them to Alertmanager, as configured by the harness.
    wait_until(
        lambda: any(
            a["labels"]["alertname"] == "DashboardTestIncident" for a in stack.alertmanager.alerts()
        ),
        timeout=60,
        what="DashboardTestIncident in Alertmanager",
        on_timeout=stack.alertmanager.fail,
    )
