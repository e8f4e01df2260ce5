"""The incident loop of one exchange: probe, record the round, let the model decide, verify.

It owns the probe's cadence, from the exchange's own settings (signals/exchange.py): a health
check every `probe_interval` (10 s) while all is well, a quick second look after
a round the API did not answer (`doubt_interval`), and a round every `incident_interval` while an
incident is open, so recovery and relapses are seen within seconds. An exchange nobody probes
still gets decisions: on wake-ups (alerts) and, during an incident, on the same short interval.

The platform's own calls are the earliest evidence: it buys all the time, the probe only every
`probe_interval`. So a second loop, the platform watch, reads the platform's latest calls (one
statement, platform_watch.py); when they start failing for want of an answer, a loop that is
waiting (not mid-round, its last round answered) runs its next round at once. That round,
unanswered on every replica, and the platform's failing calls stop purchases together
(evidence.judge), without waiting for `failure_threshold` rounds.

The watch reads every PLATFORM_WATCH_QUIET seconds while the newest call was answered, and every
PLATFORM_WATCH_INTERVAL once it was not. Calls fail `platform_min_calls` in a row before they
count; at one purchase a second the third comes 2 s after the first, so the quiet cadence (3 s)
finds the failing start no later than a reading every second would, at a third of an idle
replica's reads. The same reading tells the retry filler about failed purchases not queued yet.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

from exporter.database.background import Wakeup, run_forever
from exporter.runbook.incident import NORMAL, Incident, IncidentModel
from exporter.runbook.platform_watch import PlatformReading
from exporter.runbook.recovery import Verifier, verify
from exporter.signals.exchange import UNPROBED, Probe, ProbeSettings, RoundResult

# Without a probe and without an incident, decide now and then anyway (a lost wake-up).
_IDLE_EVALUATION = 60.0
# How often the platform watch reads the platform's latest calls (the simulator's cadence too):
# every second once the newest call went unanswered, every PLATFORM_WATCH_QUIET seconds before.
PLATFORM_WATCH_INTERVAL = 1.0
PLATFORM_WATCH_QUIET = 3.0


class IncidentLoop:
    def __init__(
        self,
        exchange: str,
        model: IncidentModel,
        settings: ProbeSettings = UNPROBED,
        probe: Probe | None = None,
        verifier: Verifier | None = None,
        *,
        on_reading: Callable[[str, PlatformReading], None] | None = None,
        read_failures: bool = False,
        quiet_interval: float = PLATFORM_WATCH_QUIET,
    ) -> None:
        """`on_reading(exchange, reading)` hears of every platform watch reading (the database
        monitor, and the retry filler, for which `read_failures` adds the failed purchases not
        queued yet); `quiet_interval` is at most PLATFORM_WATCH_QUIET (shorter when the filler
        promises less)."""
        self.exchange = exchange
        self._model = model
        self._settings = settings
        self._probe = probe
        self._verifier = verifier if verifier is not None or probe is None else probe.recovery_check
        self._wakeup = Wakeup()
        # Waiting between iterations, and the last round answered: the platform watch may wake it.
        self._idle = False
        self._platform_failing = False
        self._on_reading = on_reading
        self._read_failures = read_failures
        self._quiet = min(quiet_interval, PLATFORM_WATCH_QUIET)

    def wake(self) -> None:
        self._wakeup.wake()

    async def run(self) -> None:
        await asyncio.gather(
            run_forever(
                f"incident-{self.exchange}", self.iteration, wakeup=self._wakeup,
                retry_after=self._settings.probe_interval if self._probe else _IDLE_EVALUATION,
            ),
            run_forever(
                f"platform-watch-{self.exchange}", self.watch,
                retry_after=PLATFORM_WATCH_INTERVAL,
            ),
        )  # fmt: skip

    async def watch(self) -> float:
        """Wake the loop for a round when the platform's latest calls start failing (once per
        episode: a failed round brings the short `doubt_interval` anyway)."""
        reading = await self._model.watch_platform(self.exchange, failures=self._read_failures)
        failing = reading.failing(self._model.platform_min_calls)
        if failing and not self._platform_failing and self._idle:
            self.wake()
        self._platform_failing = failing
        if self._on_reading is not None:
            self._on_reading(self.exchange, reading)
        return PLATFORM_WATCH_INTERVAL if reading.unanswered else self._quiet

    async def iteration(self) -> float:
        self._idle = False
        result: RoundResult | None = None
        if self._probe is not None:
            result = await self._probe.run_once()
            incident, lease = await self._model.observe(self.exchange, result)
        else:
            incident, lease = await self._model.evaluate(self.exchange)
        if lease is not None:
            await verify(self._model, lease, self._verifier)
            self._idle = True
            return self._settings.incident_interval
        self._idle = result is None or result.available
        return self._next_delay(result, incident)

    def _next_delay(self, result: RoundResult | None, incident: Incident) -> float:
        if result is not None and not result.available:
            return self._settings.doubt_interval
        if incident.phase != NORMAL or incident.rate_lowered_at is not None:
            return self._settings.incident_interval
        if self._probe is None:
            return _IDLE_EVALUATION
        return self._settings.probe_interval * random.uniform(0.9, 1.1)
