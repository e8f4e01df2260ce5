"""The simulated world's timers and sizes, taken from the shipped config unless a test says
otherwise: the simulator measures the product as it ships."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from exporter.config import Config
from exporter.runbook.probing import PLATFORM_WATCH_INTERVAL, PLATFORM_WATCH_QUIET


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
    # The platform watch's cadence (probing.py): each replica reads the platform's latest calls
    # every `watch_quiet_interval` while the newest was answered, every `watch_interval` once it
    # was not; a failing start wakes it for a round.
    watch_interval: float = PLATFORM_WATCH_INTERVAL
    watch_quiet_interval: float = PLATFORM_WATCH_QUIET

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

    def config(self) -> Config:
        """The config these params stand for: the shipped one with their numbers, so that the
        core's policy is built the production's way (state.Policy.from_config)."""
        c = Config()
        kraken = {"probe_interval": self.probe_interval, "doubt_interval": self.doubt_interval,
                  "incident_interval": self.incident_interval, "timeout": self.timeout,
                  "call_spacing": self.call_spacing}  # fmt: skip
        breaker = {"failure_threshold": self.failure_threshold,
                   "recovery_timeout": self.recovery_timeout,
                   "monitoring_window": self.monitoring_window}  # fmt: skip
        incident = {"probation": self.probation, "backoff_max": self.backoff_max,
                    "replica_stale_after": self.replica_stale_after,
                    "rate_restore_after": self.rate_restore_after,
                    "platform_window": self.platform_window,
                    "platform_min_calls": self.platform_min_calls}  # fmt: skip
        return c.model_copy(update={
            "kraken": c.kraken.model_copy(update=kraken),
            "breaker": c.breaker.model_copy(update=breaker),
            "incident": c.incident.model_copy(update=incident),
        })  # fmt: skip
