"""The seam between the simulated world and the production's pure incident core.

`Core` turns what the world knows (float seconds, its replicas' observations, the platform's
calls, the breaker, the pause) into the core's `Evidence`, calls
`exporter.runbook.incident.decision.decide` with the policy the production builds from the
config (`Policy.from_config`, the Kraken integration's settings) and hands back its `Decision`.
Lease tokens are drawn from a counter, so a run is a function of its seed. Nothing else of the
core is re-implemented here.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from exporter.controls.breaker import State
from exporter.runbook.evidence import Observation, PlatformCalls
from exporter.runbook.incident import decision as decisions
from exporter.runbook.incident.state import Breaker, Incident, Policy
from exporter.signals.kraken.integration import INTEGRATION as KRAKEN
from tests.simulator.params import Params

core = decisions
EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
EXCHANGE = "kraken"


def policy_of(p: Params) -> Policy:
    """The policy the production builds from the config (state.Policy.from_config)."""
    config = p.config()
    return Policy.from_config(config, KRAKEN.settings(config))


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
        paused: bool,
    ) -> core.Decision:
        evidence = core.Evidence(
            event=event, live=live, platform=platform, breaker=self._breakers[breaker, held],
            outage_alert_firing=outage_alert_firing, replica=replica, token=self._token,
            paused=paused,
        )  # fmt: skip
        decision = core.decide(incident, evidence, now, self.policy)
        if decision.lease is not None:  # a token is spent once it leases a verification
            self._tokens += 1
            self._token = uuid.UUID(int=self._tokens)
        return decision
