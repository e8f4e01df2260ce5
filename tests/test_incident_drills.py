"""Issue 10's incidents as timelines on the whole real loop: PostgreSQL, the Kraken-compatible
server, two exporter processes, Prometheus with the shipped rules, Alertmanager with the shipped
routes (its human receivers recorded by a pager), and a platform buying through the exchange.

The scenarios are `liquid-abt-drill drill`'s (drill/liquid_abt_drill/incidents.py), with every timer
at a twentieth of the shipped one; each asserts its timeline in shipped seconds: when purchases
stopped, what paged and how often, how often the breaker moved, when purchases resumed. `make
drill` runs the same scenarios with the shipped timers.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.database.pool import Connection
from liquid_abt_drill.incidents import SCENARIOS, Timing, run_scenario

SCALE = 0.05


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", list(SCENARIOS))
async def test_incident_timeline(name: str, database: Connection, tmp_path: Path) -> None:
    scenario = SCENARIOS[name]
    timeline = await run_scenario(scenario, tmp_path / name, Timing(SCALE), database.dsn)
    print(timeline.table())
    assert scenario.expect(timeline) == [], timeline.table()
