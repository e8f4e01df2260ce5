"""The SLO dashboard (grafana/dashboards/liquid-abt-slo.json): a row per exchange with the
objective, the error budget remaining and the burn rates, every query answered by a real
Prometheus that loads the shipped rules (alerts/slo.rules.yml among them) and scrapes a real
exporter over simulated purchases.

The checks every dashboard shares (provisionable, datasource variable, runbook links, every query
answering) are in tests/test_dashboards.py, which runs them over every file of grafana/dashboards/;
here: what the SLO rows show, for the right exchange, with the values the SLO rules give.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections.abc import Iterator
from itertools import combinations
from typing import Any

import asyncpg
import pytest
import yaml

from exporter.slo import ALERTS
from liquid_abt_drill.simulate import Simulator, backfill
from tests.conftest import create_database, drop_database, with_database
from tests.harness import (
    REPO,
    RULE_FILES,
    PrometheusProcess,
    exporter_config,
    start_exporter,
    start_prometheus,
)

DASHBOARD = json.loads((REPO / "grafana" / "dashboards" / "liquid-abt-slo.json").read_text())
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
PANELS = DASHBOARD["panels"]
QUERIES = [
    (panel["title"], target["refId"], target["expr"])
    for panel in PANELS
    for target in panel.get("targets", [])
]
EXCHANGES = ("kraken", ".*")  # one repeated row's value, and "All"


def _concrete(expr: str, exchange: str) -> str:
    expr = expr.replace("${exchange}", exchange).replace("$exchange", exchange)
    assert "$" not in expr, expr
    return expr


def _slo_records() -> set[str]:
    rules = yaml.safe_load((REPO / "alerts" / "slo.rules.yml").read_text())["groups"]
    return {rule["record"] for group in rules for rule in group["rules"] if "record" in rule}


# --- Structure ---------------------------------------------------------------------------------


def test_one_row_per_exchange_of_the_objectives() -> None:
    [row] = [p for p in PANELS if p["type"] == "row"]
    assert row["repeat"] == "exchange" and "$exchange" in row["title"]
    variable = {v["name"]: v for v in DASHBOARD["templating"]["list"]}["exchange"]
    assert (
        variable["definition"]
        == "label_values(exchange:liquid_abt_purchase_slo_objective:ratio, exchange)"
    )
    assert variable["multi"] and variable["includeAll"] and variable["allValue"] == ".*"


def test_the_row_shows_objective_budget_and_burn_rates() -> None:
    exprs = "\n".join(expr for _, _, expr in QUERIES)
    for needle in (
        ["slo_objective:ratio", "slo_error_budget_remaining:30d"]
        + [f"slo_burn_rate:{w}" for w in ("1h", "6h", "1d", "3d")]
        + [f"slo_unhandled_burn_rate:{b.long}" for a in ALERTS for b in a.burns]
    ):
        assert needle in exprs, needle


def test_burn_rate_panels_draw_the_alerts_factors() -> None:
    factors = sorted({b.factor for a in ALERTS for b in a.burns})
    burn_panels = [p for p in PANELS if p["title"].startswith("Burn rate")]
    assert len(burn_panels) == 2
    for panel in burn_panels:
        defaults = panel["fieldConfig"]["defaults"]
        steps = [s["value"] for s in defaults["thresholds"]["steps"]][1:]
        assert steps == factors, panel["title"]
        assert defaults["custom"]["thresholdsStyle"]["mode"] != "off"


def test_every_query_reads_the_shipped_slo_series_of_the_rows_exchange() -> None:
    records = _slo_records()
    for title, ref, expr in QUERIES:
        for name in re.findall(r"\bexchange:liquid_abt_purchase_slo_\w+:\w+", expr):
            assert name in records, (title, ref, name)
        for selector in re.findall(r"\{([^}]*)\}", expr):
            assert 'exchange=~"$exchange"' in selector, (title, ref, expr)


def test_panels_use_the_datasource_variable_and_do_not_overlap() -> None:
    for panel in PANELS:
        if panel["type"] != "row":
            assert panel["datasource"] == DATASOURCE, panel["title"]
            assert all(t["datasource"] == DATASOURCE for t in panel["targets"]), panel["title"]
    ids = [p["id"] for p in PANELS]
    assert len(ids) == len(set(ids))
    for a, b in combinations(PANELS, 2):
        ga, gb = a["gridPos"], b["gridPos"]
        assert ga["x"] + ga["w"] <= 24 and gb["x"] + gb["w"] <= 24
        overlap = (
            ga["x"] < gb["x"] + gb["w"] and gb["x"] < ga["x"] + ga["w"]
            and ga["y"] < gb["y"] + gb["h"] and gb["y"] < ga["y"] + ga["h"]
        )  # fmt: skip
        assert not overlap, (a["title"], b["title"])


# --- Every query against a real Prometheus ----------------------------------------------------


async def _seeded_database(server_dsn: str, template: str) -> str:
    """A copy of the template with an hour of purchases, 3 % of them failing."""
    name = await create_database(server_dsn, template, "t_slo")
    conn = await asyncpg.connect(with_database(server_dsn, name))
    try:
        simulator = Simulator({"exchange_unavailable": 0.02, "network_timeout": 0.01}, seed=15)
        await backfill(conn, simulator, seconds=3600, rate_per_minute=60)
    finally:
        await conn.close()
    return name


@pytest.fixture(scope="module")
def prometheus(
    pg_server_dsn: str, template_db: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrometheusProcess]:
    """Prometheus with the shipped rules, scraping an exporter over an hour of purchases."""
    tmp = tmp_path_factory.mktemp("slo-dashboard")
    name = asyncio.run(_seeded_database(pg_server_dsn, template_db))
    try:
        with (
            start_exporter(
                tmp,
                database_url=with_database(pg_server_dsn, name),
                config_yaml=exporter_config(None),
            ) as exporter,
            start_prometheus(tmp, [exporter.target], RULE_FILES) as prometheus,
        ):
            prometheus.wait_for(
                'exchange:liquid_abt_purchase_slo_error_budget_remaining:30d{exchange="kraken"}'
            )
            yield prometheus
    finally:
        asyncio.run(drop_database(pg_server_dsn, name))


def _finite(results: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(r["value"][1])) for r in results)


@pytest.mark.parametrize(
    ("title", "ref", "expr"), QUERIES, ids=[f"{title}/{ref}" for title, ref, _ in QUERIES]
)
def test_query_answers_with_a_finite_value_per_exchange(
    prometheus: PrometheusProcess, title: str, ref: str, expr: str
) -> None:
    for exchange in EXCHANGES:
        query = _concrete(expr, exchange)
        results = prometheus.wait_for(query, _finite, timeout=30)
        assert {r["metric"].get("exchange") for r in results} == {"kraken"}, (query, results)


def test_the_budget_and_burn_rates_follow_the_failures(prometheus: PrometheusProcess) -> None:
    """3 % failing against a 2 % budget: burning about 1.5x, the budget overspent by about half
    (the seeded mix is random: a margin either way)."""
    [burn] = prometheus.wait_for('exchange:liquid_abt_purchase_slo_burn_rate:5m{exchange="kraken"}')
    assert 0.5 < float(burn["value"][1]) < 3
    [remaining] = prometheus.query(
        'exchange:liquid_abt_purchase_slo_error_budget_remaining:30d{exchange="kraken"}'
    )
    assert -2 < float(remaining["value"][1]) < 0.5


def test_the_exchange_variable_lists_the_exchanges_with_an_objective(
    prometheus: PrometheusProcess,
) -> None:
    values = prometheus.api(
        "label/exchange/values", **{"match[]": "exchange:liquid_abt_purchase_slo_objective:ratio"}
    )
    assert "kraken" in values
