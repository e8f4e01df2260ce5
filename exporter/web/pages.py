"""The pages a person or a load balancer reads: the landing page, liveness and readiness.

The landing page shows the live state of each exchange (the admin status, trimmed by
`public_view` to what /metrics already exposes), the version and the links an on-call engineer
wants. Plain HTML and CSS, refreshed by the browser every few seconds; it needs no admin token and
offers no actions.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from html import escape
from typing import Any, Final

from aiohttp import web

from exporter import __version__
from exporter.database.pool import DATABASE_ERRORS
from exporter.web.admin.status import exchange_status, public_view
from exporter.web.keys import BREAKERS, CONFIG, DB_MONITOR, POOL

log = logging.getLogger(__name__)

REFRESH_SECONDS: Final = 10
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
    docs_url = request.app[CONFIG].web.docs_url
    html = _page(view, docs_url, datetime.now(UTC))
    return web.Response(text=html, content_type="text/html", headers={"Cache-Control": "no-store"})


async def _public_status(request: web.Request) -> dict[str, Any] | None:
    """The public view of every exchange's state; None while the database does not answer."""
    app = request.app
    try:
        async with asyncio.timeout(STATUS_TIMEOUT):
            status = await exchange_status(app[POOL], app[CONFIG], app[BREAKERS], recent_actions=0)
    except DATABASE_ERRORS as exc:
        log.debug("landing page without state: database unavailable", extra={"error": str(exc)})
        return None
    return public_view(status)


def _page(view: dict[str, Any] | None, docs_url: str | None, now: datetime) -> str:
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<title>LIQUID ABT exporter</title><style>{STYLE}</style></head>
<body><header><div><h1>LIQUID ABT exporter</h1>
<p class="sub">Keeps Bitcoin purchases flowing: Prometheus exporter and Alertmanager webhook
receiver. Version {escape(__version__)}.</p></div></header>
<main>{_summary(view)}<h2>Exchanges</h2>
{_exchanges(view, now)}
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


def _exchanges(view: dict[str, Any] | None, now: datetime) -> str:
    if view is None:
        return '<p class="note">No exchange state to show.</p>'
    rows = "".join(_row(exchange, now) for exchange in view["exchanges"])
    return (
        '<div class="table"><table><thead><tr><th scope="col">Exchange</th>'
        '<th scope="col">Purchases</th><th scope="col">Incident</th>'
        '<th scope="col">Circuit breaker</th>'
        '<th scope="col">API call rate</th><th scope="col">Retry queue</th></tr></thead>'
        f"<tbody>{rows}</tbody></table></div>"
    )


def _row(exchange: dict[str, Any], now: datetime) -> str:
    cells = (
        _purchases(exchange["purchases"], now),
        _incident(exchange["incident"]),
        _breaker(exchange["breaker"]),
        _rate(exchange["apiRateMultiplier"]),
        _queue(exchange["retryQueue"], now),
    )
    tds = "".join(f"<td>{cell}</td>" for cell in cells)
    return f'<tr><th scope="row">{escape(exchange["exchange"])}</th>{tds}</tr>'


def _badge(text: str, tone: str) -> str:
    return f'<span class="badge {tone}">{escape(text)}</span>'


def _detail(text: str) -> str:
    return f'<span class="detail">{escape(text)}</span>'


def _purchases(purchases: dict[str, Any], now: datetime) -> str:
    if not purchases["paused"]:
        return _badge("flowing", "ok")
    since = purchases["since"]
    when = f"paused {_ago(since, now)}" if since else "paused"
    held = _detail("manual hold: an admin resumes them") if purchases["manualHold"] else ""
    return _badge("paused", "bad") + _detail(when) + held


INCIDENT: Final = {
    "normal": ("normal", "ok", ""),
    "down": ("down", "bad", "purchases stopped until recovery is verified"),
    "probation": (
        "probation",
        "warn",
        "recovery verified; purchases resume after a period of health",
    ),
}


def _incident(incident: dict[str, Any]) -> str:
    text, tone, meaning = INCIDENT.get(incident["phase"], (incident["phase"], "warn", ""))
    cause = _detail(f"cause: {incident['cause']}") if incident["cause"] else ""
    return _badge(text, tone) + cause + (_detail(meaning) if meaning else "")


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


def _rate(multiplier: float) -> str:
    percent = f"{multiplier * 100:g} %"
    return escape(percent) if multiplier == 1 else _badge(percent, "warn") + _detail("lowered")


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
