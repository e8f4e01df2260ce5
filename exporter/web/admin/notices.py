"""Admin routes for customer notices: list them, hold, release or cancel (docs/customer-notices.md).

Mounted under /api/admin/. Every change is made as actor "admin" and audited in the same
transaction (exporter.controls.notices.operate).
"""

from __future__ import annotations

from typing import Annotated

from aiohttp import web
from pydantic import Field, PlainValidator, model_validator

from exporter.config import NOTICE_KINDS
from exporter.controls import notices as outbox
from exporter.controls.audit import ACTOR_ADMIN
from exporter.web.admin import inputs
from exporter.web.admin.inputs import BIGINT_MAX, Model, OptionalText, Paging
from exporter.web.keys import POOL

routes = web.RouteTableDef()

Id = Annotated[int, PlainValidator(inputs.whole_rule(1, BIGINT_MAX))]
OptionalId = Annotated[
    int | None, PlainValidator(inputs.optional(inputs.whole_rule(1, BIGINT_MAX)))
]
State = Annotated[
    str | None, PlainValidator(inputs.optional(inputs.choice_rule(outbox.NOTICE_STATES)))
]
Kind = Annotated[str | None, PlainValidator(inputs.optional(inputs.choice_rule(NOTICE_KINDS)))]


class NoticesQuery(Paging):
    incident: OptionalId = None
    state: State = None
    kind: Kind = None
    exchange: OptionalText = None


class OperateBody(Model):
    """The notices to change: `ids`, or every one of `incident`, or both."""

    ids: list[Id] = Field(default_factory=list, max_length=1000)
    incident: OptionalId = None
    reason: OptionalText = None

    @model_validator(mode="after")
    def _named(self) -> OperateBody:
        if not self.ids and self.incident is None:
            raise inputs.invalid("name the notices: ids, or incident")
        return self


@routes.get("/notices")
async def list_notices(request: web.Request) -> web.Response:
    params = inputs.query(request, NoticesQuery)
    exchange = params.exchange and inputs.known_exchange(request, params.exchange)
    pool = request.config_dict[POOL]
    found = await outbox.list_notices(
        pool, incident_id=params.incident, state=params.state, kind=params.kind,
        exchange=exchange, limit=params.limit, offset=params.offset,
    )  # fmt: skip
    total = await outbox.count_notices(
        pool, incident_id=params.incident, state=params.state, kind=params.kind, exchange=exchange
    )
    return web.json_response(inputs.page([n.as_json() for n in found], total, params))


async def _operate(request: web.Request, action: str) -> web.Response:
    body = await inputs.body(request, OperateBody)
    changed = await outbox.operate(
        request.config_dict[POOL], action, ids=body.ids, incident_id=body.incident,
        actor=ACTOR_ADMIN, reason=body.reason or f"{action} through the admin API",
    )  # fmt: skip
    return web.json_response({"action": action, "changed": changed})


@routes.post("/notices/hold")
async def hold(request: web.Request) -> web.Response:
    """Queued notices wait for `release`; the notifier's claim skips them."""
    return await _operate(request, "hold")


@routes.post("/notices/release")
async def release(request: web.Request) -> web.Response:
    return await _operate(request, "release")


@routes.post("/notices/cancel")
async def cancel(request: web.Request) -> web.Response:
    """Queued or held notices are never sent."""
    return await _operate(request, "cancel")
