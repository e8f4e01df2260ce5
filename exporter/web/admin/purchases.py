"""Admin routes for purchases: pause and resume (a manual hold), status, retry queue, impact report.

Mounted under /api/admin/. Every change is made as actor "admin" and audited by the functions in
exporter.controls.pause; a manual pause is a hold that automation never lifts.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

import asyncpg
from aiohttp import web
from pydantic import Field, PlainValidator, model_validator

from exporter.config import Config, format_duration
from exporter.controls import pause as controls
from exporter.controls import retry_queue
from exporter.controls.audit import ACTOR_ADMIN
from exporter.labels import REASON_CLASSES
from exporter.signals import impact
from exporter.signals.classify import ReasonClassifier
from exporter.web.admin import inputs
from exporter.web.admin.common import bad_request
from exporter.web.admin.inputs import Model, NoQuery, OptionalText, Paging, Text, Time
from exporter.web.keys import CONFIG, POOL

routes = web.RouteTableDef()

QueueStatus = Annotated[
    str | None, PlainValidator(inputs.optional(inputs.choice_rule(retry_queue.QUEUE_STATUSES)))
]
ReasonClass = Annotated[
    str | None, PlainValidator(inputs.optional(inputs.choice_rule(REASON_CLASSES)))
]


class _ExchangeBody(Model):
    """`affectedExchange` is the runbook's name (pauseAutomaticPurchases); `exchange` the name
    every other admin call uses. Either names the exchange; both must agree."""

    exchange: OptionalText = None
    affected_exchange: OptionalText = None

    @model_validator(mode="after")
    def _one_exchange(self) -> _ExchangeBody:
        both = self.exchange, self.affected_exchange
        if None not in both and both[0] != both[1]:
            raise inputs.invalid(
                f"exchange ({both[0]!r}) and affectedExchange ({both[1]!r}) differ: give one"
            )
        if both == (None, None):
            raise inputs.invalid("exchange: required (or the runbook's affectedExchange)")
        return self

    @property
    def named(self) -> str:
        return str(self.exchange or self.affected_exchange)


class PauseBody(_ExchangeBody):
    reason: Text = Field(description="why, for the audit log and the status")
    estimated_duration: OptionalText = None


class ResumeBody(_ExchangeBody):
    reason: OptionalText = None


class QueueQuery(Paging):
    exchange: OptionalText = None
    status: QueueStatus = None


class ImpactQuery(Model):
    start: Time = Field(description="an ISO 8601 time such as 2025-01-15T09:30:00Z")
    end: Time = Field(description="an ISO 8601 time such as 2025-01-15T11:30:00+10:00")
    exchange: OptionalText = None
    reason: ReasonClass = None


def _config(request: web.Request) -> Config:
    return request.config_dict[CONFIG]


def _pool(request: web.Request) -> asyncpg.Pool:
    return request.config_dict[POOL]


@routes.post("/purchases/pause")
async def pause_purchases(request: web.Request) -> web.Response:
    body = await inputs.body(request, PauseBody)
    exchange = inputs.known_exchange(request, body.named)
    answer = await pause_answer(_pool(request), exchange, body.reason, body.estimated_duration)
    return web.json_response(answer)


async def pause_answer(
    pool: asyncpg.Pool, exchange: str, reason: str, estimated_duration: str | None
) -> dict[str, Any]:
    """An admin's pause (a manual hold) and its answer; `admin --database-url pause` runs this
    same transaction when no exporter is up."""
    changed = await controls.pause(
        pool, exchange, reason=reason, estimated_duration=estimated_duration,
        actor=ACTOR_ADMIN, cause=reason, manual=True,
    )  # fmt: skip
    status = await controls.status(pool, exchange)
    return {"changed": changed, "status": status.as_json()}


@routes.post("/purchases/resume")
async def resume_purchases(request: web.Request) -> web.Response:
    body = await inputs.body(request, ResumeBody)
    exchange = inputs.known_exchange(request, body.named)
    cause = body.reason or "manual resume through the admin API"
    return web.json_response(await resume_answer(_pool(request), exchange, cause))


async def resume_answer(pool: asyncpg.Pool, exchange: str, cause: str) -> dict[str, Any]:
    """An admin's resume (lifting any hold) and its answer, for the API and `--database-url`."""
    result = await controls.resume(pool, exchange, actor=ACTOR_ADMIN, cause=cause, manual=True)
    return {"changed": result.changed, "message": result.message, "status": result.status.as_json()}


@routes.get("/purchases/status")
async def purchases_status(request: web.Request) -> web.Response:
    inputs.query(request, NoQuery)
    found = await controls.statuses(_pool(request), list(_config(request).exchanges))
    return web.json_response({"exchanges": [s.as_json() for s in found]})


@routes.get("/retry-queue")
async def get_retry_queue(request: web.Request) -> web.Response:
    params = inputs.query(request, QueueQuery)
    exchange = params.exchange and inputs.known_exchange(request, params.exchange)
    pool = _pool(request)
    entries = await retry_queue.list_queue(
        pool, exchange, params.status, params.limit, offset=params.offset
    )
    total = await retry_queue.count_queue(pool, exchange, params.status)
    return web.json_response(inputs.page([e.as_json() for e in entries], total, params))


@routes.get("/impact-report")
async def get_impact_report(request: web.Request) -> web.Response:
    params = inputs.query(request, ImpactQuery)
    _check_range(params, _config(request).admin.impact_report_max_range)
    config = _config(request)
    report = await impact.impact_report(
        _pool(request), start=params.start, end=params.end,
        classifier=ReasonClassifier(config.purchases.failure_reasons),
        exchange=params.exchange and inputs.known_exchange(request, params.exchange),
        reason=params.reason,
    )  # fmt: skip
    return web.json_response(report.as_json())


def _check_range(params: ImpactQuery, max_range: float) -> None:
    start, end = params.start, params.end
    if start >= end:
        raise bad_request(f"start ({start.isoformat()}) must be before end ({end.isoformat()})")
    if (end - start).total_seconds() > max_range:
        raise bad_request(
            f"range too long: {_span(end - start)} from start to end, at most "
            f"{format_duration(max_range)} (admin.impact_report_max_range): split the report"
        )


def _span(span: timedelta) -> str:
    """`40d`, `31d12h`: the range to the second (what a person typed), not to the microsecond."""
    seconds = max(1, round(span.total_seconds()))
    parts, rest = [], seconds
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(parts)
