"""Building blocks of the generated dashboards (grafana/generate.py): queries, value mappings,
runbook links, the panel types they use, and a grid that places panels so nothing overlaps.

Only what differs from Grafana's defaults is written out: Grafana fills in the rest when it loads
a dashboard, and a smaller file keeps the Kubernetes ConfigMap that embeds it small.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# The alerts' default runbook base (alerts/README.md, "Runbook base URL"); the dashboards read it
# from their `runbook_base` constant, so pointing them at a wiki or a fork is one value.
RUNBOOK_BASE = "https://github.com/liquid-abt/liquid-abt-exporter/blob/main/docs/runbooks"
BITCOIN = "bitcoin-purchase-failures.md"
EXCHANGE_API = "exchange-api-failures.md"
EXPORTER = "liquid-abt-exporter.md"

# Every raw selector names the scrape it reads (the job and instance variables); series of the
# recording rules are already aggregated over replicas and carry neither.
SCRAPE = ('job=~"$job"', 'instance=~"$instance"')
EXCHANGE = 'exchange=~"$exchange"'
GRID_WIDTH = 24


def sel(metric: str, *matchers: str) -> str:
    """`metric{job=~"$job", instance=~"$instance", *matchers}`."""
    return f"{metric}{{{', '.join((*SCRAPE, *matchers))}}}"


def rule(record: str, *matchers: str) -> str:
    """A recording rule's series, selected by `matchers` (no scrape labels: see SCRAPE)."""
    return f"{record}{{{', '.join(matchers)}}}"


def weighted(by: str, parts: list[tuple[int, str]]) -> str:
    """`w1 * e1 + w2 * e2 ...`, one number for a state set that value mappings name.

    Summed per scrape (each replica's snapshot is consistent in itself), then the highest per
    `by`: summing across replicas could add one replica's stale state to another's new one and
    name a state neither is in.
    """
    per = f"job, instance, {by}"
    terms = [f"{w} * max by ({per}) ({e})" if w != 1 else f"max by ({per}) ({e})" for w, e in parts]
    inner = "\n  + ".join(terms)
    return f"max by ({by}) (\n    {inner}\n)"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""
    instant: bool = False  # tables: the value now, one row per series


def q(expr: str, legend: str = "", instant: bool = False) -> Query:
    return Query(expr, legend, instant)


def _target(ref: str, query: Query) -> dict[str, Any]:
    # The panel's data source applies to its targets: not repeated here.
    target: dict[str, Any] = {
        "refId": ref,
        "expr": query.expr,
        "legendFormat": query.legend or "__auto",
        "range": not query.instant,
        "instant": query.instant,
    }
    if query.instant:
        target["format"] = "table"
    return target


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading (tests/rules/test_runbooks.py checks it exists)."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def runbook(page: str, heading: str = "", title: str = "") -> dict[str, Any]:
    """A link to a heading of a shipped runbook, under the dashboard's `runbook_base`."""
    anchor = f"#{github_anchor(heading)}" if heading else ""
    return {
        "title": title or f"Runbook: {heading or page}",
        "url": f"${{runbook_base}}/{page}{anchor}",
        "targetBlank": True,
    }


def states(*entries: tuple[float | str, str, str]) -> list[dict[str, Any]]:
    """Value mappings: (value, text, color) per state."""
    return [
        {
            "type": "value",
            "options": {
                str(value): {"text": text, "color": color, "index": i}
                for i, (value, text, color) in enumerate(entries)
            },
        }
    ]


def steps(base: str, *above: tuple[float, str]) -> dict[str, Any]:
    """Absolute thresholds: `base` color, then (value, color) from that value up."""
    return {
        "mode": "absolute",
        "steps": [{"color": base, "value": None}, *({"color": c, "value": v} for v, c in above)],
    }


# --- Panels -------------------------------------------------------------------------------------


def _panel(
    kind: str,
    title: str,
    description: str,
    queries: list[Query],
    links: list[dict[str, Any]] | None,
    defaults: dict[str, Any],
    options: dict[str, Any],
    overrides: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    panel: dict[str, Any] = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": [_target(chr(ord("A") + i), query) for i, query in enumerate(queries)],
        "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
        "options": options,
    }
    if links:
        panel["links"] = links
    return panel


