"""The breaker's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from exporter.controls.breaker.state import State, Transition


class BreakerMetrics:
    """`liquid_abt_circuit_breaker_transitions_total`: transitions this process won."""

    def __init__(self, registry: CollectorRegistry, exchanges: list[str]) -> None:
        self.transitions = Counter(
            "liquid_abt_circuit_breaker_transitions",
            "Circuit breaker transitions made by this process (other replicas count their own).",
            ["exchange", "from_state", "to_state"],
            registry=registry,
        )
        for exchange in exchanges:
            for a in State:
                for b in State:
                    if a is not b:
                        self.transitions.labels(exchange, a.value, b.value)

    def count(self, transitions: list[Transition]) -> None:
        for t in transitions:
            self.transitions.labels(t.exchange, t.from_state.value, t.to_state.value).inc()
