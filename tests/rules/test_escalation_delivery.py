"""Escalations after the fix, through a real Alertmanager with the shipped routes (issue 19,
point 3): a page whose evidence cleared keeps firing for `keep_firing_for`, and its escalation
twin, which the escalation path receives, resolves at once: no escalation mail goes out.

The levels' timers are scaled from minutes to seconds; the receivers are one local webhook that
records which receiver each notification was for. Nothing here waits on a clock: a second
exchange whose evidence holds is escalated at each level, and its notification arriving says
the level's time has passed for the cleared one too (its groups were created first).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import yaml

from tests.harness import Stack, require_binary, wait_until
from tests.rules.shipped import ALERTMANAGER_CONFIG, ALERTS, load
from tests.rules.test_rules import _WebhookSink

ESCALATION_LEVELS = ("technical-lead", "engineering-manager", "cto")
# Each level's group_wait in seconds instead of minutes (10s, 2m, 5m, 15m, 30m).
SCALED = {"10s": "1s", "2m": "4s", "5m": "4s", "15m": "6s", "30m": "8s"}


def _scaled_config(sink_url: str) -> str:
    config = load(ALERTMANAGER_CONFIG)
    config["templates"] = [str(ALERTS / "liquid-abt.tmpl")]
    config["receivers"] = [
        {"name": r["name"], "webhook_configs": [{"url": sink_url, "send_resolved": True}]}
        for r in config["receivers"]
    ]
    (critical,) = [r for r in config["route"]["routes"] if r.get("receiver") == "oncall-pager"]
    for level in critical["routes"]:
        level["group_wait"] = SCALED[level["group_wait"]]
        level["group_interval"] = "2s"
    return yaml.safe_dump(config)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _pair(exchange: str, started: str) -> list[dict[str, Any]]:
    """ExchangeApiDown and its escalation twin, as Prometheus sends them."""
    labels = {
        "alertname": "ExchangeApiDown", "severity": "critical", "escalation": "2m",
        "alert_id": "exchange_api_down", "exchange": exchange, "source": "probe",
    }  # fmt: skip
    annotations = {"summary": f"{exchange} API is not answering (every exporter replica's probe)"}
    twin = {**labels, "alertname": "ExchangeApiDownEscalation", "escalate": "true"}
    return [
        {"labels": labels, "annotations": annotations, "startsAt": started},
        {"labels": twin, "annotations": annotations, "startsAt": started},
    ]


def _got(sink: _WebhookSink, receiver: str, exchange: str) -> list[str]:
    return [
        f"{a['labels']['alertname']}:{a['status']}"
        for _, body in list(sink.received)
        if body["receiver"] == receiver
        for a in body["alerts"]
        if a["labels"].get("exchange") == exchange
    ]


def test_a_cleared_cause_escalates_to_nobody_while_its_page_keeps_firing(stack: Stack) -> None:
    require_binary("prometheus-alertmanager", "alertmanager")
    sink = _WebhookSink()
    try:
        am = stack.alertmanager(_scaled_config(sink.url))
        started = _now()
        cleared, held = _pair("cleared", started), _pair("held", started)
        am.post_alerts(cleared)
        am.post_alerts(held)
        # Kraken is back on "cleared" a moment later: the page keeps firing (keep_firing_for),
        # the twin, without it, resolves at the next evaluation.
        page, twin = cleared
        am.post_alerts([page, {**twin, "endsAt": _now()}])
        am.post_alerts(held)
        since = time.monotonic()
        wait_until(
            lambda: all(
                "ExchangeApiDownEscalation:firing" in _got(sink, level, "held")
                for level in ESCALATION_LEVELS
            ),
            timeout=60,
            what=f"every level escalates the exchange still down (got {sink.received})",
        )
        print(f"every level reached after {time.monotonic() - since:.1f} s")
        assert _got(sink, "oncall-pager", "cleared") == ["ExchangeApiDown:firing"]
        for level in ESCALATION_LEVELS:
            assert _got(sink, level, "cleared") == [], level
        # The webhook (the exporter) gets the page, never the twin.
        assert _got(sink, "liquid-abt-exporter", "cleared") == ["ExchangeApiDown:firing"]
    finally:
        sink.close()