def stat(
    title: str,
    description: str,
    queries: list[Query],
    *,
    unit: str = "short",
    mappings: list[dict[str, Any]] | None = None,
    thresholds: dict[str, Any] | None = None,
    decimals: int | None = None,
    sparkline: bool = False,
    names: bool = False,
    links: list[dict[str, Any]] | None = None,
    overrides: list[dict[str, Any]] | None = None,
    no_value: str = "",
) -> dict[str, Any]:
    """One big value per series; mapped states color the background."""
    defaults: dict[str, Any] = {
        "unit": unit,
        "color": {"mode": "thresholds"},
        "thresholds": thresholds or steps("blue"),
        "mappings": mappings or [],
    }
    if decimals is not None:
        defaults["decimals"] = decimals
    if no_value:
        defaults["noValue"] = no_value
    options = {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "colorMode": "background",
        "graphMode": "area" if sparkline else "none",
        "textMode": "value_and_name" if names else "auto",
        "justifyMode": "center",
        "orientation": "auto",
    }
    return _panel("stat", title, description, queries, links, defaults, options, overrides)


def timeseries(
    title: str,
    description: str,
    queries: list[Query],
    *,
    unit: str = "short",
    bars: bool = False,
    thresholds: dict[str, Any] | None = None,
    threshold_style: str = "off",
    soft_max: float | None = None,
    decimals: int | None = None,
    links: list[dict[str, Any]] | None = None,
    overrides: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    custom: dict[str, Any] = {
        "drawStyle": "bars" if bars else "line",
        "fillOpacity": 60 if bars else 10,
        "showPoints": "never",
        "thresholdsStyle": {"mode": threshold_style},
    }
    if soft_max is not None:
        custom["axisSoftMax"] = soft_max
    defaults: dict[str, Any] = {
        "unit": unit,
        "min": 0,
        "custom": custom,
        "thresholds": thresholds or steps("green"),
    }
    if decimals is not None:
        defaults["decimals"] = decimals
    options = {
        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    return _panel("timeseries", title, description, queries, links, defaults, options, overrides)


def timeline(
    title: str,
    description: str,
    queries: list[Query],
    mappings: list[dict[str, Any]],
    links: list[dict[str, Any]] | None = None,
    overrides: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A state over time, one lane per series, colored by the same mappings as the stats."""
    defaults = {
        "color": {"mode": "thresholds"},
        "thresholds": steps("text"),
        "mappings": mappings,
        "custom": {"fillOpacity": 80, "lineWidth": 0},
    }
    options = {
        "mergeValues": True,
        "showValue": "auto",
        "rowHeight": 0.8,
        "legend": {"showLegend": False},
        "tooltip": {"mode": "single"},
    }
    return _panel(
        "state-timeline", title, description, queries, links, defaults, options, overrides
    )


def bargauge(
    title: str,
    description: str,
    queries: list[Query],
    *,
    unit: str = "short",
    links: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    defaults = {"unit": unit, "min": 0, "color": {"mode": "continuous-YlRd"}}
    options = {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "displayMode": "gradient",
        "orientation": "horizontal",
        "showUnfilled": True,
    }
    return _panel("bargauge", title, description, queries, links, defaults, options)


def table(
    title: str,
    description: str,
    query: Query,
    *,
    columns: list[str],
    value: str,
    unit: str = "short",
    links: list[dict[str, Any]] | None = None,
    overrides: list[dict[str, Any]] | None = None,
    no_value: str = "",
) -> dict[str, Any]:
    """The instant value of each series as a row: `columns` (labels) first, then `value`."""
    defaults: dict[str, Any] = {"unit": unit, "custom": {"align": "auto"}}
    if no_value:
        defaults["noValue"] = no_value
    options = {"showHeader": True, "cellHeight": "sm", "sortBy": [{"displayName": value}]}
    panel = _panel("table", title, description, [query], links, defaults, options, overrides)
    order = {name: i for i, name in enumerate([*columns, "Value"])}
    panel["transformations"] = [
        {
            "id": "organize",
            "options": {
                "excludeByName": {"Time": True},
                "indexByName": order,
                "renameByName": {"Value": value},
            },
        }
    ]
    return panel


def by_name(name: str, **properties: Any) -> dict[str, Any]:
    """A field override for the series (or column) called `name`."""
    return {
        "matcher": {"id": "byName", "options": name},
        "properties": [{"id": key, "value": value} for key, value in properties.items()],
    }


def by_query(ref: str, **properties: Any) -> dict[str, Any]:
    """A field override for the series of one query (refId)."""
    return {
        "matcher": {"id": "byFrameRefID", "options": ref},
        "properties": [{"id": key, "value": value} for key, value in properties.items()],
    }


# --- Panels both dashboards show -------------------------------------------------------------


def firing_alerts(title: str, description: str, where: str) -> dict[str, Any]:
    """Alerts firing now (`where`: label matchers), with how long each has been active."""
    expr = (
        "max by (alertname, severity) (\n"
        f"  (time() - ALERTS_FOR_STATE{{{where}}})\n"
        f'  and ignoring (alertstate) ALERTS{{alertstate="firing", {where}}}\n'
        ")"
    )
    severity = states(
        ("critical", "critical", "red"), ("warning", "warning", "orange"), ("info", "info", "blue")
    )
    return table(
        title,
        description,
        q(expr, instant=True),
        columns=["alertname", "severity"],
        value="Active for",
        unit="s",
        no_value="No alert firing",
        links=[
            runbook(EXCHANGE_API, title="Runbook: Exchange API failures"),
            runbook(BITCOIN, title="Runbook: Bitcoin purchase failures"),
            runbook(EXPORTER, title="Runbook: liquid-abt-exporter"),
        ],
        overrides=[
            by_name(
                "severity", **{"custom.cellOptions": {"type": "color-text"}, "mappings": severity}
            )
        ],
    )


def exporters_up() -> dict[str, Any]:
    return stat(
        "Exporters up",
        "Scrape targets of the selected job and instances that answer. None: every panel here "
        "is blind and the webhook receiver is probably down too.",
        [q(f"sum({sel('up')})", "up")],
        thresholds=steps("red", (1, "green")),
        links=[runbook(EXPORTER, "LiquidAbtExporterDown")],
    )


def database_up() -> dict[str, Any]:
    return stat(
        "Database",
        "Whether every selected exporter reaches the platform database (liquid_abt_db_up).",
        [q(f"min({sel('liquid_abt_db_up')})", "database")],
        mappings=states((0, "Down", "red"), (1, "Up", "green")),
        links=[runbook(EXPORTER, "LiquidAbtDatabaseDown")],
    )


# --- Layout -------------------------------------------------------------------------------------


@dataclass
class Grid:
    """Places panels top-down, left to right, each as high as the free space allows (Grafana's
    own gravity), so a taller panel beside two lines of stats needs no coordinates."""

    panels: list[dict[str, Any]] = field(default_factory=list)
    _tops: list[int] = field(default_factory=lambda: [0] * GRID_WIDTH)
    _collapsed: dict[str, Any] | None = None

    def row(self, title: str, *, repeat: str = "", collapsed: bool = False) -> None:
        """A row header across the width; `repeat` repeats it and its panels per value."""
        self.close_collapsed()
        y = max(self._tops)
        row: dict[str, Any] = {
            "type": "row",
            "title": title,
            "collapsed": collapsed,
            "gridPos": {"h": 1, "w": GRID_WIDTH, "x": 0, "y": y},
            "panels": [],
        }
        if repeat:
            row["repeat"] = repeat
        self.panels.append(row)
        self._collapsed = row if collapsed else None
        self._tops = [y + 1] * GRID_WIDTH

    def add(self, panel: dict[str, Any], w: int, h: int) -> None:
        y, x = min((max(self._tops[x : x + w]), x) for x in range(GRID_WIDTH - w + 1))
        panel["gridPos"] = {"h": h, "w": w, "x": x, "y": y}
        self._tops[x : x + w] = [y + h] * w
        (self._collapsed["panels"] if self._collapsed else self.panels).append(panel)

    def close_collapsed(self) -> None:
        """Panels after this go below the collapsed row, not into it."""
        if self._collapsed is not None:
            self._tops = [self._collapsed["gridPos"]["y"] + 1] * GRID_WIDTH
            self._collapsed = None

    def numbered(self) -> list[dict[str, Any]]:
        """The panels with ids 1, 2, ... in reading order (collapsed rows' panels included)."""
        next_id = 1
        for panel in self.panels:
            for one in (panel, *panel.get("panels", [])):
                one["id"] = next_id
                next_id += 1
        return self.panels


# --- Dashboards ---------------------------------------------------------------------------------


def _query_variable(name: str, label: str, definition: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "definition": definition,
        "query": {"query": definition, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "refresh": 2,  # on time range change: replicas come and go
        "includeAll": True,
        "allValue": ".*",
        "multi": True,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def variables(*, exchange: bool) -> list[dict[str, Any]]:
    """Data source, job and instance (from the exporter's build_info, so only its jobs are
    offered), the exchange when asked, and the runbook base of every link."""
    found = [
        {
            "name": "datasource",
            "label": "Data source",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
        },
        _query_variable("job", "Job", "label_values(liquid_abt_build_info, job)"),
        _query_variable(
            "instance", "Instance", 'label_values(liquid_abt_build_info{job=~"$job"}, instance)'
        ),
    ]
    if exchange:
        # The exchanges the exporter guards (it keeps controls for the configured ones only);
        # purchases of any other provider are `other` in the charts under "All".
        found.append(
            _query_variable(
                "exchange",
                "Exchange",
                'label_values(liquid_abt_circuit_breaker_state{job=~"$job"}, exchange)',
            )
        )
    found.append(
        {
            "name": "runbook_base",
            "label": "Runbook base URL",
            "description": "Where the panel links find docs/runbooks; the alerts' default base.",
            "type": "constant",
            "query": RUNBOOK_BASE,
            "current": {"text": RUNBOOK_BASE, "value": RUNBOOK_BASE},
            "hide": 2,
        }
    )
    return found


def annotation(
    name: str, expr: str, color: str, title: str, text: str, tags: str
) -> dict[str, Any]:
    return {
        "name": name,
        "datasource": DATASOURCE,
        "enable": True,
        "iconColor": color,
        "expr": expr,
        "step": "60s",
        "titleFormat": title,
        "textFormat": text,
        "tagKeys": tags,
    }


def envelope(
    *,
    uid: str,
    title: str,
    description: str,
    tags: list[str],
    grid: Grid,
    templating: list[dict[str, Any]],
    annotations: list[dict[str, Any]],
    links: list[dict[str, Any]],
) -> dict[str, Any]:
    builtin = {
        "builtIn": 1,
        "datasource": {"type": "grafana", "uid": "-- Grafana --"},
        "enable": True,
        "hide": True,
        "iconColor": "rgba(0, 211, 255, 1)",
        "name": "Annotations & Alerts",
        "type": "dashboard",
    }
    # The other LIQUID ABT dashboards (by tag, so one added later is listed too), keeping the
    # time range and the variables.
    others = {
        "title": "LIQUID ABT",
        "type": "dashboards",
        "tags": ["liquid-abt"],
        "asDropdown": True,
        "includeVars": True,
        "keepTime": True,
    }
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["liquid-abt", *tags],
        "editable": True,
        "graphTooltip": 1,
        "refresh": "30s",
        "schemaVersion": 39,
        "time": {"from": "now-3h", "to": "now"},
        "timezone": "browser",
        "links": [
            others,
            *({"type": "link", "icon": "doc", "targetBlank": True, **link} for link in links),
        ],
        "templating": {"list": templating},
        "annotations": {"list": [builtin, *annotations]},
        "panels": grid.numbered(),
    }
