"""The seam between the simulated world and the production's pure incident core.

`Core` turns what the world knows (float seconds, its replicas' observations, the platform's
calls, the breaker) into the core's `Evidence`, calls `exporter.runbook.incident.decide.decide`
and hands back its `Decision`. Lease tokens are drawn from a counter, so a run is a function of
its seed. Nothing else of the core is re-implemented here.
"""

from __future__ import annotations

import importlib
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from exporter.controls.breaker import State
from exporter.runbook.evidence import Observation, PlatformCalls
from exporter.runbook.incident.state import Breaker, Incident, Policy
from tests.simulator.params import Params

# The module, not the function the package exports under the same name (`incident.decide`):
# the mutation tests patch its functions.
decisions = importlib.import_module("exporter.runbook.incident.decide")
core = decisions
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
EXCHANGE = "kraken"


def policy_of(p: Params) -> Policy:
    """The policy the production builds from the config (state.Policy.of), from the params."""
    return Policy(
        probation=p.probation, backoff_max=p.backoff_max, rate_restore_after=p.rate_restore_after,
        platform_min_calls=p.platform_min_calls, replica_stale_after=p.replica_stale_after,
        lowered_rate_multiplier=0.5, lease=6 * p.timeout + 30.0,
    )  # fmt: skip


@dataclass
class Core:
    params: Params

    def __post_init__(self) -> None:
        self.policy = policy_of(self.params)
        self._tokens = 1
        self._token = uuid.UUID(int=1)
        p = self.params
        self._breakers = {
            (state, held): Breaker(state, held, p.failure_threshold, p.recovery_timeout,
                                   p.monitoring_window)
            for state in State for held in (False, True)
        }  # fmt: skip

    def initial(self) -> Incident:
        return Incident(EXCHANGE)

    def decide(
        self,
        incident: Incident,
        now: datetime,
        event: core.Event,
        live: tuple[Observation, ...],
        platform: PlatformCalls,
        breaker: State,
        held: bool,
        *,
        outage_alert_firing: bool,
        replica: str,
    ) -> core.Decision:
        evidence = core.Evidence(
            event=event, live=live, platform=platform, breaker=self._breakers[breaker, held],
            outage_alert_firing=outage_alert_firing, replica=replica, token=self._token,
        )  # fmt: skip
        decision = core.decide(incident, evidence, now, self.policy)
        if decision.lease is not None:  # a token is spent once it leases a verification
            self._tokens += 1
            self._token = uuid.UUID(int=self._tokens)
        return decision
