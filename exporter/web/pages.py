"""The pages a person or a load balancer reads: the landing page, liveness and readiness."""

from __future__ import annotations

from aiohttp import web

from exporter.web.keys import DB_MONITOR


async def healthy(request: web.Request) -> web.Response:
    return web.Response(text="Healthy.\n")


async def ready(request: web.Request) -> web.Response:
    monitor = request.app[DB_MONITOR]
    if monitor.up:
        return web.Response(text="Ready.\n")
    reason = monitor.last_error or "not checked yet"
    return web.Response(status=503, text=f"Not ready: database unreachable: {reason}\n")


async def index(request: web.Request) -> web.Response:
    return web.Response(
        content_type="text/html",
        text=(
            "<html><head><title>LIQUID ABT exporter</title></head><body>"
            "<h1>LIQUID ABT exporter</h1><p><a href='/metrics'>Metrics</a></p>"
            "</body></html>"
        ),
    )
