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
