"""The retry queue follows the purchases: every eligible failure is queued, whatever fires.

The runbook's retry query (bitcoin-purchase-failures.md, "Retry Failed Purchases") is about
eligibility, not alerts: failed, reason class not insufficient_funds / invalid_amount,
retry_count < 3, created within the last hour. Alerts are the wrong trigger for it: a cause alert
inhibits the failure-rate page whose webhook used to queue them, and an incident queues only what
had failed when it opened. So every replica runs this loop; it queues each exchange's eligible
failures within `retry.fill_interval` of their failure. Exactly once across replicas and
restarts: the queue's unique purchase_id decides every race. When to retry is not decided here:
the platform's claim hands nothing out while purchases are paused or the breaker is open (the
gate).

It does not poll: the platform watch (probing.py) reads the failed purchases not queued yet with
the platform's calls, at least every `retry.fill_interval`, and `notice` wakes the filler when one
is new to it; a round every FALLBACK seconds covers a lost wake-up. An idle replica so spends no
transaction on it.
"""

from __future__ import annotations

import asyncio
import logging
import random

import asyncpg

from exporter.config import Config
from exporter.controls import retry_queue
from exporter.database.background import Wakeup, run_forever
from exporter.signals.classify import ReasonClassifier

log = logging.getLogger(__name__)

CAUSE = "retry-eligible failed purchase"
# A round without a wake-up (a lost one, or an exchange nobody watches), at most this far apart.
FALLBACK = 60.0


class RetryFiller:
    """Queues the retry-eligible failed purchases of every configured exchange."""

    def __init__(
        self, pool: asyncpg.Pool, config: Config, rng: random.Random | None = None
    ) -> None:
        self._pool = pool
        self._config = config
        self._classifier = ReasonClassifier(config.purchases.failure_reasons)
        self._rng = rng or random.Random()
        self._wakeup = Wakeup()
        self._seen: dict[str, frozenset[str]] = {}  # the latest reading, per exchange
        self._dealt_with: dict[str, frozenset[str]] = {}  # what a round after it has seen

    def notice(self, exchange: str, unqueued: frozenset[str]) -> None:
        """The platform watch's reading: the failed purchases of `exchange` not in the retry
        queue. A round follows when one of them is new to the filler; those it leaves (reasons
        never retried) wake it no more."""
        self._seen[exchange] = unqueued
        if unqueued - self._dealt_with.get(exchange, frozenset()):
            self._wakeup.wake()

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
        """The first round one `retry.fill_interval` after start-up (what failed meanwhile is
        still eligible: the runbook's window is an hour); then a round when `notice` wakes it,
        or FALLBACK after the last one. A failed round is tried again after the interval."""
        interval = self._config.retry.fill_interval

        async def iteration() -> float:
            await self.round()
            return FALLBACK

        await asyncio.sleep(interval)
        await run_forever(
            "retry-filler", iteration, wakeup=self._wakeup,
            retry_after=interval,
        )  # fmt: skip

    async def round(self) -> dict[str, int]:
        """`fill`, after which what the watch had seen is dealt with: queued, or never to be
        (a failed round leaves it new, so the next one tries again)."""
        self._wakeup.clear()  # this round answers the wake-ups so far
        seen = dict(self._seen)
        queued = await self.fill()
        self._dealt_with.update(seen)
        return queued

    @property
    def woken(self) -> bool:
        """Whether a round is due at once (a wake-up not yet taken)."""
        return self._wakeup.pending
