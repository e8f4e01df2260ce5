"""The one way to run a background loop: it never dies, and it logs like an operator wants.

Every loop of the exporter (collectors, the database ping, the probe, the incident model, the
action worker, recovery verification, reconciliation, retention, the retry filler) runs its
iterations through `run_forever`. While the database is away the loop logs one line when it goes
and one when it is back, not a traceback per iteration; any other error is a bug and logs its
traceback, once per run of identical failures, so a persistent bug cannot fill a disk either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from exporter.database.pool import DATABASE_UNAVAILABLE

log = logging.getLogger(__name__)

# Seconds to wait before the next iteration; None waits for `wake()` alone.
Iteration = Callable[[], Awaitable[float | None]]


def describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


class Wakeup:
    """A sleep that `wake()` cuts short; a wake-up during an iteration is not lost."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def wake(self) -> None:
        self._event.set()

    @property
    def pending(self) -> bool:
        """A wake-up came that no wait has taken yet."""
        return self._event.is_set()

    def clear(self) -> None:
        """Take a pending wake-up: the work it asked for is about to be done."""
        self._event.clear()

    async def wait(self, seconds: float | None) -> None:
        # asyncio.timeout, not wait_for: Python 3.11's wait_for drops a cancellation that comes
        # in the tick the event is set, and the loop then outlives its app's shutdown.
        if seconds is None:
            await self._event.wait()
        elif seconds > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await self._event.wait()
        self._event.clear()


class LoopHealth:
    """Tracks one loop's failures so that each kind is logged once per episode."""

    def __init__(self, name: str, logger: logging.Logger) -> None:
        self.name = name
        self._log = logger
        self._database_away = False
        self._last_bug: str | None = None

    def succeeded(self) -> None:
        if self._database_away:
            self._log.info("database back; loop resumed", extra={"loop": self.name})
        self._database_away = False
        self._last_bug = None

    def failed(self, exc: Exception) -> None:
        if isinstance(exc, DATABASE_UNAVAILABLE):
            if not self._database_away:
                self._log.warning(
                    "database unavailable; loop waits for it",
                    extra={"loop": self.name, "error": describe(exc)},
                )
            self._database_away = True
            return
        signature = f"{type(exc).__name__}: {exc}"
        if signature == self._last_bug:
            return
        self._last_bug = signature
        self._log.error(
            "background loop iteration failed; it carries on",
            exc_info=exc,
            extra={"loop": self.name, "error": describe(exc)},
        )


async def run_forever(
    name: str,
    iteration: Iteration,
    *,
    wakeup: Wakeup | None = None,
    retry_after: float = 5.0,
    logger: logging.Logger | None = None,
) -> None:
    """Run `iteration` until cancelled; it returns how long to wait before the next one.

    A failed iteration is retried after `retry_after` seconds (or a wake-up).
    """
    health = LoopHealth(name, logger or log)
    wakeup = wakeup or Wakeup()
    while True:
        try:
            delay = await iteration()
        except Exception as exc:  # the loop outlives anything; the next iteration retries
            health.failed(exc)
            delay = retry_after
        else:
            health.succeeded()
        await wakeup.wait(delay)
