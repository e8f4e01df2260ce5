"""`demo --drill`: a Kraken outage from first failure to worked-off retry queue, as a timeline.

The drill reads the loop the way the platform does (the pause flag, the breaker state and the
retry queue in PostgreSQL, docs/platform-integration.md) and the probe from /metrics. It prints
one line per step as it happens, timed from the moment the outage began, and ends when every
queued retry has been tried again, saying what is left and why.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final, TypeVar

import asyncpg

from .stack import DeadlinePassed, KrakenServerProcess, http_request, wait_until

T = TypeVar("T")

EXCHANGE: Final = "kraken"
FIRING: Final = 'ALERTS{alertname="ExchangeApiDown", alertstate="firing"}'

_CONTROLS_SQL: Final = """
SELECT coalesce(b.state, 'closed') AS breaker, coalesce(c.purchases_paused, false) AS paused
FROM (SELECT $1::text AS exchange) x
LEFT JOIN liquid_abt.circuit_breakers b USING (exchange)
LEFT JOIN liquid_abt.exchange_controls c USING (exchange)
"""
_QUEUE_SQL: Final = """
SELECT count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE status = 'queued' AND next_attempt_at <= now()) AS due,
       count(*) FILTER (WHERE status = 'queued' AND next_attempt_at > now()) AS waiting,
       count(*) FILTER (WHERE status = 'in_progress') AS in_progress,
       count(*) FILTER (WHERE status = 'failed') AS gave_up,
       min(next_attempt_at) FILTER (WHERE status = 'queued') AS next_attempt
FROM liquid_abt.retry_queue WHERE exchange = $1
"""


@dataclass(frozen=True)
class Target:
    """The started demo, as far as the drill needs it."""

    database_url: str
    exporter_url: str
    kraken: KrakenServerProcess
    prometheus_url: str | None  # None: Prometheus and Alertmanager are not installed
    deadline: float  # seconds for each step
    logs: Path


@dataclass(frozen=True)
class Controls:
    breaker: str  # closed, open, half_open
    paused: bool


RECOVERED: Final = Controls(breaker="closed", paused=False)


@dataclass(frozen=True)
class Queue:
    succeeded: int
    due: int
    waiting: int
    in_progress: int
    gave_up: int
    next_attempt: datetime | None

    @property
    def total(self) -> int:
        return self.succeeded + self.due + self.waiting + self.in_progress + self.gave_up

    @property
    def worked_off(self) -> bool:
        """Every retry was tried since it became due: none due, none being bought."""
        return self.due == 0 and self.in_progress == 0

    def describe(self) -> str:
        text = f"retry queue worked off: {self.succeeded} bought again"
        if self.waiting:
            at = self.next_attempt.strftime("%H:%M:%S %Z") if self.next_attempt else "later"
            text += (f"; {self.waiting} failed again and wait for their next attempt "
                     f"(backoff, next at {at})")  # fmt: skip
        if self.gave_up:
            text += f"; {self.gave_up} used every attempt and need a person (audit log)"
        return text


class Timeline:
    """Prints each step as it happens: seconds since the outage began, then what happened."""

    def __init__(self) -> None:
        self.outage_began: float | None = None
        print("\ndrill timeline (seconds since the Kraken outage began)")
        print(f"{'time':>8}  step")

    def step(self, text: str) -> None:
        if self.outage_began is None:
            when = "before"
        else:
            when = f"+{time.monotonic() - self.outage_began:.1f}s"
        print(f"{when:>8}  {text}", flush=True)

    def outage(self, text: str) -> None:
        self.outage_began = time.monotonic()
        self.step(text)


async def run_drill(demo: Target) -> int:
    """Run the steps against the started demo; 0 when all happened in time, 1 otherwise."""
    conn = await asyncpg.connect(demo.database_url)
    try:
        await _steps(demo, conn, Timeline())
    except DeadlinePassed as exc:
        print(f"drill failed: {exc}; the logs are in {demo.logs}/*.log", flush=True)
        return 1
    finally:
        await conn.close()
    print("drill passed", flush=True)
    return 0


async def _steps(demo: Target, conn: asyncpg.Connection, timeline: Timeline) -> None:
    async def controls() -> Controls:
        return Controls(**dict(await conn.fetchrow(_CONTROLS_SQL, EXCHANGE)))

    async def queue() -> Queue:
        return Queue(**dict(await conn.fetchrow(_QUEUE_SQL, EXCHANGE)))

    def until(what: str, check: Callable[[], Awaitable[T]]) -> Awaitable[T]:
        return wait_until(check, timeout=demo.deadline, interval=0.5, what=what)

    async def probe_up() -> bool:
        _, text = await asyncio.to_thread(http_request, f"{demo.exporter_url}/metrics")
        return f'liquid_abt_exchange_up{{exchange="{EXCHANGE}"}} 1.0' in text

    async def alert_firing() -> bool:
        query = urllib.parse.urlencode({"query": FIRING})
        _, text = await asyncio.to_thread(
            http_request, f"{demo.prometheus_url}/api/v1/query?{query}"
        )
        return '"alertname":"ExchangeApiDown"' in text

    await until("the first healthy probe round", probe_up)
    await until(
        "a healthy loop before the outage", lambda: _holds(controls, lambda c: c == RECOVERED)
    )
    timeline.step("Kraken healthy: probe up, breaker closed, purchases flowing")
    demo.kraken.set_mode("down")
    timeline.outage("Kraken outage injected: its API refuses connections")
    await until("the breaker opening", lambda: _holds(controls, lambda c: c.breaker == "open"))
    timeline.step("circuit breaker OPEN: the platform stops sending orders to Kraken")
    await until("purchases pausing", lambda: _holds(controls, lambda c: c.paused))
    queued = (await queue()).total
    timeline.step(f"purchases paused, {queued} failed purchases queued for retry")
    if demo.prometheus_url is not None:
        await until("ExchangeApiDown firing", alert_firing)
        timeline.step("ExchangeApiDown fired: Alertmanager pages and calls the webhook")
    demo.kraken.set_mode("healthy")
    timeline.step("Kraken back: its API answers again")
    await until("verified recovery", lambda: _holds(controls, lambda c: c.breaker == "closed"))
    still_paused = (await controls()).paused
    timeline.step("recovery verified: breaker CLOSED"
                  + ("; purchases stay paused for the probation" if still_paused else ""))  # fmt: skip
    await until("purchases resuming", lambda: _holds(controls, lambda c: c == RECOVERED))
    timeline.step("purchases resumed, queued retries due")
    worked_off = await until("the retry queue worked off", lambda: _worked_off(queue))
    assert worked_off is not None  # wait_until returns only what is truthy
    timeline.step(worked_off.describe())


async def _holds(read: Callable[[], Awaitable[Controls]], test: Callable[[Controls], bool]) -> bool:
    return test(await read())


async def _worked_off(read: Callable[[], Awaitable[Queue]]) -> Queue | None:
    queue = await read()
    return queue if queue.worked_off else None
