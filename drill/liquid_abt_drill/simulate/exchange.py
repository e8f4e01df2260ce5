"""The exchange as the simulated platform meets it: in a drill, purchases fail when Kraken does.

Without it the simulator's purchases follow a fixed failure mix whatever the Kraken-compatible
server does, and the platform's calls (api_call_logs) would say Kraken answers while it is down.
`ExchangeWatch` makes one public call a second (SystemStatus, then Ticker) and keeps what the
platform would have seen: nothing (healthy), how slow, or the failure its purchases meet now.
Private calls are not made: the platform's own API key is not the one a drill breaks.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Final

import aiohttp

from exporter.signals.kraken.client import KrakenClient, KrakenError

from .scenarios import Failure

ONLINE: Final = "online"
# What the platform's order says when Kraken is not online (the catalogue's words).
_STATUS_TEXT: Final = {
    "maintenance": "Kraken system status: maintenance",
    "cancel_only": "EService:Market in cancel_only mode",
    "post_only": "EService:Market in post_only mode",
}
SLOW_MS: Final = 1000.0  # a local call slower than this is the drill's `slow` mode


class ExchangeWatch:
    """The latest state of the exchange, refreshed every `interval` seconds by `run()`."""

    def __init__(
        self,
        base_url: str,
        classify: Callable[[str], str],
        *,
        timeout: float = 10.0,
        interval: float = 1.0,
        pair: str = "XBTAUD",
    ) -> None:
        self.base_url, self.classify = base_url, classify
        self.timeout, self.interval, self.pair = timeout, interval, pair
        self.observed = asyncio.Event()  # set once the first observation is in
        self.failure: Failure | None = None  # what a purchase placed now fails with
        self.delay_ms = 0.0  # what each call takes on top of its usual time (the `slow` mode)

    async def run(self, stop: asyncio.Event) -> None:
        async with aiohttp.ClientSession() as session:
            client = KrakenClient(session, self.base_url, self.timeout, user_agent="simulator")
            while not stop.is_set():
                await self.observe(client)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.interval)

    async def observe(self, client: KrakenClient) -> None:
        started = time.monotonic()
        try:
            status = await client.system_status()
            if status == ONLINE:
                await client.ticker(self.pair)
                text = None
            else:
                text = _STATUS_TEXT.get(status, f"Kraken system status: {status}")
        except KrakenError as exc:
            text = str(exc)
        elapsed_ms = (time.monotonic() - started) * 1000
        self.failure = None if text is None else self._failure(text, elapsed_ms)
        # Two calls were made: each took about half of it.
        self.delay_ms = elapsed_ms / 2 if text is None and elapsed_ms > SLOW_MS else 0.0
        self.observed.set()

    def _failure(self, text: str, elapsed_ms: float) -> Failure:
        # The price call fails, as fast or as slow as the exchange failed just now.
        return Failure(self.classify(text), text, "price", (max(1.0, elapsed_ms), 0))
