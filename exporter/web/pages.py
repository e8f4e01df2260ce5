"""The pages a person or a load balancer reads: the landing page, liveness and readiness.

The landing page shows the live state of each exchange (the admin status, trimmed by
`public_view` to what /metrics already exposes), its failure ratio over 15 minutes, the alerts
Alertmanager reported firing for it (names and since when, as anyone who reads Prometheus' ALERTS
sees them), a runbook link for each state that has one, the version and the links an on-call
engineer wants. Plain HTML and CSS, refreshed by the browser every few seconds; it needs no admin
token and offers no actions.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from html import escape
from typing import Any, Final

from aiohttp import web

from exporter import __version__
from exporter.config import format_duration
from exporter.database.pool import DATABASE_ERRORS
from exporter.runbook.alert_states import firing_alerts
from exporter.signals.collectors.base import SnapshotRunner
from exporter.web.admin.status import exchange_status, public_view
from exporter.web.keys import BREAKERS, CONFIG, DB_MONITOR, POOL, RUNNERS

log = logging.getLogger(__name__)

REFRESH_SECONDS: Final = 10
RATIO_WINDOW: Final = 15 * 60.0  # the window of the runbooks' failure-rate alerts
STATUS_TIMEOUT: Final = 5.0  # the page answers even when the database does not

STYLE: Final = """
:root { color-scheme: light; --ok: #176639; --warn: #8a5300; --bad: #b3261e; --line: #d0d7de; }
body { font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
       color: #1f2328; background: #f6f8fa; }
main, header > div { max-width: 72rem; margin: 0 auto; padding: 1rem 1.5rem; }
header { border-bottom: 1px solid var(--line); background: #fff; }
h1 { font-size: 1.6rem; margin: 0; }
h2 { font-size: 1.2rem; margin: 1.5rem 0 .5rem; }
.sub, .note { color: #57606a; margin: .25rem 0; }
.table { overflow-x: auto; background: #fff; border: 1px solid var(--line); border-radius: 6px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .6rem .8rem; border-bottom: 1px solid var(--line);
         vertical-align: top; }
thead th { background: #f0f3f6; font-size: .9rem; }
tbody tr:last-child th, tbody tr:last-child td { border-bottom: none; }
.badge { display: inline-block; padding: .05rem .55rem; border-radius: 1rem; color: #fff;
         font-weight: 600; font-size: .9rem; }
.ok { background: var(--ok); } .warn { background: var(--warn); } .bad { background: var(--bad); }
.detail { display: block; color: #57606a; font-size: .9rem; }
.banner { border: 1px solid; border-radius: 6px; padding: .6rem .8rem; font-weight: 600; }
.banner.good { background: #dafbe1; border-color: var(--ok); }
.banner.alarm { background: #ffebe9; border-color: var(--bad); }
.note { margin-top: .75rem; }
ul.alerts { margin: 0; padding-left: 1rem; } a.runbook { font-size: .9rem; }
.badge, .nowrap { white-space: nowrap; }
ul.links { padding-left: 1.2rem; } code { background: #eaeef2; padding: 0 .3rem; border-radius: 4px; }
"""

BREAKER_TONE: Final = {"CLOSED": "ok", "HALF_OPEN": "warn", "OPEN": "bad"}


async def healthy(request: web.Request) -> web.Response:
    return web.Response(text="Healthy.\n")


async def ready(request: web.Request) -> web.Response:
    monitor = request.app[DB_MONITOR]
    if monitor.up:
        return web.Response(text="Ready.\n")
    reason = monitor.last_error or "not checked yet"
    return web.Response(status=503, text=f"Not ready: database unreachable: {reason}\n")


async def index(request: web.Request) -> web.Response:
    view = await _public_status(request)
    web_config = request.app[CONFIG].web
    html = _page(view, web_config.docs_url, datetime.now(UTC), web_config.runbook_base_url)
    return web.Response(text=html, content_type="text/html", headers={"Cache-Control": "no-store"})


async def _public_status(request: web.Request) -> dict[str, Any] | None:
    """The public view of every exchange's state; None while the database does not answer."""
    app = request.app
    exchanges = list(app[CONFIG].exchanges)
    try:
        async with asyncio.timeout(STATUS_TIMEOUT):
            status, firing = await asyncio.gather(
                exchange_status(app[POOL], app[CONFIG], app[BREAKERS], recent_actions=0),
                firing_alerts(app[POOL], exchanges),
            )
    except DATABASE_ERRORS as exc:
        log.debug("landing page without state: database unavailable", extra={"error": str(exc)})
        return None
    view = public_view(status)
    ratios = failure_ratios(app.get(RUNNERS, []), RATIO_WINDOW)
    for exchange in view["exchanges"]:
        name = exchange["exchange"]
        exchange["failureRatio"] = ratios.get(name)
        exchange["firing"] = [
            {"alertname": a.alertname, "since": a.since.isoformat()} for a in firing[name]
        ]
    return view


def failure_ratios(runners: list[SnapshotRunner], window: float) -> dict[str, float]:
    """`liquid_abt_purchase_failure_ratio{window}` per exchange from the purchases collector's
    current snapshot, as /metrics serves it; empty before its first refresh or once expired."""
    label = format_duration(window)
    for runner in runners:
        snapshot = runner.current(datetime.now(UTC).timestamp())
        if runner.name != "purchases" or snapshot is None:
            continue
        return {
            sample.labels["exchange"]: sample.value
            for family in snapshot.families
            if family.name == "liquid_abt_purchase_failure_ratio"
            for sample in family.samples
            if sample.labels.get("window") == label
        }
    return {}


def _page(view: dict[str, Any] | None, docs_url: str | None, now: datetime, runbooks: str) -> str:
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<title>LIQUID ABT exporter</title><style>{STYLE}</style></head>
<body><header><div><h1>LIQUID ABT exporter</h1>
<p class="sub">Keeps Bitcoin purchases flowing: Prometheus exporter and Alertmanager webhook
receiver. Version {escape(__version__)}.</p></div></header>
<main>{_summary(view)}<h2>Exchanges</h2>
{_exchanges(view, now, runbooks)}
<p class="note">As of {now:%Y-%m-%d %H:%M:%S} UTC; this page refreshes every {REFRESH_SECONDS} s.
Reasons, recent actions and the controls need the admin token:
<code>liquid-abt-exporter admin status</code>.</p>
<h2>Links</h2>{_links(docs_url)}</main></body></html>
"""


def _summary(view: dict[str, Any] | None) -> str:
    """One line that answers "are purchases flowing?" before any detail."""
    if view is None:
        return (
            '<p class="banner alarm" role="alert">State unavailable: the database does not '
            'answer (see <a href="/-/ready">/-/ready</a>). /metrics keeps the last values it '
            "read.</p>"
        )
    paused = [e["exchange"] for e in view["exchanges"] if e["purchases"]["paused"]]
    if not paused:
        return '<p class="banner good" role="status">Purchases flowing on every exchange.</p>'
    names = ", ".join(escape(name) for name in paused)
    return f'<p class="banner alarm" role="alert">Purchases paused on {names}.</p>'


def _exchanges(view: dict[str, Any] | None, now: datetime, runbooks: str) -> str:
    if view is None:
        return '<p class="note">No exchange state to show.</p>'
    rows = "".join(_row(exchange, now, runbooks) for exchange in view["exchanges"])
    window = format_duration(RATIO_WINDOW)
    return (
        '<div class="table"><table><thead><tr><th scope="col">Exchange</th>'
        f'<th scope="col">Purchases</th><th scope="col">Failed ({window})</th>'
        '<th scope="col">Incident</th><th scope="col">Circuit breaker</th>'
        '<th scope="col">API call rate</th><th scope="col">Retry queue</th>'
        '<th scope="col">Firing alerts</th></tr></thead>'
        f"<tbody>{rows}</tbody></table></div>"
    )


def _row(exchange: dict[str, Any], now: datetime, runbooks: str) -> str:
    cells = (
        _purchases(exchange["purchases"], now, runbooks, exchange.get("route")),
        _ratio(exchange.get("failureRatio")),
        _incident(exchange["incident"], runbooks),
        _breaker(exchange["breaker"]),
        _rate(exchange["apiRateMultiplier"], runbooks),
        _queue(exchange["retryQueue"], now),
        _firing(exchange.get("firing", []), now, runbooks),
    )
    tds = "".join(f"<td>{cell}</td>" for cell in cells)
    return f'<tr><th scope="row">{escape(exchange["exchange"])}</th>{tds}</tr>'


def _badge(text: str, tone: str) -> str:
    return f'<span class="badge {tone}">{escape(text)}</span>'


def _detail(text: str) -> str:
    return f'<span class="detail">{escape(text)}</span>'


def _purchases(
    purchases: dict[str, Any], now: datetime, runbooks: str, route: dict[str, Any] | None = None
) -> str:
    to = (route or {}).get("to")
    if to not in (None, "primary", "none"):
        # Failover: paused here, flowing on a verified secondary (docs/failover.md).
        where = "paused here, buying there" if purchases["paused"] else "forced by an admin"
        return (
            _badge(f"routed to {to}", "warn")
            + _detail(where)
            + _runbook(runbooks, "exchange-api-failures.md#purchasesroutedtosecondary")
        )
    if not purchases["paused"]:
        return _badge("flowing", "ok")
    since = purchases["since"]
    when = f"paused {_ago(since, now)}" if since else "paused"
    held = ""
    if route and route.get("blockedGuard"):
        held = _detail(f"not routed: {route['blockedGuard']} guard")
    if purchases["manualHold"]:
        held = _detail("manual hold: an admin resumes them") + _runbook(
            runbooks, "exchange-api-failures.md#resume-purchases", "how to resume"
        )
    return _badge("paused", "bad") + _detail(when) + held


def _ratio(ratio: float | None) -> str:
    """The failure-rate alerts' measure: failed / settled purchases created in the window."""
    if ratio is None:
        return _detail("not measured yet")
    tone = "bad" if ratio > 0.05 else "warn" if ratio > 0.03 else "ok"  # the runbook's 5 % / 3 %
    return _badge(f"{ratio * 100:.1f} %", tone)


# Which runbook section explains an incident, by its cause (labels.INCIDENT_CAUSES).
INCIDENT_RUNBOOK: Final = {
    "unavailable": "exchange-api-failures.md#exchangeapidown",
    "alert": "exchange-api-failures.md#exchangeapidown",
    "maintenance": "exchange-api-failures.md#exchangemaintenance",
    "trading_restricted": "exchange-api-failures.md#exchangetradingrestricted",
}
# Which runbook file holds an alert's section (its heading is the alert's name in lower case), by
# the name's prefix, longest first: the alerts' own runbook_url annotations agree (tested).
ALERT_RUNBOOKS: Final = (
    ("LiquidAbtExchangeIsolated", "exchange-api-failures.md"),
    ("LiquidAbtPurchasesStopped", "exchange-api-failures.md"),
    ("PurchasesRoutedToSecondary", "exchange-api-failures.md"),
    ("SecondaryExchangeUnavailable", "exchange-api-failures.md"),
    ("BitcoinPurchase", "bitcoin-purchase-failures.md"),
    ("Exchange", "exchange-api-failures.md"),
    ("LiquidAbt", "liquid-abt-exporter.md"),
    ("CustomerNotices", "liquid-abt-exporter.md"),
)


def alert_runbook(alertname: str) -> str | None:
    """`file.md#heading` of an alert's runbook section; None for an alert not shipped here. An
    escalation twin (`<alertname>Escalation`) is read in its page's section."""
    alertname = alertname.removesuffix("Escalation")
    for prefix, page in ALERT_RUNBOOKS:
        if alertname.startswith(prefix):
            return f"{page}#{alertname.lower()}"
    return None


def _runbook(base: str, section: str, text: str = "runbook") -> str:
    href = escape(f"{base}/{section}")
    return f'<a class="runbook detail" href="{href}">{escape(text)}</a>'


def _firing(alerts: list[dict[str, Any]], now: datetime, runbooks: str) -> str:
    if not alerts:
        return _detail("none")
    items = []
    for alert in alerts:
        name, section = alert["alertname"], alert_runbook(alert["alertname"])
        label = (
            f'<a href="{escape(f"{runbooks}/{section}")}">{escape(name)}</a>'
            if section else escape(name)
        )  # fmt: skip
        since = _detail(f"since {_ago(alert['since'], now)}")
        items.append(f"<li>{label} {since}</li>")
    return '<ul class="alerts">' + "".join(items) + "</ul>"


INCIDENT: Final = {
    "normal": ("normal", "ok", ""),
    "down": ("down", "bad", "purchases stopped until recovery is verified"),
    "probation": (
        "probation",
        "warn",
        "recovery verified; purchases resume after a period of health",
    ),
}


def _incident(incident: dict[str, Any], runbooks: str) -> str:
    phase = incident["phase"]
    text, tone, meaning = INCIDENT.get(phase, (phase, "warn", ""))
    cause = _detail(f"cause: {incident['cause']}") if incident["cause"] else ""
    section = None
    if phase == "probation":
        section = "exchange-api-failures.md#recovery-verification"
    elif phase != "normal":
        section = INCIDENT_RUNBOOK.get(incident["cause"] or "", INCIDENT_RUNBOOK["unavailable"])
    link = _runbook(runbooks, section) if section else ""
    return _badge(text, tone) + cause + (_detail(meaning) if meaning else "") + link


def _breaker(breaker: dict[str, Any]) -> str:
    state = breaker["state"]
    failing = breaker["failureCount"]  # the incident model's evidence: replicas, not calls
    parts = [_badge(state, BREAKER_TONE.get(state, "warn"))]
    if failing:
        seeing = "1 replica sees" if failing == 1 else f"{failing} replicas see"
        parts.append(_detail(f"{seeing} the API down"))
    if breaker["manualHold"]:
        parts.append(_detail("held open by an admin"))
    return "".join(parts)


def _rate(multiplier: float, runbooks: str) -> str:
    percent = f"{multiplier * 100:g} %"
    if multiplier == 1:
        return f'<span class="nowrap">{escape(percent)}</span>'
    section = "exchange-api-failures.md#exchangeapiratelimited"
    return _badge(percent, "warn") + _detail("lowered") + _runbook(runbooks, section)


def _queue(queue: dict[str, Any], now: datetime) -> str:
    waiting = queue["waiting"]
    if not waiting:
        return "empty"
    oldest = queue["oldestWaitingSince"]
    return escape(f"{waiting} waiting") + (_detail(f"oldest {_ago(oldest, now)}") if oldest else "")


def _ago(iso: str, now: datetime) -> str:
    seconds = max(0, int((now - datetime.fromisoformat(iso)).total_seconds()))
    if seconds < 120:
        return f"{seconds} s ago"
    if seconds < 7200:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"


def _links(docs_url: str | None) -> str:
    links = [
        ("/metrics", "Metrics", "what Prometheus scrapes"),
        ("/-/healthy", "Health", "the process is up"),
        ("/-/ready", "Readiness", "the database answers"),
    ]
    if docs_url:
        links.append((docs_url, "Documentation", "README, runbooks, metric reference"))
    items = "".join(
        f'<li><a href="{escape(href)}">{escape(text)}</a>: {escape(what)}</li>'
        for href, text, what in links
    )
    if not docs_url:
        items += (
            "<li>Documentation: <code>README.md</code> and <code>docs/</code> in the exporter's "
            "source (set <code>web.docs_url</code> to link them here)</li>"
        )
    return f'<ul class="links">{items}</ul>'
