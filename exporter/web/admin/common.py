"""The admin API under /api/admin/, mirroring the runbook's calls, behind its own bearer token.

Each concern adds a `routes` table in its own module (breaker.py, purchases.py); this module owns
authentication and JSON error handling, shared by all of them.
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


def json_error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


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
                401,
                "missing or wrong bearer token",
                headers_hint="Authorization: Bearer $ADMIN_TOKEN",
            )
        return await handler(request)

    return authenticate


@web.middleware
async def database_unavailable(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every admin call needs the database: while it does not answer, 503 (try again later)."""
    try:
        return await handler(request)
    except DATABASE_UNAVAILABLE as exc:
        return json_error(503, f"database unavailable: {str(exc) or type(exc).__name__}")


async def json_body(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 that says what is wrong with it."""
    try:
        body = await request.json(loads=json.loads)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": f"body is not valid JSON: {exc}"}),
            content_type="application/json",
        ) from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(
            text=json.dumps({"error": f"body must be a JSON object, got {type(body).__name__}"}),
            content_type="application/json",
        )
    return body


def bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message}), content_type="application/json")


def not_found(message: str) -> web.HTTPNotFound:
    return web.HTTPNotFound(text=json.dumps({"error": message}), content_type="application/json")


def build_admin_app(token: str | None, route_tables: list[web.RouteTableDef]) -> web.Application:
    """A sub-application: handlers reach the parent's keys through `request.config_dict`."""
    admin = web.Application(middlewares=[auth_middleware(token), database_unavailable])
    for routes in route_tables:
        admin.add_routes(routes)
    return admin
