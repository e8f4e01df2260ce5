"""Incident drills: the runbooks' scenarios as timelines, on the whole real loop.

Each scenario starts PostgreSQL, the Kraken-compatible server, one or two exporters, the shipped
rules in a real Prometheus, the shipped `alerts/alertmanager.yml` in a real Alertmanager (its
human receivers pointed at a recording pager) and a platform that buys through the exchange
(platform.py). It injects a fault, lets time pass, and records when purchases stopped, when
retries were queued, what paged and how often, how often the breaker changed state and when
purchases resumed.

Timers are the shipped ones times `scale` (every duration in the exporter's config, every
`for:`, `keep_firing_for:` and range in the rules, every Alertmanager timer), and every figure is
reported back in shipped seconds: `scale=1` is the real thing (`make drill`), the tests run the
same scenarios at `scale=0.1`.
"""

from .run import main, run_all, run_scenario
from .scenarios import SCENARIOS, Scenario
from .timing import Timing

__all__ = ["SCENARIOS", "Scenario", "Timing", "main", "run_all", "run_scenario"]
