"""Alertmanager webhook payloads (version 4), as Alertmanager 0.25 sends them."""

from __future__ import annotations

from typing import Any


def alert(
    alertname: str,
    *,
    status: str = "firing",
    exchange: str | None = "kraken",
    fingerprint: str | None = None,
    starts_at: str = "2026-11-25T10:00:00Z",
    annotations: dict[str, str] | None = None,
    **labels: str,
) -> dict[str, Any]:
    all_labels = {"alertname": alertname, "severity": "critical", **labels}
    if exchange is not None:
        all_labels["exchange"] = exchange
    return {
        "status": status,
        "labels": all_labels,
        "annotations": {"summary": f"{alertname} on {exchange}", **(annotations or {})},
        "startsAt": starts_at,
        "endsAt": "2026-11-25T10:30:00Z" if status == "resolved" else "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus.local/graph",
        "fingerprint": fingerprint or f"fp-{alertname}-{exchange}",
    }


def notification(alerts: list[dict[str, Any]], status: str | None = None) -> dict[str, Any]:
    status = status or ("firing" if any(a["status"] == "firing" for a in alerts) else "resolved")
    return {
        "version": "4",
        "groupKey": '{}/{severity="critical"}:{alertname="ExchangeApiDown", exchange="kraken"}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "liquid-abt-exporter",
        "groupLabels": {"alertname": alerts[0]["labels"].get("alertname", "")} if alerts else {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.local",
        "alerts": alerts,
    }
