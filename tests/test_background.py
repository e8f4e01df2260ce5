"""The background loops' sleep: a wake-up cuts it short, and a cancellation always ends it."""

from __future__ import annotations

import asyncio

import pytest

from exporter.database.background import Wakeup, run_forever


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
