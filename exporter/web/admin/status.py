"""The state of every exchange in one call: incident phase, breaker, pause and manual hold, API
rate, retry queue, last recovery verification and recent actions.

`GET /api/admin/status` serves it whole (the operator CLI's `admin status` reads it); the landing
page shows `public_view()` of it, which keeps only what /metrics already exposes to anyone. It is a
read: it moves no breaker and writes no row.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any, Final

import asyncpg
from aiohttp import web

from exporter import __version__
from exporter.config import Config
from exporter.controls import audit, retry_queue
from exporter.controls import pause as controls
from exporter.controls.breaker import BreakerStore
from exporter.runbook.incident import Incident, read_incidents
from exporter.runbook.incident.route_store import read_routes
from exporter.web.admin import inputs
from exporter.web.admin.inputs import NoQuery
from exporter.web.keys import BREAKERS, CONFIG, POOL

routes = web.RouteTableDef()

RECENT_ACTIONS: Final = 5


async def exchange_status(
    pool: asyncpg.Pool,
    config: Config,
    breakers: BreakerStore,
    *,
    recent_actions: int = RECENT_ACTIONS,
) -> dict[str, Any]:
    """The status of every configured exchange; `recent_actions=0` skips the audit log read
    (the landing page, which does not show them)."""
    exchanges = list(config.exchanges)
    primary = [config.failover.primary] if config.failover.primary in exchanges else []
    breaker, pause, queue, recent, incidents, reasons = await asyncio.gather(
        breakers.peek_all(),
        controls.statuses(pool, exchanges),
        retry_queue.summaries(pool, exchanges),
        _recent(pool, exchanges, recent_actions),
        read_incidents(pool, exchanges),
        _reasons(pool, exchanges),
    )
    routes = await read_routes(pool, primary)
    return {
        "version": __version__,
        "at": datetime.now(UTC).isoformat(),
        "dryRun": config.receiver.dry_run,
        "exchanges": [
            {
                **_one(name, b, p, q, incidents[name], recent[name], reasons.get(name)),
                "route": routes.get(name),
            }
            for name, b, p, q in zip(exchanges, breaker, pause, queue, strict=True)
        ],  # fmt: skip
    }


async def _recent(
    pool: asyncpg.Pool, exchanges: list[str], limit: int
) -> dict[str, list[dict[str, Any]]]:
    if limit <= 0:
        return {exchange: [] for exchange in exchanges}
    return await audit.latest_by_exchange(pool, exchanges, limit=limit)


# Why each exchange's incident opened (or last relapsed), in words: its audit entry's cause
# before the evidence.
_REASONS_SQL: Final = """
SELECT x.name, split_part(e.cause, '; evidence: ', 1) AS reason
  FROM unnest($1::text[]) AS x(name)
 CROSS JOIN LATERAL (
     SELECT cause FROM liquid_abt.audit_log
      WHERE exchange = x.name AND action IN ('incident_opened', 'incident_relapsed')
      ORDER BY id DESC LIMIT 1) AS e"""


async def _reasons(pool: asyncpg.Pool, exchanges: list[str]) -> dict[str, str]:
    return {row["name"]: row["reason"] for row in await pool.fetch(_REASONS_SQL, exchanges)}


def _one(
    name: str,
    breaker: dict[str, Any],
    pause: controls.ControlStatus,
    queue: retry_queue.QueueSummary,
    incident: tuple[Incident, dict[str, Any] | None],
    recent: list[dict[str, Any]],
    reason: str | None = None,
) -> dict[str, Any]:
    purchases = pause.as_json()
    del purchases["exchange"]
    rate = purchases.pop("apiRateMultiplier")
    model, last = incident
    return {
        "exchange": name,
        "incident": _incident(model, reason),
        "breaker": breaker,
        "purchases": purchases,
        "apiRateMultiplier": rate,
        "retryQueue": queue.as_json(),
        "lastVerification": last and {k: last.get(k) for k in ("at", "passed", "checks")},
        "recentActions": recent,
    }


def _incident(model: Incident, reason: str | None) -> dict[str, Any]:
    """The incident model's view: phase normal, down (purchases stopped) or probation (verified,
    purchases resume after a period of health); `reason` is its cause in words."""
    return {
        "phase": model.phase,
        "cause": model.cause,
        "reason": reason if model.phase != "normal" else None,
        "since": _iso(model.started_at),
        "relapses": model.relapses,
        "nextVerificationAt": _iso(model.next_attempt_at),
        "probationUntil": _iso(model.probation_until),
    }


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


# What the landing page may show: each value is also in /metrics (named beside it), so a page
# anyone can open tells nothing that a scrape does not.
PUBLIC_FIELDS: Final = {
    ("incident", "phase"): "liquid_abt_incident_phase",
    ("incident", "cause"): "liquid_abt_incident_cause",
    ("breaker", "state"): "liquid_abt_circuit_breaker_state",
    ("breaker", "failureCount"): "liquid_abt_circuit_breaker_failures",
    ("breaker", "manualHold"): 'liquid_abt_manual_hold{control="circuit_breaker"}',
    ("purchases", "paused"): "liquid_abt_purchases_paused",
    ("purchases", "since"): "liquid_abt_purchases_paused_since_timestamp_seconds",
    ("purchases", "manualHold"): 'liquid_abt_manual_hold{control="purchases"}',
    ("apiRateMultiplier",): "liquid_abt_api_rate_multiplier",
    ("retryQueue", "waiting"): "liquid_abt_retry_queue_depth",
    ("retryQueue", "oldestWaitingSince"): "liquid_abt_retry_queue_oldest_age_seconds",
    # Failover's route, on the primary exchange only (docs/failover.md).
    ("route", "to"): "liquid_abt_purchase_route",
    ("route", "blockedGuard"): "liquid_abt_purchase_route_blocked",
}


def public_view(status: dict[str, Any]) -> dict[str, Any]:
    """`status` trimmed to PUBLIC_FIELDS (and the version, which build_info exposes)."""
    exchanges = []
    for full in status["exchanges"]:
        queue = full["retryQueue"]
        source = {**full, "retryQueue": {**queue, "waiting": queue["queued"] + queue["inProgress"]}}
        view: dict[str, Any] = {"exchange": full["exchange"]}
        for path in PUBLIC_FIELDS:
            if source.get(path[0]) is not None:
                _copy(source, view, path)
        cause = view["incident"]["cause"]  # the metric's label is its class: `alert`, not the name
        view["incident"]["cause"] = cause.partition(":")[0] if cause else None
        exchanges.append(view)
    return {"version": status["version"], "exchanges": exchanges}


def _copy(source: dict[str, Any], target: dict[str, Any], path: tuple[str, ...]) -> None:
    for key in path[:-1]:
        source, target = source[key], target.setdefault(key, {})
    target[path[-1]] = source[path[-1]]


@routes.get("/status")
async def status(request: web.Request) -> web.Response:
    inputs.query(request, NoQuery)
    app = request.config_dict
    return web.json_response(await exchange_status(app[POOL], app[CONFIG], app[BREAKERS]))
