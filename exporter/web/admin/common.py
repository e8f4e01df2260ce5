"""The admin API under /api/admin/, mirroring the runbook's calls, behind its own bearer token.

Each concern adds a `routes` table in its own module (breaker.py, purchases.py, audit.py,
status.py); this module owns authentication and the JSON errors, shared by all of them; inputs.py
reads request bodies and query strings.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from exporter.database.pool import DATABASE_UNAVAILABLE

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_error(
    status: int, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status, headers=headers)


def bearer_matches(header: str | None, token: str) -> bool:
    """Constant-time comparison, so response timing reveals nothing about the token."""
    if not header or not header.startswith("Bearer "):
        return False
    try:
        presented = header[len("Bearer ") :].encode()
    except UnicodeEncodeError:  # undecodable bytes: not our token
        return False
    return hmac.compare_digest(presented, token.encode())


def auth_middleware(token: str | None) -> Middleware:
    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if token is None:
            return json_error(
                403,
                "the admin API is disabled: set LIQUID_ABT_ADMIN_TOKEN or LIQUID_ABT_ADMIN_TOKEN_FILE",
            )
        if not bearer_matches(request.headers.get("Authorization"), token):
            log.warning(
                "admin API: unauthorized", extra={"path": request.path, "remote": request.remote}
            )
            return json_error(
                401, "missing or wrong bearer token", hint="Authorization: Bearer $ADMIN_TOKEN"
            )
        return await handler(request)

    return authenticate


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every admin answer is JSON: the router's 404 and 405 too, and an unexpected error is a 500
    that points at the log (where its traceback is) rather than aiohttp's plain-text page."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        return _as_json(request, exc)
    except Exception:
        log.exception("admin API: unexpected error", extra={"path": request.path})
        return json_error(500, "internal error: the exporter's log has the details")


def _as_json(request: web.Request, exc: web.HTTPException) -> web.Response:
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        message = f"{request.method} is not allowed on {request.path}: use {allowed}"
        return json_error(405, message, headers={"Allow": allowed})
    if isinstance(exc, web.HTTPNotFound):
        message = f"no admin endpoint {request.path}: docs/admin.md lists them"
        return json_error(404, message)
    return json_error(exc.status, exc.text or exc.reason)


@web.middleware
async def database_unavailable(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every admin call needs the database: while it does not answer, 503 (try again later)."""
    try:
        return await handler(request)
    except DATABASE_UNAVAILABLE as exc:
        return json_error(503, f"database unavailable: {str(exc) or type(exc).__name__}")


def bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message}), content_type="application/json")


def not_found(message: str) -> web.HTTPNotFound:
    return web.HTTPNotFound(text=json.dumps({"error": message}), content_type="application/json")


def build_admin_app(token: str | None, route_tables: list[web.RouteTableDef]) -> web.Application:
    """A sub-application: handlers reach the parent's keys through `request.config_dict`."""
    admin = web.Application(middlewares=[json_errors, auth_middleware(token), database_unavailable])
    for routes in route_tables:
        admin.add_routes(routes)
    return admin
