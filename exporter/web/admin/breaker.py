"""Admin routes for the circuit breakers: the runbook's status, forceState, reset and updateConfig.

Mounted under /api/admin/. Every change is made as actor "admin" and audited by exporter.controls.breaker;
an admin's OPEN is a manual hold that automation never lifts.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any

from aiohttp import web
from pydantic import Field, PlainValidator, ValidationInfo, model_validator

from exporter.controls.audit import ACTOR_ADMIN
from exporter.controls.breaker import (
    BreakerStore,
    InvalidBreakerConfig,
    InvalidState,
    State,
    Transition,
    UnknownExchange,
)
from exporter.web.admin import inputs
from exporter.web.admin.common import Handler, bad_request, not_found
from exporter.web.admin.inputs import INT4_MAX, Model, NoQuery, OptionalText
from exporter.web.keys import BREAKERS

routes = web.RouteTableDef()

STATES = ", ".join(s.api for s in State)


def _state_rule(value: object, info: ValidationInfo) -> State:
    if not isinstance(value, str):
        raise inputs.invalid(f"expected one of {STATES}, got {inputs.shown(value)}")
    try:
        return State.parse(value)
    except InvalidState as exc:
        raise inputs.invalid(str(exc)) from None


Setting = Annotated[int | None, PlainValidator(inputs.optional(inputs.whole_rule(1, INT4_MAX)))]
Milliseconds = Annotated[
    int | None,
    PlainValidator(inputs.optional(inputs.whole_rule(1, INT4_MAX, " (milliseconds)"))),
]


class ForceStateBody(Model):
    state: Annotated[State, PlainValidator(_state_rule)] = Field(description=f"one of {STATES}")
    reason: OptionalText = None


class ResetBody(Model):
    reason: OptionalText = None


class ConfigBody(Model):
    """The runbook's updateConfig: its names, its units (milliseconds)."""

    failure_threshold: Setting = None
    recovery_timeout: Milliseconds = None
    monitoring_window: Milliseconds = None
    reason: OptionalText = None

    @model_validator(mode="after")
    def _something_to_change(self) -> ConfigBody:
        if not self.changes():
            raise inputs.invalid(
                "nothing to change: give any of failureThreshold, recoveryTimeout, monitoringWindow"
            )
        return self

    def changes(self) -> dict[str, int]:
        """The given settings, named as BreakerStore.update_config names them."""
        given = {
            "failure_threshold": self.failure_threshold,
            "recovery_timeout_ms": self.recovery_timeout,
            "monitoring_window_ms": self.monitoring_window,
        }
        return {name: value for name, value in given.items() if value is not None}


def _store(request: web.Request) -> BreakerStore:
    return request.config_dict[BREAKERS]


def _handled(handler: Handler) -> Handler:
    """Map the store's errors to HTTP: unknown exchange 404, bad input 400 (database down: 503,
    by the admin app's middleware)."""

    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except UnknownExchange as exc:
            raise not_found(str(exc)) from None
        except (InvalidState, InvalidBreakerConfig) as exc:
            raise bad_request(str(exc)) from None

    return wrapper


def _exchange(request: web.Request) -> str:
    return inputs.known_exchange(request, request.match_info["exchange"])


@routes.get("/circuit-breaker/status")
@_handled
async def all_status(request: web.Request) -> web.Response:
    inputs.query(request, NoQuery)
    return web.json_response({"breakers": await _store(request).status_all()})


@routes.get("/circuit-breaker/{exchange}")
@_handled
async def one_status(request: web.Request) -> web.Response:
    inputs.query(request, NoQuery)
    return web.json_response(await _store(request).status(_exchange(request)))


@routes.post("/circuit-breaker/{exchange}/force-state")
@_handled
async def force_state(request: web.Request) -> web.Response:
    exchange, store = _exchange(request), _store(request)
    body = await inputs.body(request, ForceStateBody)
    cause = body.reason or f"forced {body.state.api} through the admin API"
    transition = await store.force_state(exchange, body.state, ACTOR_ADMIN, cause)
    return _result(transition, await store.status(exchange))


@routes.post("/circuit-breaker/{exchange}/reset")
@_handled
async def reset(request: web.Request) -> web.Response:
    exchange, store = _exchange(request), _store(request)
    body = await inputs.body(request, ResetBody)
    cause = body.reason or "reset through the admin API"
    transition = await store.reset(exchange, ACTOR_ADMIN, cause)
    return _result(transition, await store.status(exchange))


@routes.patch("/circuit-breaker/{exchange}/config")
@_handled
async def update_config(request: web.Request) -> web.Response:
    exchange, store = _exchange(request), _store(request)
    body = await inputs.body(request, ConfigBody)
    cause = body.reason or "settings changed through the admin API"
    status = await store.update_config(exchange, **body.changes(), actor=ACTOR_ADMIN, cause=cause)
    return web.json_response(status)


def _result(transition: Transition | None, status: dict[str, Any]) -> web.Response:
    """`transition` is null when the state did not move (it already was the one asked for)."""
    detail = transition.as_dict() if transition is not None else None
    return web.json_response({"transition": detail, "status": status})
