"""`wait_until`, the project's one way to wait: a condition and a deadline, never a bare sleep."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn, TypeVar, overload

WAIT_TIMEOUT = 20.0  # programs pass their own, longer, start-up timeout

T = TypeVar("T")


class StackError(Exception):
    """A program of the stack did not start, answer or behave in time."""


class DeadlinePassed(StackError, TimeoutError):
    """`wait_until` gave up: the condition did not hold by its deadline."""


# --- Waiting --------------------------------------------------------------------------------


class _Poll:
    """One deadline; an OSError (a port not listening yet) counts as "not yet"."""

    def __init__(
        self, timeout: float, what: str, on_timeout: Callable[[str], NoReturn] | None
    ) -> None:
        self.deadline = time.monotonic() + timeout
        self.timeout, self.what, self.on_timeout = timeout, what, on_timeout
        self.last_error = ""

    def call(self, condition: Callable[[], Any]) -> Any:
        try:
            return condition()
        except OSError as exc:
            self.last_error = f" (last error: {exc})"
            return None

    async def settle(self, pending: Awaitable[Any]) -> Any:
        try:
            return await pending
        except OSError as exc:
            self.last_error = f" (last error: {exc})"
            return None

    def give_up_if_due(self) -> None:
        if time.monotonic() < self.deadline:
            return
        message = f"{self.what} not met within {self.timeout:g}s{self.last_error}"
        if self.on_timeout is not None:
            self.on_timeout(message)
        raise DeadlinePassed(message)


@overload
def wait_until(  # type: ignore[overload-overlap]
    condition: Callable[[], Awaitable[T]],
    *,
    timeout: float = ...,
    interval: float = ...,
    what: str = ...,
    on_timeout: Callable[[str], NoReturn] | None = ...,
) -> Awaitable[T]: ...
@overload
def wait_until(
    condition: Callable[[], T],
    *,
    timeout: float = ...,
    interval: float = ...,
    what: str = ...,
    on_timeout: Callable[[str], NoReturn] | None = ...,
) -> T: ...
def wait_until(
    condition: Callable[[], Any],
    *,
    timeout: float = WAIT_TIMEOUT,
    interval: float = 0.1,
    what: str = "condition",
    on_timeout: Callable[[str], NoReturn] | None = None,
) -> Any:
    """Poll `condition()` until it returns something truthy, and return that; at the deadline
    call `on_timeout(message)` (which should raise) or raise `DeadlinePassed`.

    An async condition (one returning an awaitable) makes this a coroutine: `await
    wait_until(async_check)` in async code, `wait_until(check)` in blocking code, one meaning.
    """
    poll = _Poll(timeout, what, on_timeout)
    result = poll.call(condition)
    if inspect.isawaitable(result):
        return _wait_async(condition, result, poll, interval)
    while not result:
        poll.give_up_if_due()
        time.sleep(interval)
        result = poll.call(condition)
    return result


async def _wait_async(
    condition: Callable[[], Any], first: Awaitable[Any], poll: _Poll, interval: float
) -> Any:
    result = await poll.settle(first)
    while not result:
        poll.give_up_if_due()
        await asyncio.sleep(interval)
        result = await poll.settle(poll.call(condition))
    return result
