"""The runbook path's metrics: every action taken, by action and result (pre-initialised)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

ACTION_NAMES = (
    "open_breaker", "pause_purchases", "queue_retries", "lower_api_rate", "restore_api_rate",
    "request_recovery", "verify_recovery", "close_breaker", "resume_purchases", "reconcile",
)  # fmt: skip
ACTION_RESULTS = ("success", "failure", "skipped", "dry_run")


class ActionMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.actions = Counter(
            "liquid_abt_actions",
            "Runbook actions taken by the exporter, by action and result.",
            ["action", "result"],
            registry=registry,
        )
        for action in ACTION_NAMES:
            for result in ACTION_RESULTS:
                self.actions.labels(action, result)
