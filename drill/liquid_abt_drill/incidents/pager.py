"""The recording pager: every human receiver of alerts/alertmanager.yml, what it was sent."""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from exporter.database.embedded import free_port

from .timing import PAGER

# ---- the recording pager ---------------------------------------------------------------------


@dataclass(frozen=True)
class Alert:
    """One alert of a notification: its labels and annotations, for the summary a person reads."""

    name: str
    status: str
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_payload(cls, alert: Mapping[str, Any]) -> Alert:
        labels = dict(alert.get("labels") or {})
        return cls(labels.get("alertname", ""), alert["status"], labels,
                   dict(alert.get("annotations") or {}))  # fmt: skip


@dataclass(frozen=True)
class Notification:
    receiver: str
    at: float  # monotonic
    status: str
    alerts: tuple[Alert, ...]
    group_labels: Mapping[str, str] = field(default_factory=dict)

    @property
    def summary(self) -> str:
        return summary(self.alerts, self.group_labels)


def alert_summary(alert: Alert) -> str:
    """alerts/liquid-abt.tmpl's "liquid_abt.alert_summary": the summary annotation, or the
    alert's name and exchange when it has none."""
    if alert.annotations.get("summary"):
        return alert.annotations["summary"]
    exchange = alert.labels.get("exchange")
    return f"{alert.name} on {exchange}" if exchange else alert.name


def summary(alerts: Sequence[Alert], group_labels: Mapping[str, str] | None = None) -> str:
    """alerts/liquid-abt.tmpl's "liquid_abt.summary", what the page's reader sees: the first
    firing alert's summary and how many more fire; a group that only resolved says so. Rebuilt
    here rather than rendered because the recording pager receives the webhook payload, not the
    receivers' texts (tests/rules/test_templates.py renders the template itself)."""
    firing = [a for a in alerts if a.status == "firing"]
    shown, prefix = (firing, "") if firing else (list(alerts), "resolved: ")
    if not shown:
        return (group_labels or {}).get("alertname") or "LIQUID ABT alert"
    more = f" and {len(shown) - 1} more" if len(shown) > 1 else ""
    return f"{prefix}{alert_summary(shown[0])}{more}"


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
        alerts = tuple(Alert.from_payload(a) for a in body["alerts"])
        self.received.append(Notification(
            request.match_info["receiver"], time.monotonic(), body["status"], alerts,
            dict(body.get("groupLabels") or {}),
        ))  # fmt: skip
        return web.Response(text="ok")

    def pages(self) -> list[tuple[float, str, str]]:
        """(time, alertname, status) of every alert sent to the pager."""
        return [(n.at, a.name, a.status) for n in self.received if n.receiver == PAGER
                for a in n.alerts]  # fmt: skip

    def notifications(self, receivers: Collection[str]) -> list[Notification]:
        """Every notification sent to one of `receivers`, in the order received."""
        return [n for n in self.received if n.receiver in receivers]
