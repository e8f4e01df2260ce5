"""The incident of one exchange as data: its phases, the row, a verification lease, the breaker as
a decision sees it, and the policy (the config's numbers) a decision applies. No I/O here."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from exporter.config import Config
from exporter.controls.breaker import Snapshot, State
from exporter.signals.exchange import ProbeSettings

NORMAL, DOWN, PROBATION = "normal", "down", "probation"
PHASES = (NORMAL, DOWN, PROBATION)

# What a verification lease adds to the longest a recovery check may take: a verifier that
# crashed frees it soon after.
LEASE_MARGIN = 30.0


@dataclass(frozen=True)
class Incident:
    """The incident row of one exchange."""

    exchange: str
    phase: str = NORMAL
    cause: str | None = None
    started_at: datetime | None = None
    healthy_since: datetime | None = None
    relapses: int = 0
    next_attempt_at: datetime | None = None
    probation_until: datetime | None = None
    last_closed_at: datetime | None = None
    lease_until: datetime | None = None
    lease_token: uuid.UUID | None = None
    rate_lowered_at: datetime | None = None
    rate_limited_seen_at: datetime | None = None

    def values(self) -> tuple[Any, ...]:
        return (
            self.exchange, self.phase, self.cause, self.started_at, self.healthy_since,
            self.relapses, self.next_attempt_at, self.probation_until, self.last_closed_at,
            self.lease_until, self.lease_token, self.rate_lowered_at, self.rate_limited_seen_at,
        )  # fmt: skip


@dataclass(frozen=True)
class Route:
    """Where the primary's purchases go (liquid_abt.purchase_routes; routing.py decides it)."""

    exchange: str
    routed_to: str | None = None  # the secondary purchases are routed to; None: not routed
    since: datetime | None = None  # when routed_to last changed
    valid_until: datetime | None = None  # the gate stops routing after it
    reason: str | None = None
    blocked_guard: str | None = None  # the guard that keeps purchases from being routed
    override: str | None = None  # an admin's: a secondary's name, "none", or None (automatic)
    failovers: int = 0  # routes started, ever (liquid_abt_purchase_failovers_total)
    # The primary's last good mid and when its check read it: the reference price once its
    # checks fail (their rows then hold no quote).
    reference_mid: Decimal | None = None
    reference_at: datetime | None = None


@dataclass(frozen=True)
class VerificationLease:
    """A recovery verification this replica may run; the token fences it if the lease is lost."""

    exchange: str
    token: uuid.UUID
    cause: str | None


@dataclass(frozen=True)
class Breaker:
    """The breaker as a decision reads it (seconds, not the row's milliseconds)."""

    state: State = State.CLOSED
    held: bool = False  # an admin's OPEN: automation never lifts it
    failure_threshold: int = 2
    recovery_timeout: float = 30.0
    monitoring_window: float = 600.0

    @classmethod
    def of(cls, snapshot: Snapshot) -> Breaker:
        return cls(
            snapshot.state, snapshot.held, snapshot.failure_threshold,
            snapshot.recovery_timeout_ms / 1000.0, snapshot.monitoring_window_ms / 1000.0,
        )  # fmt: skip


@dataclass(frozen=True)
class Policy:
    """The numbers a decision applies, from the config (seconds)."""

    probation: float = 90.0
    backoff_max: float = 600.0
    rate_restore_after: float = 20.0
    platform_min_calls: int = 3
    replica_stale_after: float = 60.0
    lowered_rate_multiplier: float = 0.5
    lease: float = 90.0  # how long a verification lease lasts

    @classmethod
    def from_config(cls, config: Config, settings: ProbeSettings) -> Policy:
        """The policy for one exchange: the config's numbers, and a lease from the exchange's
        probe settings (the simulator builds it the same way)."""
        i = config.incident
        return cls(
            probation=i.probation, backoff_max=i.backoff_max,
            rate_restore_after=i.rate_restore_after, platform_min_calls=i.platform_min_calls,
            replica_stale_after=i.replica_stale_after,
            lowered_rate_multiplier=config.receiver.lowered_rate_multiplier,
            lease=settings.verification_time + LEASE_MARGIN,
        )  # fmt: skip


def backoff(recovery_timeout: float, relapses: int, cap: float) -> float:
    """Seconds before the next verification after `relapses` re-opens or failed attempts."""
    return float(min(cap, recovery_timeout * 2 ** min(relapses, 32)))
