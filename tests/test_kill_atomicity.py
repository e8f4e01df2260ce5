"""SIGKILL the exporter at random moments while it stops purchases for an outage: afterwards
nothing is half-done (breaker, pause, queued retries and the incident commit together or not at
all), and after a restart nothing is done twice: not the incident, not its customer notice."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import asyncpg

from exporter.database.embedded import free_port
from exporter.database.pool import Connection
from liquid_abt_drill.stack import Stack, exporter_config, wait_until

KILLS = 8


def config(kraken_url: str) -> str:
    return exporter_config(
        kraken_url, interval="200ms",
        kraken={"probe_interval": "200ms", "doubt_interval": "20ms", "incident_interval": "100ms",
                "call_spacing": "1ms", "timeout": "500ms"},
        breaker={"failure_threshold": 1},
        # The retry filler queues the same purchases by itself (tests/test_retry_filler.py);
        # here the queue must tell whether the incident's own commit happened.
        retry={"fill_interval": "1h"},
        # The notice planner runs through the kills too: incident_started is due 100 ms after
        # the incident's first evidence, so kills land before, during and after its insert.
        notices={"started_after": "100ms", "interval": "50ms", "idle_interval": "50ms"},
    )  # fmt: skip


STATE_SQL = """
SELECT coalesce(i.phase, 'normal') AS phase, coalesce(b.state, 'closed') AS breaker,
       coalesce(c.purchases_paused, false) AS paused,
       (SELECT count(*) FROM liquid_abt.retry_queue) AS queued,
       (SELECT count(*) FROM liquid_abt.incident_periods) AS periods,
       (SELECT count(*) FROM liquid_abt.audit_log WHERE action = 'pause_purchases') AS pauses,
       (SELECT count(*) FROM liquid_abt.customer_notices) AS notices
FROM (SELECT 'kraken' AS exchange) x
LEFT JOIN liquid_abt.incidents i USING (exchange)
LEFT JOIN liquid_abt.circuit_breakers b USING (exchange)
LEFT JOIN liquid_abt.exchange_controls c USING (exchange)
"""
NOTHING = {"phase": "normal", "breaker": "closed", "paused": False, "queued": 0, "periods": 0,
           "pauses": 0, "notices": 0}  # fmt: skip
ALL = {"phase": "down", "breaker": "open", "paused": True, "queued": 5, "periods": 1, "pauses": 1,
       "notices": 1}  # fmt: skip
# Killed after the incident committed but before the planner's insert: the restart plans it.
STOPPED = {**ALL, "notices": 0}


async def reset(db: asyncpg.Connection) -> None:
    await db.execute(
        """TRUNCATE liquid_abt.incidents, liquid_abt.probe_observations,
                    liquid_abt.circuit_breakers, liquid_abt.exchange_controls,
                    liquid_abt.retry_queue, liquid_abt.incident_periods, liquid_abt.audit_log,
                    liquid_abt.customer_notices"""
    )


async def test_a_kill_mid_decision_leaves_all_or_nothing_and_a_restart_finishes_it_once(
    database: Connection, db: asyncpg.Connection, tmp_path: Path
) -> None:
    await db.execute(
        """INSERT INTO bitcoin_purchases (tenant_id, amount_aud, status, failure_reason,
                                          exchange_provider, created_at)
           SELECT 't' || i, 100, 'failed', 'EService:Unavailable', 'kraken', now()
           FROM generate_series(1, 5) i"""
    )
    rng = random.Random(20261130)
    seen: list[str] = []
    with Stack(tmp_path) as stack:
        kraken = await asyncio.to_thread(stack.kraken_server)
        config_yaml = config(kraken.url)
        for _ in range(KILLS):
            await reset(db)
            kraken.set_mode("healthy")
            port = free_port()  # the restart comes back on the same address, as a replica would
            exporter = await asyncio.to_thread(
                stack.exporter, database_url=database.dsn, config_yaml=config_yaml, port=port
            )
            kraken.set_mode("down")
            await asyncio.sleep(rng.uniform(0.0, 0.4))  # the kill point, drawn at random
            exporter.process.kill()
            await asyncio.to_thread(exporter.stop)
            after_kill = dict(await db.fetchrow(STATE_SQL))
            assert after_kill in (NOTHING, STOPPED, ALL), f"half-done after a kill: {after_kill}"
            stage = {"all": ALL, "stopped": STOPPED, "nothing": NOTHING}
            seen += [name for name, state in stage.items() if state == after_kill]

            restarted = await asyncio.to_thread(
                stack.exporter, database_url=database.dsn, config_yaml=config_yaml, port=port
            )

            async def finished() -> bool:
                return dict(await db.fetchrow(STATE_SQL)) == ALL

            await wait_until(finished, timeout=20, interval=0.1, what="the outage handled once")
            await asyncio.to_thread(restarted.stop)
            assert dict(await db.fetchrow(STATE_SQL)) == ALL, "nothing doubled by the restart"
            kinds = await db.fetch("SELECT kind, state FROM liquid_abt.customer_notices")
            assert [tuple(r) for r in kinds] == [("incident_started", "queued")]
    print(
        f"{KILLS} kills: {seen.count('all')} after the notice, {seen.count('stopped')} after "
        f"the commit and before the notice, {seen.count('nothing')} before"
    )
