"""The background loops' sleep: a wake-up cuts it short, and a cancellation always ends it; the
database monitor's ping."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from exporter.database.background import Wakeup, run_forever
from exporter.database.pool import DatabaseMonitor


@pytest.mark.parametrize("ticks", range(6))
async def test_a_cancellation_in_the_same_tick_as_a_wake_up_is_not_lost(ticks: int) -> None:
    """Python 3.11's `asyncio.wait_for` returns the result, and drops the cancellation, when the
    awaited future completes in the tick the task is cancelled: a loop woken just as the app
    shuts down then went on forever, and shutdown waited out its grace for it (a 10 s teardown).
    Every offset between the wake-up and the cancellation is tried, the racy one included."""
    wakeup = Wakeup()
    iterations = 0

    async def iteration() -> float:
        nonlocal iterations
        iterations += 1
        return 60.0

    task = asyncio.create_task(run_forever("wake-and-cancel", iteration, wakeup=wakeup))
    await asyncio.sleep(0)  # the task runs its first iteration and sleeps
    assert iterations == 1
    wakeup.wake()
    for _ in range(ticks):
        await asyncio.sleep(0)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=5.0)
    assert done == {task} and task.cancelled()


async def test_a_wake_up_cuts_the_sleep_short_and_is_not_lost_mid_iteration() -> None:
    wakeup = Wakeup()
    woken = asyncio.Event()
    calls = 0

    async def iteration() -> float:
        nonlocal calls
        calls += 1
        if calls == 1:
            wakeup.wake()  # during the iteration: the sleep after it must end at once
        if calls == 2:
            woken.set()
        return 60.0

    task = asyncio.create_task(run_forever("wake", iteration, wakeup=wakeup))
    await asyncio.wait_for(woken.wait(), 5.0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert calls == 2


async def test_a_statement_answered_elsewhere_stands_for_the_monitors_ping() -> None:
    """The platform watch's reading, every few seconds, tells the monitor the database answered:
    an idle replica sends no `SELECT 1` of its own. Without such an answer the monitor pings,
    and finds a database that went away (here: nothing listens on the port)."""
    pool = await asyncpg.create_pool("postgresql://postgres@127.0.0.1:9/none", min_size=0)
    try:
        monitor = DatabaseMonitor(pool, interval=60.0, timeout=2.0)
        monitor.up = True  # its last ping succeeded
        monitor.answered()
        assert await monitor.iteration() == 60.0 and monitor.up, "no ping: the watch's answer"
        monitor = DatabaseMonitor(pool, interval=60.0, timeout=2.0)
        monitor.up = True
        assert await monitor.iteration() == 60.0 and not monitor.up, "pinged, and refused"
    finally:
        await pool.close()
