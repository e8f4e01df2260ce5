"""Admin route for the audit log: every action taken or refused, newest first, paged by id.

Mounted under /api/admin/. The `exchange` filter takes any name, configured or not: the log keeps
the history of exchanges that have since left the configuration.
"""

from __future__ import annotations

import re

import asyncpg
from aiohttp import web
from multidict import MultiMapping

from exporter.controls import audit
from exporter.web.admin.common import bad_request
from exporter.web.keys import POOL

routes = web.RouteTableDef()

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
_MAX_ID = 2**63 - 1  # bigserial


def _pool(request: web.Request) -> asyncpg.Pool:
    return request.config_dict[POOL]


def _int_param(query: MultiMapping[str], name: str, low: int, high: int) -> int | None:
    """The parameter as an integer in [low, high], None when absent, else a 400 naming it."""
    raw = query.get(name)
    if raw is None:
        return None
    value = int(raw) if re.fullmatch(r"[0-9]{1,19}", raw) else None
    if value is None or not low <= value <= high:
        raise bad_request(f"{name}: expected an integer from {low} to {high}, got {raw!r}")
    return value


def _exchange_param(query: MultiMapping[str]) -> str | None:
    exchange = query.get("exchange")
    if exchange is not None and not exchange.strip():
        raise bad_request("exchange: expected an exchange name, got an empty value")
    return exchange


@routes.get("/audit-log")
async def audit_log(request: web.Request) -> web.Response:
    query = request.query
    limit = _int_param(query, "limit", 1, MAX_LIMIT) or DEFAULT_LIMIT
    before_id = _int_param(query, "before_id", 1, _MAX_ID)
    exchange = _exchange_param(query)
    rows = await audit.entries(_pool(request), limit=limit, exchange=exchange, before_id=before_id)
    # A full page may have more behind it: pass this as before_id for the next one.
    next_before_id = rows[-1]["id"] if len(rows) == limit else None
    return web.json_response({"entries": rows, "nextBeforeId": next_before_id})
