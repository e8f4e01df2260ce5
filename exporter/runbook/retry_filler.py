"""The retry queue follows the purchases: every eligible failure is queued, whatever fires.

The runbook's retry query (bitcoin-purchase-failures.md, "Retry Failed Purchases") is about
eligibility, not alerts: failed, reason class not insufficient_funds / invalid_amount,
retry_count < 3, created within the last hour. Alerts are the wrong trigger for it: a cause alert
inhibits the failure-rate page whose webhook used to queue them, and an incident queues only what
had failed when it opened. So every replica runs this loop; it queues each exchange's eligible
failures every `retry.fill_interval`. Exactly once across replicas and restarts: the queue's
unique purchase_id decides every race. When to retry is not decided here: the platform's claim
hands nothing out while purchases are paused or the breaker is open (the gate).
"""

from __future__ import annotations

import asyncio
import logging
import random

import asyncpg

from exporter.config import Config
from exporter.controls import retry_queue
from exporter.database.background import run_forever
from exporter.signals.classify import ReasonClassifier

log = logging.getLogger(__name__)

CAUSE = "retry-eligible failed purchase"


class RetryFiller:
    """Queues the retry-eligible failed purchases of every configured exchange."""

    def __init__(
        self, pool: asyncpg.Pool, config: Config, rng: random.Random | None = None
    ) -> None:
        self._pool = pool
        self._config = config
        self._classifier = ReasonClassifier(config.purchases.failure_reasons)
        self._rng = rng or random.Random()

    async def fill(self) -> dict[str, int]:
        """One round: {exchange: purchases newly queued}; each exchange in its own transaction."""
        queued = {}
        for exchange in self._config.exchanges:
            queued[exchange] = await retry_queue.enqueue_retry_eligible(
                self._pool, exchange=exchange, classifier=self._classifier,
                purchases_config=self._config.purchases, retry_config=self._config.retry,
                cause=CAUSE, rng=self._rng, audit_nothing=False,
            )  # fmt: skip
        if any(queued.values()):
            log.info("failed purchases queued for retry", extra={"queued": queued})
        return queued

    async def run(self) -> None:
        """A round every `retry.fill_interval`, the first one interval after start-up (what
        failed meanwhile is still eligible: the runbook's window is an hour)."""
        interval = self._config.retry.fill_interval

        async def iteration() -> float:
            await self.fill()
            return interval

        await asyncio.sleep(interval)
        await run_forever("retry-filler", iteration, retry_after=interval)
