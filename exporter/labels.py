"""The closed label sets shared by collectors, rules and dashboards (see docs/metrics.md)."""

from typing import Final

OTHER: Final = "other"

PURCHASE_STATUSES: Final = ("pending", "completed", "failed", "refunded")
SETTLED_STATUSES: Final = ("completed", "failed", "refunded")

REASON_CLASSES: Final = (
    "exchange_unavailable",
    "rate_limited",
    "auth",
    "network_timeout",
    "insufficient_funds",
    "invalid_amount",
    "maintenance",
    OTHER,
)

BREAKER_STATES: Final = ("closed", "open", "half_open")
# The incident model's phases (exporter/runbook/incident/) and causes; "alert" is an incident
# opened by an Alertmanager notification nothing probed.
INCIDENT_PHASES: Final = ("normal", "down", "probation")
INCIDENT_CAUSES: Final = ("none", "unavailable", "maintenance", "trading_restricted", "alert")
# The checks of recovery verification (exporter/signals/probe.py and each exchange's probe,
# runbook/recovery.py); any other name a verifier reports is counted as "other".
RECOVERY_CHECKS: Final = ("system_status", "price", "order_book", "balance", "verifier", OTHER)
# Failover (exporter/runbook/incident/routing.py): the guard that keeps the primary's purchases
# from being routed to a secondary.
ROUTE_GUARDS: Final = (
    "unverified",
    "secondary_stopped",
    "balance",
    "price",
    "depth",
    "no_reference",
    "admin_forbids",
    "admin_hold",
)
