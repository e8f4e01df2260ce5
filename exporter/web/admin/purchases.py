"""Admin routes for purchases: pause and resume (a manual hold), status, retry queue, impact report.

Mounted under /api/admin/. Every change is made as actor "admin" and audited by the functions in
exporter.controls.pause; a manual pause is a hold that automation never lifts.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
from aiohttp import web

from exporter.config import Config
from exporter.controls import pause as controls
from exporter.controls import retry_queue
from exporter.labels import REASON_CLASSES
from exporter.signals import impact
from exporter.signals.classify import ReasonClassifier
from exporter.web.admin.common import bad_request, json_body, not_found
from exporter.web.keys import CONFIG, POOL

routes = web.RouteTableDef()

ACTOR = "admin"
MAX_LIMIT = 1000
MAX_TEXT = 500
_PAUSE_FIELDS = {"exchange", "affectedExchange", "reason", "estimatedDuration"}
_RESUME_FIELDS = {"exchange", "affectedExchange", "reason"}


def _config(request: web.Request) -> Config:
    return request.config_dict[CONFIG]


def _pool(request: web.Request) -> asyncpg.Pool:
    return request.config_dict[POOL]


def _known_exchange(request: web.Request, name: Any, where: str) -> str:
    """The exchange named by a field or parameter: 400 if not a string, 404 if not configured."""
    if not isinstance(name, str) or not name:
        raise bad_request(f"{where}: expected an exchange name, got {name!r}")
    configured = _config(request).exchanges
    if name not in configured:
        raise not_found(f"unknown exchange {name!r}: configured are {', '.join(configured)}")
    return name


def _check_fields(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        allowed_list = ", ".join(sorted(allowed))
        raise bad_request(f"unknown field(s) {', '.join(unknown)}: allowed are {allowed_list}")


def _body_exchange(request: web.Request, body: dict[str, Any]) -> str:
    # `affectedExchange` is the runbook's spelling (pauseAutomaticPurchases); both are accepted.
    both = body.get("exchange"), body.get("affectedExchange")
    if "exchange" in body and "affectedExchange" in body and both[0] != both[1]:
        raise bad_request(f"exchange ({both[0]!r}) and affectedExchange ({both[1]!r}) differ")
    field = "exchange" if "exchange" in body else "affectedExchange"
    if field not in body:
        raise bad_request("exchange: required")
    return _known_exchange(request, body[field], field)


def _text(body: dict[str, Any], name: str, *, required: bool) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise bad_request(f"{name}: expected a non-empty string, got {value!r}")
    if len(value) > MAX_TEXT:
        raise bad_request(f"{name}: at most {MAX_TEXT} characters, got {len(value)}")
    return value.strip()


@routes.post("/purchases/pause")
async def pause_purchases(request: web.Request) -> web.Response:
    body = await json_body(request)
    _check_fields(body, _PAUSE_FIELDS)
    exchange = _body_exchange(request, body)
    reason = _text(body, "reason", required=True)
    assert reason is not None
    changed = await controls.pause(
        _pool(request), exchange, reason=reason,
        estimated_duration=_text(body, "estimatedDuration", required=False),
        actor=ACTOR, cause=reason, manual=True,
    )  # fmt: skip
    status = await controls.status(_pool(request), exchange)
    return web.json_response({"changed": changed, "status": status.as_json()})


@routes.post("/purchases/resume")
async def resume_purchases(request: web.Request) -> web.Response:
    body = await json_body(request)
    _check_fields(body, _RESUME_FIELDS)
    exchange = _body_exchange(request, body)
    cause = _text(body, "reason", required=False) or "manual resume through the admin API"
    result = await controls.resume(_pool(request), exchange, actor=ACTOR, cause=cause, manual=True)
    return web.json_response(
        {"changed": result.changed, "message": result.message, "status": result.status.as_json()}
    )


@routes.get("/purchases/status")
async def purchases_status(request: web.Request) -> web.Response:
    found = await controls.statuses(_pool(request), list(_config(request).exchanges))
    return web.json_response({"exchanges": [s.as_json() for s in found]})


def _limit(raw: str | None) -> int:
    if raw is None:
        return 100
    try:
        limit = int(raw)
    except ValueError:
        raise bad_request(f"limit: expected an integer, got {raw!r}") from None
    if not 1 <= limit <= MAX_LIMIT:
        raise bad_request(f"limit: must be between 1 and {MAX_LIMIT}, got {limit}")
    return limit


def _choice(raw: str | None, name: str, allowed: tuple[str, ...]) -> str | None:
    if raw is None or raw == "":
        return None
    if raw not in allowed:
        raise bad_request(f"{name}: expected one of {', '.join(allowed)}, got {raw!r}")
    return raw


def _optional_exchange(request: web.Request) -> str | None:
    raw = request.query.get("exchange")
    return None if raw in (None, "") else _known_exchange(request, raw, "exchange")


@routes.get("/retry-queue")
async def get_retry_queue(request: web.Request) -> web.Response:
    exchange = _optional_exchange(request)
    status = _choice(request.query.get("status"), "status", retry_queue.QUEUE_STATUSES)
    limit = _limit(request.query.get("limit"))
    entries = await retry_queue.list_queue(_pool(request), exchange, status, limit)
    return web.json_response({"count": len(entries), "entries": [e.as_json() for e in entries]})


def _timestamp(request: web.Request, name: str) -> datetime:
    raw = request.query.get(name)
    if not raw:
        raise bad_request(f"{name}: required, an ISO 8601 time such as 2025-01-15T09:30:00Z")
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise bad_request(f"{name}: not an ISO 8601 time: {raw!r}") from None
    if value.tzinfo is None:
        # A time without an offset is ambiguous across the team's time zones: refuse to guess.
        raise bad_request(f"{name}: add a time zone offset (Z or +10:00) to {raw!r}")
    return value


@routes.get("/impact-report")
async def get_impact_report(request: web.Request) -> web.Response:
    start, end = _timestamp(request, "start"), _timestamp(request, "end")
    if start >= end:
        raise bad_request(f"start ({start.isoformat()}) must be before end ({end.isoformat()})")
    config = _config(request)
    report = await impact.impact_report(
        _pool(request), start=start, end=end,
        classifier=ReasonClassifier(config.purchases.failure_reasons),
        exchange=_optional_exchange(request),
        reason=_choice(request.query.get("reason"), "reason", REASON_CLASSES),
    )  # fmt: skip
    return web.json_response(report.as_json())
