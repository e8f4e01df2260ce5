"""The simulated world's timers and sizes, taken from the shipped config unless a test says
otherwise: the simulator measures the product as it ships."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from exporter.config import Config


@dataclass(frozen=True)
class Params:
    # The probe's cadence (kraken.*): a round, then a delay chosen by the incident loop.
    probe_interval: float
    probe_jitter: float  # probe_interval * U(1 - jitter, 1 + jitter), as probing.py draws it
    doubt_interval: float
    incident_interval: float
    timeout: float  # one call's client timeout: a hanging exchange costs this per round
    call_spacing: float  # between the calls of one round (and of a verification)
    # The breaker row's defaults (breaker.*).
    failure_threshold: int
    recovery_timeout: float
    monitoring_window: float
    # The incident model's patience (incident.*).
    probation: float
    backoff_max: float
    replica_stale_after: float
    rate_restore_after: float
    platform_window: float
    platform_min_calls: int
    # The world around the exporter (not configuration of the exporter).
    replicas: int = 2
    purchase_rate: float = 1.0  # the platform's purchases (and so its calls) per second
    platform_timeout: float = 10.0  # the platform's own call timeout: a hang is logged this late
    round_calls: int = 5  # SystemStatus, Ticker, Depth, Time, Balance (keys configured)
    restart_delay: float = 5.0  # from a replica's process dying to its first round
    # Alertmanager: from the evidence holding to the page (scrape + evaluation + `for` +
    # group_wait, alerts/exchange.rules.yml's budget for ExchangeApiDown) and its
    # keep_firing_for after the evidence clears.
    alert_delay: float = 45.0
    alert_keep_firing: float = 180.0
    status_alert_delay: float = 90.0  # maintenance / trading restricted: `for: 1m` + the same
    auth_alert_delay: float = 90.0
    # Whether the platform's failing calls wake the replicas' loops for a round at once: not in
    # the shipped code; the proposal bench/stop_times.py measures.
    platform_wakeup: bool = False
    # Whether a round stops at its first unanswered call, 503 included (shipped: only timeouts,
    # network errors and rate limits stop it, so a 503 round takes its 4 call spacings).
    abort_on_unavailable: bool = False

    @classmethod
    def shipped(cls, config: Config | None = None, **world: Any) -> Params:
        c = config or Config()
        k, b, i = c.kraken, c.breaker, c.incident
        return cls(
            probe_interval=k.probe_interval, probe_jitter=0.1, doubt_interval=k.doubt_interval,
            incident_interval=k.incident_interval, timeout=k.timeout, call_spacing=k.call_spacing,
            failure_threshold=b.failure_threshold, recovery_timeout=b.recovery_timeout,
            monitoring_window=b.monitoring_window, probation=i.probation,
            backoff_max=i.backoff_max, replica_stale_after=i.replica_stale_after,
            rate_restore_after=i.rate_restore_after, platform_window=i.platform_window,
            platform_min_calls=i.platform_min_calls, **world,
        )  # fmt: skip

    def but(self, **changes: Any) -> Params:
        return replace(self, **changes)
