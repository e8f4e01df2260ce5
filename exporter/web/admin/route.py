"""Admin route for failover: force or forbid routing the primary's purchases (docs/failover.md).

`POST /api/admin/route/{exchange}` with `{"to": "<secondary>" | "none" | "auto"}`. The override is
written and audited as actor "admin" in one transaction, then the incident model decides at once
(a forced secondary is still guarded; an admin hold on the primary still wins).
"""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp import web
from pydantic import Field

from exporter.config import Config
from exporter.controls import audit
from exporter.controls.audit import ACTOR_ADMIN
from exporter.database.transactions import transaction
from exporter.runbook.incident import route_store
from exporter.runbook.incident.routing import AUTO, NONE
from exporter.web.admin import inputs
from exporter.web.admin.common import bad_request
from exporter.web.admin.inputs import Model, OptionalText, Text
from exporter.web.keys import CONFIG, INCIDENTS, POOL

routes = web.RouteTableDef()


class RouteBody(Model):
    to: Text = Field(description="a secondary's name (force), none (forbid) or auto")
    reason: OptionalText = None


def choices(config: Config) -> tuple[str, ...]:
    return (*config.failover.secondaries, NONE, AUTO)


def check(config: Config, exchange: str, to: str) -> str | None:
    """Why this override cannot be set, or None."""
    failover = config.failover
    if not failover.active:
        return "failover is not configured: name a secondary in failover.secondaries"
    if exchange != failover.primary:
        return (
            f"{exchange!r} is not failover.primary ({failover.primary!r}): only its purchases "
            "are routed"
        )
    if to not in choices(config):
        return f"to: unknown route {to!r}: use one of {', '.join(choices(config))}"
    return None


async def route_answer(
    pool: asyncpg.Pool, config: Config, exchange: str, to: str, reason: str | None
) -> dict[str, Any]:
    """Set the override and audit it in one transaction; the answer shows the route as stored."""
    override = None if to == AUTO else to
    async with transaction(pool) as connection:
        before = await route_store.lock(connection, exchange)
        changed = before.override != override
        await route_store.set_override(connection, exchange, override, ACTOR_ADMIN)
        await audit.record(
            connection, actor=ACTOR_ADMIN, action="set_route_override",
            result=audit.CHANGED if changed else audit.UNCHANGED, exchange=exchange,
            cause=reason or f"admin route {exchange} --to {to}",
            detail={"from": before.override or AUTO, "to": to},
        )  # fmt: skip
    return {
        "changed": changed,
        "route": (await route_store.read_routes(pool, [exchange]))[exchange],
    }


@routes.post("/route/{exchange}")
async def set_route(request: web.Request) -> web.Response:
    exchange = inputs.known_exchange(request, request.match_info["exchange"])
    body = await inputs.body(request, RouteBody)
    config: Config = request.config_dict[CONFIG]
    problem = check(config, exchange, body.to)
    if problem:
        raise bad_request(problem)
    pool = request.config_dict[POOL]
    answer = await route_answer(pool, config, exchange, body.to, body.reason)
    model = request.config_dict.get(INCIDENTS)
    if model is not None:  # decide now, on the new override
        await model.evaluate(exchange)
        answer["route"] = (await route_store.read_routes(pool, [exchange]))[exchange]
    return web.json_response(answer)
