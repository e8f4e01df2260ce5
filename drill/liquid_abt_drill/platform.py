"""The LIQUID ABT platform, reduced to what an incident drill needs, as docs/platform-integration.md
describes it: before every automatic purchase it reads the gate (pause, breaker, API rate); it
places the order on the exchange for real (here a signed private call to the Kraken-compatible
server, so outages, rate limits and refused keys fail it as they would); it logs the call in
`api_call_logs` and the purchase in `bitcoin_purchases` with the exchange's own error text; and it
buys due retries from the retry queue.

Given secondary exchanges (`secondaries`), it follows routes as docs/platform-integration.md's
routed platform does: it buys where the gate's `buy_on` says (Kraken, the secondary purchases are
routed to, or nowhere while it is NULL), claims retries with the routed claim and buys each on its
`retry_on`. Without them it reads only the pause and the breaker, as a platform that ignores
`buy_on` does.

Unlike `simulate`, whose failures follow a scripted mix, every failure here is one the exchange
really gave, so the exporter sees the world the way it would in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Protocol

import aiohttp
import asyncpg

from exporter.config import RetryConfig
from exporter.controls import gate, retry_queue
from exporter.signals.btcmarkets.client import BtcMarketsClient
from exporter.signals.independentreserve.client import IndependentReserveClient
from exporter.signals.kraken.client import KrakenClient, KrakenError
from exporter.signals.rest import ExchangeApiError

log = logging.getLogger(__name__)

PURCHASE_SQL = """
INSERT INTO bitcoin_purchases (tenant_id, amount_aud, status, failure_reason, exchange_provider,
                               retry_count, created_at)
VALUES ($1, $2, $3, $4, $5, 0, now())
"""
# docs/platform-integration.md 3.5: a retry updates the failed row in place, never inserts one.
RETRIED_SQL = """
UPDATE bitcoin_purchases
SET status = CASE WHEN $2 THEN 'completed' ELSE status END, retry_count = retry_count + 1,
    failure_reason = coalesce($3, failure_reason)
