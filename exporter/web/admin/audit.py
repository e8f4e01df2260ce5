"""Admin route for the audit log: every action taken or refused, newest first, paged.

Mounted under /api/admin/. The `exchange` filter takes any name, configured or not: the log keeps
the history of exchanges that have since left the configuration.
"""

from __future__ import annotations

from typing import Annotated

from aiohttp import web
from pydantic import PlainValidator

from exporter.controls import audit
from exporter.web.admin import inputs
from exporter.web.admin.inputs import BIGINT_MAX, OptionalText, Paging
from exporter.web.keys import POOL

routes = web.RouteTableDef()

EntryId = Annotated[int | None, PlainValidator(inputs.optional(inputs.whole_rule(1, BIGINT_MAX)))]


class AuditQuery(Paging):
    exchange: OptionalText = None
    # Only entries older than this id: pinned to the first page's newest id + 1, the pages of a
    # log that keeps growing stay put.
    before_id: EntryId = None


@routes.get("/audit-log")
async def audit_log(request: web.Request) -> web.Response:
    params = inputs.query(request, AuditQuery)
    pool = request.config_dict[POOL]
    exchange, before_id = params.exchange, params.before_id
    rows = await audit.entries(
        pool, limit=params.limit, offset=params.offset, exchange=exchange, before_id=before_id
    )
    total = await audit.count(pool, exchange=exchange, before_id=before_id)
    return web.json_response(inputs.page(rows, total, params))
