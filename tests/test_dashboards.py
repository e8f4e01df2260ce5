"""The Grafana dashboard: well formed, and every query answered by a real Prometheus.

The live tests run a real Prometheus with the shipped rules, scraping a real exporter that reads
simulated purchases and API calls and probes the Kraken-compatible server.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from exporter.drill.simulate import Simulator, backfill
from tests.conftest import with_database
from tests.harness import (
    REPO,
    RULE_FILES,
    AlertmanagerProcess,
    PrometheusProcess,
    exporter_config,
    start_alertmanager,
    start_exporter,
    start_kraken_server,
    start_prometheus,
    wait_until,
)

GRAFANA = REPO / "grafana"
DASHBOARD_FILES = sorted((GRAFANA / "dashboards").glob("*.json"))
OVERVIEW = GRAFANA / "dashboards" / "liquid-abt-overview.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# Queries that are empty outside an incident (or before the webhook receiver has acted): they
# must still parse and evaluate without error. Keyed by (panel title or "annotation", refId or
# annotation name).
INCIDENT_ONLY = {
    ("Firing alerts", "A"): "ALERTS: only while an alert fires",
    ("Runbook actions and webhook notifications", "A"): "only after the receiver acted",
    ("Runbook actions and webhook notifications", "B"): "only after Alertmanager notified",
    ("annotation", "Remediation actions"): "only after the receiver acted",
    ("annotation", "Circuit breaker transitions"): "only when the breaker changes state",
    ("annotation", "Critical alerts"): "only while a critical alert fires",
    ("annotation", "Purchases paused"): "only while purchases are paused",
}
# What Grafana substitutes; the values are those of a 1s-scrape test Prometheus.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "${__rate_interval}": "1m",
    "$__interval": "15s",
    "${__interval}": "15s",
    "$__range": "5m",
    "${__range}": "5m",
}
EXCHANGES = (".*", "kraken")  # the "All" value and one exchange


def _load(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


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


def concrete(expr: str, exchange: str) -> str:
    """The query as Grafana would send it, with the dashboard's variables filled in."""
    for name, value in {
        **GRAFANA_VARIABLES,
        "${exchange}": exchange,
        "$exchange": exchange,
    }.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"unknown variable left in {expr!r}"
    return expr


DASHBOARD = _load(OVERVIEW)
QUERIES = _queries(DASHBOARD)


# --- Structure ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", DASHBOARD_FILES, ids=lambda p: p.name)
def test_dashboard_is_a_modern_provisionable_dashboard(path: Path) -> None:
    dashboard = _load(path)
    assert dashboard["schemaVersion"] >= 36
    assert dashboard["uid"] and len(dashboard["uid"]) <= 40 and dashboard["title"]
    assert dashboard.get("id") is None, "a provisioned dashboard carries no database id"
    assert "__inputs" not in dashboard, "export 'for sharing externally' breaks provisioning"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"


def test_exchange_variable_lists_the_exchanges_of_the_purchase_metrics() -> None:
    exchange = {v["name"]: v for v in DASHBOARD["templating"]["list"]}["exchange"]
    assert exchange["type"] == "query"
    assert exchange["datasource"] == DATASOURCE
    assert exchange["definition"] == "label_values(liquid_abt_purchases, exchange)"
    assert exchange["query"]["query"] == exchange["definition"]
    assert exchange["includeAll"] and exchange["allValue"] == ".*"


def test_panels_have_unique_ids_and_titles_and_do_not_overlap() -> None:
    panels = _panels(DASHBOARD)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    titles = [p["title"] for p in panels]
    assert len(titles) == len(set(titles)), "duplicate panel titles"
    for panel in panels:
        grid = panel["gridPos"]
        assert set(grid) >= {"h", "w", "x", "y"}, panel["title"]
        assert all(isinstance(grid[k], int) and grid[k] >= 0 for k in "hwxy"), panel["title"]
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
    for a, b in combinations(panels, 2):
        ga, gb = a["gridPos"], b["gridPos"]
        overlap = (
            ga["x"] < gb["x"] + gb["w"]
            and gb["x"] < ga["x"] + ga["w"]
            and ga["y"] < gb["y"] + gb["h"]
            and gb["y"] < ga["y"] + ga["h"]
        )
        assert not overlap, f"{a['title']!r} overlaps {b['title']!r}"


def test_every_query_uses_the_datasource_variable() -> None:
    for panel in _panels(DASHBOARD):
        if panel["type"] == "row":
            assert not panel.get("targets"), panel["title"]
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", DATASOURCE) == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]
    for annotation in DASHBOARD["annotations"]["list"]:
        if not annotation.get("builtIn"):
            assert annotation["datasource"] == DATASOURCE, annotation["name"]


def test_exchange_panels_follow_the_exchange_variable() -> None:
    for title, ref, expr in QUERIES:
        if "exchange" in expr and "ALERTS" not in expr and "actions_total" not in expr:
            for selector in re.findall(r"\b(liquid_abt_\w+|\w+:\w+:\w+)\{([^}]*)\}", expr):
                if "window" in selector[1] or "exchange" in selector[1]:
                    assert 'exchange=~"$exchange"' in selector[1], (title, ref, selector)


def test_failure_ratio_panel_draws_the_runbook_thresholds() -> None:
    panel = next(p for p in _panels(DASHBOARD) if p["title"].startswith("Purchase failure ratio"))
    defaults = panel["fieldConfig"]["defaults"]
    assert [s["value"] for s in defaults["thresholds"]["steps"]] == [None, 0.03, 0.05]
    assert defaults["custom"]["thresholdsStyle"]["mode"] != "off"
    assert defaults["unit"] == "percentunit"
    assert any("liquid_abt_purchase_failure_ratio:15m" in t["expr"] for t in panel["targets"])


