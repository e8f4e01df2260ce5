"""Admin routes for the circuit breakers: the runbook's status, forceState, reset and updateConfig.

Mounted under /api/admin/. Every change is made as actor "admin" and audited by exporter.controls.breaker;
an admin's OPEN is a manual hold that automation never lifts.
"""

from __future__ import annotations

import functools
from typing import Any

from aiohttp import web

from exporter.controls.breaker import (
    ACTOR_ADMIN,
    BreakerStore,
    InvalidBreakerConfig,
    InvalidState,
    State,
    Transition,
    UnknownExchange,
)
from exporter.web.admin.common import Handler, bad_request, json_body, not_found
from exporter.web.keys import BREAKERS

routes = web.RouteTableDef()

MAX_TEXT = 500
# The runbook's updateConfig names (milliseconds) and the store's.
CONFIG_FIELDS = {
    "failureThreshold": "failure_threshold",
    "recoveryTimeout": "recovery_timeout_ms",
    "monitoringWindow": "monitoring_window_ms",
}
_MAX_INT4 = 2**31 - 1


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
    name = request.match_info["exchange"]
    configured = _store(request).exchanges
    if name not in configured:
        raise not_found(f"unknown exchange {name!r}: configured are {', '.join(configured)}")
    return name


async def _optional_body(request: web.Request) -> dict[str, Any]:
    """Reset takes an optional body: none at all is the same as `{}`."""
    return await json_body(request) if request.body_exists else {}


def _check_fields(body: dict[str, Any], allowed: set[str] | dict[str, str]) -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        allowed_list = ", ".join(sorted(allowed))
        raise bad_request(f"unknown field(s) {', '.join(unknown)}: allowed are {allowed_list}")


def _reason(body: dict[str, Any], default: str) -> str:
    reason = body.get("reason")
    if reason is None:
        return default
    if not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_TEXT:
        raise bad_request(f"reason: expected a non-empty string of at most {MAX_TEXT} characters")
    return reason.strip()


def _state(body: dict[str, Any]) -> State:
    if "state" not in body:
        raise bad_request("state: required, one of CLOSED, OPEN, HALF_OPEN")
    try:
        return State.parse(body["state"])
    except InvalidState as exc:
        raise bad_request(f"state: {exc}") from None


def _config_changes(body: dict[str, Any]) -> dict[str, int]:
    _check_fields(body, {*CONFIG_FIELDS, "reason"})
    changes = {}
    for name, column in CONFIG_FIELDS.items():
        if name not in body:
            continue
        value = body[name]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_INT4:
            unit = "" if name == "failureThreshold" else " (milliseconds)"
            raise bad_request(
                f"{name}: expected an integer from 1 to {_MAX_INT4}{unit}, got {value!r}"
            )
        changes[column] = value
    if not changes:
        raise bad_request(f"nothing to change: give any of {', '.join(CONFIG_FIELDS)}")
    return changes


@routes.get("/circuit-breaker/status")
@_handled
async def all_status(request: web.Request) -> web.Response:
    return web.json_response({"breakers": await _store(request).status_all()})


@routes.get("/circuit-breaker/{exchange}")
@_handled
async def one_status(request: web.Request) -> web.Response:
    return web.json_response(await _store(request).status(_exchange(request)))


@routes.post("/circuit-breaker/{exchange}/force-state")
@_handled
async def force_state(request: web.Request) -> web.Response:
    exchange, store = _exchange(request), _store(request)
    body = await json_body(request)
    _check_fields(body, {"state", "reason"})
    state = _state(body)
    cause = _reason(body, f"forced {state.api} through the admin API")
    transition = await store.force_state(exchange, state, ACTOR_ADMIN, cause)
    return _result(transition, await store.status(exchange))


@routes.post("/circuit-breaker/{exchange}/reset")
@_handled
async def reset(request: web.Request) -> web.Response:
    exchange, store = _exchange(request), _store(request)
    body = await _optional_body(request)
    _check_fields(body, {"reason"})
    transition = await store.reset(
        exchange, ACTOR_ADMIN, _reason(body, "reset through the admin API")
    )
    return _result(transition, await store.status(exchange))


@routes.patch("/circuit-breaker/{exchange}/config")
@_handled
async def update_config(request: web.Request) -> web.Response:
    exchange, store = _exchange(request), _store(request)
    body = await json_body(request)
    changes = _config_changes(body)
    cause = _reason(body, "settings changed through the admin API")
    status = await store.update_config(exchange, **changes, actor=ACTOR_ADMIN, cause=cause)
    return web.json_response(status)


def _result(transition: Transition | None, status: dict[str, Any]) -> web.Response:
    """`transition` is null when the state did not move (it already was the one asked for)."""
    detail = transition.as_dict() if transition is not None else None
    return web.json_response({"transition": detail, "status": status})
