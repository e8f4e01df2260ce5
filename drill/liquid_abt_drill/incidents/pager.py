"""The recording pager: every human receiver of alerts/alertmanager.yml, what it was sent."""

from __future__ import annotations

import time
from dataclasses import dataclass

from aiohttp import web

from exporter.database.embedded import free_port

from .timing import PAGER

# ---- the recording pager ---------------------------------------------------------------------


@dataclass(frozen=True)
class Notification:
    receiver: str
    at: float  # monotonic
    status: str
    alerts: tuple[tuple[str, str], ...]  # (alertname, status)


class Pager:
    """Every human receiver of alerts/alertmanager.yml, recording what it was sent."""

    def __init__(self) -> None:
        self.received: list[Notification] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{receiver}", self._receive)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _receive(self, request: web.Request) -> web.Response:
        body = await request.json()
        alerts = tuple((a["labels"].get("alertname", ""), a["status"]) for a in body["alerts"])
        self.received.append(
            Notification(request.match_info["receiver"], time.monotonic(), body["status"], alerts)
        )
        return web.Response(text="ok")

    def pages(self) -> list[tuple[float, str, str]]:
        """(time, alertname, status) of every alert sent to the pager."""
        return [(n.at, name, status) for n in self.received if n.receiver == PAGER
                for name, status in n.alerts]  # fmt: skip