def test_incident_only_entries_name_real_queries() -> None:
    keys = {(title, ref) for title, ref, _ in QUERIES}
    assert set(INCIDENT_ONLY) <= keys


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


def test_dashboard_uses_only_documented_metrics_and_shipped_recording_rules() -> None:
    documented, recorded = _documented_metrics(), _recorded()
    for title, ref, expr in QUERIES:
        for name in re.findall(r"(?<![:\w])liquid_abt_\w+", expr):  # not rule names
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert name in documented or base in documented, (title, ref, name)
        for name in re.findall(r"\b\w+:liquid_abt_\w+:\w+\b", expr):
            assert name in recorded, (title, ref, name)


def test_dashboard_charts_what_the_runbooks_watch() -> None:
    exprs = "\n".join(expr for _, _, expr in QUERIES)
    for needle in [
        "liquid_abt_purchase_failure_ratio",
        "liquid_abt_purchase_failures",
        "liquid_abt_purchase_failed_amount_aud",
        "liquid_abt_purchase_affected_tenants",
        "histogram_quantile(0.95",
        "liquid_abt_exchange_request_duration_seconds_bucket",
        "liquid_abt_exchange_requests_total",
        "liquid_abt_exchange_status",
        "liquid_abt_circuit_breaker_state",
        "liquid_abt_purchases_paused",
        "liquid_abt_retry_queue_depth",
        "liquid_abt_retry_queue_oldest_age_seconds",
        "liquid_abt_api_rate_multiplier",
        "liquid_abt_platform_api_mean_response_time_seconds",
        "liquid_abt_platform_api_p95_response_time_seconds",
        'ALERTS{alertstate="firing"}',
        "liquid_abt_collector_duration_seconds",
        "liquid_abt_collector_errors_total",
        "liquid_abt_collector_last_success_timestamp_seconds",
        "liquid_abt_db_up",
    ]:
        assert needle in exprs, needle
    annotations = {a["name"]: a for a in DASHBOARD["annotations"]["list"]}
    assert "increase(liquid_abt_actions_total[1m])" in annotations["Remediation actions"]["expr"]
    assert (
        "liquid_abt_circuit_breaker_transitions_total"
        in (annotations["Circuit breaker transitions"]["expr"])
    )


def test_provisioning_points_grafana_at_prometheus_and_the_dashboards() -> None:
    datasources = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    assert datasources["apiVersion"] == 1
    [prometheus] = datasources["datasources"]
    assert prometheus["type"] == "prometheus" and prometheus["url"].startswith("http")
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/liquid-abt.yml").read_text())
    [provider] = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")


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
    name = f"t_dash_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
    finally:
        await admin.close()
    dsn = with_database(server_dsn, name)
    conn = await asyncpg.connect(dsn)
    try:
        await backfill(conn, Simulator(SEED_MIX, seed=42), seconds=3600, rate_per_minute=60)
    finally:
        await conn.close()
    return name


async def _drop_database(server_dsn: str, name: str) -> None:
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()


def _finite(results: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(r["value"][1])) for r in results)


# An incident that needs no waiting: a critical alert without `for`, so the alert panels and
# annotations have something to show, and Alertmanager something to receive.
INCIDENT_RULES = """
groups:
  - name: dashboard-test
    rules:
      - alert: DashboardTestIncident
        expr: max by (exchange) (liquid_abt_purchases_paused) >= 0
        labels:
          severity: critical
"""
BLACKHOLE = "route:\n  receiver: blackhole\nreceivers:\n  - name: blackhole\n"


@dataclass
class Stack:
    prometheus: PrometheusProcess
    alertmanager: AlertmanagerProcess


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
            yield Stack(prometheus, alertmanager)
    finally:
        asyncio.run(_drop_database(pg_server_dsn, name))


@pytest.fixture
def prometheus(stack: Stack) -> PrometheusProcess:
    return stack.prometheus


@pytest.mark.parametrize(
    ("title", "ref", "expr"), QUERIES, ids=[f"{title}/{ref}" for title, ref, _ in QUERIES]
)
def test_query_parses_and_returns_data(
    prometheus: PrometheusProcess, title: str, ref: str, expr: str
) -> None:
    for exchange in EXCHANGES:
        query = concrete(expr, exchange)
        if (title, ref) in INCIDENT_ONLY:
            prometheus.query(query)  # raises on a parse or evaluation error
        else:
            prometheus.wait_for(query, timeout=30)


def test_exchange_variable_query_finds_kraken(prometheus: PrometheusProcess) -> None:
    values = prometheus.api("label/exchange/values", **{"match[]": "liquid_abt_purchases"})
    assert "kraken" in values


def test_alert_panels_show_a_firing_alert(stack: Stack) -> None:
    alert_queries = [(t, r, e) for t, r, e in QUERIES if "ALERTS" in e]
    assert alert_queries
    for title, ref, expr in alert_queries:
        results = stack.prometheus.wait_for(concrete(expr, ".*"), timeout=30)
        assert any(r["metric"].get("alertname") == "DashboardTestIncident" for r in results), (
            title,
            ref,
            results,
        )
    # And Prometheus delivers it to Alertmanager, as configured by the harness.
    wait_until(
        lambda: any(
            a["labels"]["alertname"] == "DashboardTestIncident" for a in stack.alertmanager.alerts()
        ),
        timeout=60,
        what="DashboardTestIncident in Alertmanager",
        on_timeout=stack.alertmanager.fail,
    )