WHERE id::text = $1
"""
CALL_SQL = """
INSERT INTO api_call_logs (provider, endpoint, success, response_time, error_message)
VALUES ($1, 'placeOrder', $2, $3, $4)
"""


@dataclass
class PlatformCounts:
    attempted: int = 0
    completed: int = 0
    failed: int = 0
    held_back: int = 0  # not attempted: paused or breaker open
    retries_bought: int = 0
    retries_failed: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    # Purchases (retries included) bought, and failed, on each exchange.
    bought_on: dict[str, int] = field(default_factory=dict)
    failed_on: dict[str, int] = field(default_factory=dict)
    # Every order, retries included: (time.monotonic() when the platform started the gate read
    # or the retry claim that sent it there, the exchange, bought). The drill compares these
    # with the gate's route changes: an order sent after the gate stopped naming an exchange
    # would be one the gate routed there again.
    orders: list[tuple[float, str, bool]] = field(default_factory=list)


class _Exchange(Protocol):
    async def balance(self) -> object: ...


# A secondary's client by exchange name: its signed private call stands for the order.
_SECONDARY_CLIENTS = {
    "independentreserve": IndependentReserveClient,
    "btcmarkets": BtcMarketsClient,
}


@dataclass(frozen=True)
class SecondaryAccount:
    """The platform's account on a secondary exchange: its API and the platform's own key."""

    url: str
    api_key: str
    api_secret: str


class Platform:
    """Buys at `rate_per_minute` (scaled by the exporter's API rate multiplier) until stopped."""

    def __init__(
        self,
        database_url: str,
        kraken_url: str,
        api_key: str,
        api_secret: str,
        *,
        rate_per_minute: float = 60.0,
        exchange: str = "kraken",
        timeout: float = 10.0,
        retry_config: RetryConfig | None = None,
        secondaries: Mapping[str, SecondaryAccount] | None = None,
    ) -> None:
        self._database_url = database_url
        self._kraken = (kraken_url, api_key, api_secret, timeout)
        self.rate = rate_per_minute
        self.exchange = exchange
        self._retry = retry_config or RetryConfig()
        self._secondaries = dict(secondaries or {})
        unknown = sorted(set(self._secondaries) - set(_SECONDARY_CLIENTS))
        if unknown:
            raise ValueError(f"no platform client for {unknown}: use {sorted(_SECONDARY_CLIENTS)}")
        self.counts = PlatformCounts()
        self._n = 0

    async def run(self, stop: asyncio.Event) -> None:
        conn = await asyncpg.create_pool(self._database_url, min_size=1, max_size=8)
        assert conn is not None
        url, key, secret, timeout = self._kraken
        try:
            async with aiohttp.ClientSession() as session:
                clients: dict[str, _Exchange] = {
                    self.exchange: KrakenClient(session, url, timeout, key, secret)
                }
                for name, account in self._secondaries.items():
                    clients[name] = _SECONDARY_CLIENTS[name](
                        session, account.url, timeout, account.api_key, account.api_secret
                    )
                orders: set[asyncio.Task[None]] = set()
                while not stop.is_set():
                    started = time.monotonic()
                    current = await gate.purchase_gate(conn, self.exchange)
                    # Following routes: `buy_on`; otherwise today's answer for this exchange.
                    buy_on = (
                        current.buy_on
                        if self._secondaries
                        else (self.exchange if current.may_buy else None)
                    )
                    client = clients.get(buy_on) if buy_on is not None else None
                    if buy_on is not None and client is not None:
                        order = asyncio.create_task(self._buy(conn, client, buy_on, started))
                        orders.add(order)
                        order.add_done_callback(orders.discard)
                        await self._buy_due_retries(conn, clients)
                    else:
                        self.counts.held_back += 1
                    spacing = 60.0 / (self.rate * current.api_rate_multiplier)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            stop.wait(), max(0.0, spacing - (time.monotonic() - started))
                        )
                for order in list(orders):
                    order.cancel()
        finally:
            await conn.close()

    async def _order(self, client: _Exchange, on: str, sent: float) -> tuple[bool, int, str | None]:
        """Place one order on `on`, where a read begun at `sent` (monotonic) sent it: (success,
        milliseconds, the exchange's error text)."""
        started = time.monotonic()
        error = None
        try:
            await client.balance()  # the signed private call that stands for the order
        except KrakenError as exc:
            error = f"Kraken API {exc.outcome.value}: {exc.message}"
        except ExchangeApiError as exc:
            error = f"{exc.exchange} API {exc.outcome.value}: {exc.message}"
        ms = round((time.monotonic() - started) * 1000)
        tally = self.counts.failed_on if error else self.counts.bought_on
        tally[on] = tally.get(on, 0) + 1
        self.counts.orders.append((sent, on, error is None))
        return error is None, ms, error

    async def _buy(self, conn: asyncpg.Pool, client: _Exchange, on: str, sent: float) -> None:
        self._n += 1
        tenant = f"tenant-{self._n % 40}"
        ok, ms, error = await self._order(client, on, sent)
        self.counts.attempted += 1
        if ok:
            self.counts.completed += 1
        else:
            self.counts.failed += 1
            self.counts.reasons[error or ""] = self.counts.reasons.get(error or "", 0) + 1
        await conn.execute(CALL_SQL, on, ok, ms, error)
        await conn.execute(
            PURCHASE_SQL, tenant, Decimal("250.00"), "completed" if ok else "failed", error, on
        )

    async def _buy_due_retries(self, conn: asyncpg.Pool, clients: Mapping[str, _Exchange]) -> None:
        claimed = time.monotonic()
        if self._secondaries:
            entries = await retry_queue.claim_routed(conn, limit=5)
        else:
            entries = await retry_queue.claim_due(conn, limit=5)
        for entry in entries:
            on = entry.retry_on or entry.exchange
            client = clients.get(on)
            if client is None:  # an exchange this platform has no account on: not tried
                await retry_queue.release(conn, entry.id)
                continue
            ok, _, error = await self._order(client, on, claimed)
            await conn.execute(RETRIED_SQL, entry.purchase_id, ok, error)
            if ok:
                await retry_queue.complete(conn, entry.id)
                self.counts.retries_bought += 1
            else:
                await retry_queue.fail(conn, entry.id, error or "failed", self._retry)
                self.counts.retries_failed += 1
