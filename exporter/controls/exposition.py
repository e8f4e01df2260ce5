"""Control metrics from the exporter's own tables: breaker, pause, retry queue, API rate.

These rows are shared by every replica and by the platform, so they are read like the platform's
data (in the background), not from this process's memory.
"""

from __future__ import annotations

import asyncpg
from prometheus_client.core import Metric

from exporter.config import Config
from exporter.labels import BREAKER_STATES
from exporter.signals.collectors.base import LabelledValues

CONTROLS_SQL = """
SELECT x.exchange,
       coalesce(b.state, 'closed') AS state,
       coalesce(b.failure_count, 0) AS failure_count,
       coalesce(b.manual_hold, false) AS breaker_held,
       coalesce(c.manual_hold, false) AS pause_held,
       coalesce(c.purchases_paused, false) AS paused,
       coalesce(extract(epoch FROM c.paused_at), 0)::float8 AS paused_at,
       coalesce(c.api_rate_multiplier, 1)::float8 AS rate_multiplier,
       (SELECT count(*) FROM liquid_abt.retry_queue q
         WHERE q.exchange = x.exchange AND q.status IN ('queued', 'in_progress')) AS queue_depth,
       (SELECT coalesce(extract(epoch FROM now() - min(q.enqueued_at)), 0)::float8
          FROM liquid_abt.retry_queue q
         WHERE q.exchange = x.exchange AND q.status IN ('queued', 'in_progress')) AS oldest_age
FROM unnest($1::text[]) AS x(exchange)
LEFT JOIN liquid_abt.circuit_breakers b ON b.exchange = x.exchange
LEFT JOIN liquid_abt.exchange_controls c ON c.exchange = x.exchange
"""


BACKLOG_SQL = "SELECT count(*) FROM liquid_abt.notifications WHERE processed_at IS NULL"


class ControlsSource:
    name = "controls"

    def __init__(self, config: Config) -> None:
        self._exchanges = list(config.exchanges)

    def _families(self) -> dict[str, LabelledValues]:
        x = self._exchanges
        return {
            "state": LabelledValues(
                "liquid_abt_circuit_breaker_state",
                "Circuit breaker state: 1 for the current state, 0 for the others.",
                ["exchange", "state"], x, BREAKER_STATES,
            ),
            "failures": LabelledValues(
                "liquid_abt_circuit_breaker_failures",
                "Failures counted by the circuit breaker in its monitoring window.",
                ["exchange"], x,
            ),
            "held": LabelledValues(
                "liquid_abt_manual_hold",
                "1 while an admin holds a control (breaker open, purchases paused); automation never lifts it.",
                ["exchange", "control"], x, ["circuit_breaker", "purchases"],
            ),
            "paused": LabelledValues(
                "liquid_abt_purchases_paused",
                "1 when automatic purchases on the exchange are paused.",
                ["exchange"], x,
            ),
            "paused_since": LabelledValues(
                "liquid_abt_purchases_paused_since_timestamp_seconds",
                "Unix time automatic purchases were paused; 0 when not paused.",
                ["exchange"], x,
            ),
            "depth": LabelledValues(
                "liquid_abt_retry_queue_depth",
                "Purchases waiting in the retry queue (queued or in progress).",
                ["exchange"], x,
            ),
            "oldest": LabelledValues(
                "liquid_abt_retry_queue_oldest_age_seconds",
                "Age of the oldest purchase waiting in the retry queue; 0 when empty.",
                ["exchange"], x,
            ),
            "rate": LabelledValues(
                "liquid_abt_api_rate_multiplier",
                "Multiplier applied to the platform's exchange API call rate (1 is normal).",
                ["exchange"], x,
            ),
        }  # fmt: skip

    async def collect(self, connection: asyncpg.Connection) -> list[Metric]:
        families = self._families()
        backlog = LabelledValues(
            "liquid_abt_webhook_unprocessed_notifications",
            "Recorded alert states whose actions have not run yet (a growing value: a stuck worker).",
            [],
        )
        backlog.set((), await connection.fetchval(BACKLOG_SQL))
        for row in await connection.fetch(CONTROLS_SQL, self._exchanges):
            exchange = row["exchange"]
            families["state"].set((exchange, row["state"]), 1)
            families["failures"].set((exchange,), row["failure_count"])
            families["held"].set((exchange, "circuit_breaker"), 1 if row["breaker_held"] else 0)
            families["held"].set((exchange, "purchases"), 1 if row["pause_held"] else 0)
            families["paused"].set((exchange,), 1 if row["paused"] else 0)
            families["paused_since"].set((exchange,), row["paused_at"] if row["paused"] else 0)
            families["depth"].set((exchange,), row["queue_depth"])
            families["oldest"].set((exchange,), row["oldest_age"])
            families["rate"].set((exchange,), row["rate_multiplier"])
        return [*(f.family() for f in families.values()), backlog.family()]
