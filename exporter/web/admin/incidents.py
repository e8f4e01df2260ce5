"""Admin routes for incidents and their post-incident review (exporter/runbook/review/).

Mounted under /api/admin/: `GET /incidents` lists them, newest first; `GET /incidents/<id|latest>`
answers the review as JSON, or as Markdown with `?format=markdown` (the closing note's text).
"""

from __future__ import annotations

from typing import Annotated, Any

from aiohttp import web
from pydantic import PlainValidator

from exporter.config import Config
from exporter.database.transactions import Executor
from exporter.runbook import review
from exporter.signals.classify import ReasonClassifier
from exporter.web.admin import inputs
from exporter.web.admin.common import bad_request, not_found
from exporter.web.admin.inputs import Model, OptionalText, Paging
from exporter.web.keys import CONFIG, POOL

routes = web.RouteTableDef()

FORMATS = ("json", "markdown")
MARKDOWN = "text/markdown"
Format = Annotated[str, PlainValidator(inputs.choice_rule(FORMATS))]


class IncidentsQuery(Paging):
    exchange: OptionalText = None


class ReviewQuery(Model):
    format: Format = "json"


async def incidents_answer(db: Executor, exchange: str | None, paging: Paging) -> dict[str, Any]:
    """The list as the admin API answers it (the operator CLI's --database-url builds the same)."""
    found, total, now = await review.list_incidents(
        db, exchange=exchange, limit=paging.limit, offset=paging.offset
    )
    return inputs.page([i.as_json(now) for i in found], total, paging)


async def review_of(db: Executor, config: Config, reference: str) -> review.Review:
    """The review; ValueError (a bad reference) or IncidentNotFound, each naming the value."""
    wanted = review.parse_reference(reference)
    return await review.load_review(db, wanted, ReasonClassifier(config.purchases.failure_reasons))


@routes.get("/incidents")
async def incidents(request: web.Request) -> web.Response:
    params = inputs.query(request, IncidentsQuery)
    answer = await incidents_answer(request.config_dict[POOL], params.exchange, params)
    return web.json_response(answer)


@routes.get("/incidents/{reference}")
async def incident_review(request: web.Request) -> web.Response:
    params = inputs.query(request, ReviewQuery)
    try:
        found = await review_of(
            request.config_dict[POOL], request.config_dict[CONFIG], request.match_info["reference"]
        )
    except ValueError as exc:
        raise bad_request(str(exc)) from None
    except review.IncidentNotFound as exc:
        raise not_found(str(exc)) from None
    if params.format == "markdown":
        return web.Response(text=review.markdown(found), content_type=MARKDOWN, charset="utf-8")
    return web.json_response(found.as_json())
