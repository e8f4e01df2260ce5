"""Customer-notice metrics from the outbox table, shared by every replica and the notifier.

Read in the background like the other controls (a scrape never waits on the database): notices
by exchange, kind and state, and how long the oldest ready notice has waited for the notifier.
"""

from __future__ import annotations

import asyncpg
from prometheus_client.core import Metric

from exporter.config import NOTICE_KINDS, Config
from exporter.controls.notices import NOTICE_STATES
from exporter.signals.collectors.base import LabelledValues

STATES_SQL = """
SELECT exchange, kind, state, count(*) AS notices
FROM liquid_abt.customer_notices
WHERE exchange = ANY($1::text[])
GROUP BY 1, 2, 3
"""

# Waiting for the notifier: queued and ready, or claimed by a notifier whose lease ran out.
OLDEST_READY_SQL = """
SELECT exchange, extract(epoch FROM now() - min(ready_at))::float8 AS age
FROM liquid_abt.customer_notices
WHERE exchange = ANY($1::text[])
  AND state IN ('queued', 'claimed')
  AND ready_at <= now()
  AND (state = 'queued' OR claimed_at <= now() - make_interval(secs => $2::float8))
GROUP BY 1
"""


class NoticesSource:
    name = "notices"

    def __init__(self, config: Config) -> None:
        self._exchanges = list(config.exchanges)
        self._lease = config.notices.claim_lease

    async def collect(self, connection: asyncpg.Connection) -> list[Metric]:
        x = self._exchanges
        states = LabelledValues(
            "liquid_abt_customer_notices",
            "Customer notices in the outbox by kind and state (queued, held, claimed, sent, "
            "failed: gave up, cancelled); finished ones until notices.retention.",
            ["exchange", "kind", "state"], x, NOTICE_KINDS, NOTICE_STATES,
        )  # fmt: skip
        oldest = LabelledValues(
            "liquid_abt_customer_notices_oldest_ready_age_seconds",
            "How long the oldest ready customer notice has waited for the platform's notifier "
            "(queued, or claimed past its lease); 0 when none waits.",
            ["exchange"], x,
        )  # fmt: skip
        for row in await connection.fetch(STATES_SQL, x):
            states.set((row["exchange"], row["kind"], row["state"]), row["notices"])
        for row in await connection.fetch(OLDEST_READY_SQL, x, self._lease):
            oldest.set((row["exchange"],), max(0.0, row["age"]))
        return [states.family(), oldest.family()]
