"""The runbook path's metrics: every action taken, by action and result (pre-initialised)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

ACTION_NAMES = (
    "open_breaker", "pause_purchases", "queue_retries", "lower_api_rate", "restore_api_rate",
    "request_recovery", "verify_recovery", "close_breaker", "resume_purchases", "reconcile",
    "route_purchases",
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
        self.dead_letters = Counter(
            "liquid_abt_webhook_dead_letters",
            "Alert states given up after too many failed attempts (see the notification's "
            "last_error); their actions did not run.",
            registry=registry,
        )


class IncidentMetrics:
    """This replica's view of the evidence the incident model decided on (the phase itself is
    shared state, exported from PostgreSQL with the other controls)."""

    def __init__(self, registry: CollectorRegistry, exchanges: list[str]) -> None:
        self.voters = Gauge(
            "liquid_abt_exchange_probing_replicas",
            "Replicas whose probe rounds are recent enough to vote on the exchange being down.",
            ["exchange"],
            registry=registry,
        )
        self.failing = Gauge(
            "liquid_abt_exchange_failing_replicas",
            "Replicas that saw the exchange API not answer the failure threshold of rounds in a row.",
            ["exchange"],
            registry=registry,
        )
        self.isolated = Gauge(
            "liquid_abt_exchange_isolated",
            "1 when this replica sees the exchange API not answer while another replica sees it "
            "answer: this replica's network, not the exchange; purchases are not stopped for it.",
            ["exchange"],
            registry=registry,
        )
        for exchange in exchanges:
            for gauge in (self.voters, self.failing, self.isolated):
                gauge.labels(exchange)

    def observe(self, exchange: str, voters: int, failing: int, isolated: bool) -> None:
        self.voters.labels(exchange).set(voters)
        self.failing.labels(exchange).set(failing)
        self.isolated.labels(exchange).set(1 if isolated else 0)
