"""What the secondary exchanges' REST clients share: one bounded request, one exception type that
carries the probe's closed outcome, and typed market data in one shape for every exchange.

Kraken keeps its own client (exporter/signals/kraken/client.py, with its exact error strings);
these clients follow the same rules: one overall deadline per call, callers never see aiohttp
exceptions, and amounts are Decimal, never float.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Final

import aiohttp

from .outcomes import Outcome, classify_exception

# Replies to these calls are a few kilobytes; anything far larger is not the exchange.
MAX_BODY_BYTES: Final = 1 << 20
# A stale nonce or a timestamp outside the exchange's window is a configuration fault (replicas
# sharing a key, a clock going back), not a rejected key.
INVALID_NONCE: Final[Outcome] = Outcome.INVALID_NONCE


class ExchangeApiError(Exception):
    """A failed call: `outcome` for metrics and breakers, `message` for humans (no secrets)."""

    def __init__(self, exchange: str, outcome: Outcome, endpoint: str, message: str) -> None:
        super().__init__(f"{exchange} {endpoint}: {outcome.value}: {message}")
        self.exchange = exchange
        self.outcome = outcome
        self.endpoint = endpoint
        self.message = message


@dataclass(frozen=True)
class MarketStatus:
    """Whether the pair trades: `state` in Kraken's vocabulary (online, maintenance, cancel_only,
    post_only, limit_only); `raw` is the exchange's own words, for logs."""

    state: str
    raw: str

    @property
    def online(self) -> bool:
        return self.state == "online"


@dataclass(frozen=True)
class Ticker:
    """Top of the book and the last trade; a side is None when the exchange has no order on it."""

    pair: str
    bid: Decimal | None
    ask: Decimal | None
    last: Decimal | None


@dataclass(frozen=True)
class Level:
    price: Decimal
    volume: Decimal


@dataclass(frozen=True)
class OrderBook:
    """Bids best (highest) first, asks best (lowest) first, whatever order the exchange sent."""

    pair: str
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]


@dataclass(frozen=True)
class Balance:
    available: Decimal
    total: Decimal


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any  # parsed JSON, or None when the body was not JSON


def levels(raw: list[tuple[Any, Any]], *, descending: bool) -> tuple[Level, ...]:
    """Levels from (price, volume) pairs, sorted best first."""
    parsed = (Level(Decimal(str(p)), Decimal(str(v))) for p, v in raw)
    return tuple(sorted(parsed, key=lambda level: level.price, reverse=descending))


def decimal_or_none(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


@contextmanager
def parsing(exchange: str, endpoint: str) -> Iterator[None]:
    """Turn a reply of an unexpected shape into an api_error instead of a crash."""
    try:
        yield
    except (AttributeError, KeyError, IndexError, TypeError, ValueError, InvalidOperation) as exc:
        message = f"unexpected reply: {exc!r}"
        raise ExchangeApiError(exchange, Outcome.API_ERROR, endpoint, message) from None


class Transport:
    """One bounded HTTP exchange on a shared aiohttp session (the caller owns and closes it)."""

    def __init__(
        self,
        exchange: str,
        session: aiohttp.ClientSession,
        base_url: str,
        timeout: float,
        user_agent: str,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"the {exchange} client timeout must be positive, got {timeout!r}")
        self.exchange = exchange
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._session = session
        self._headers = {"User-Agent": user_agent, "Accept": "application/json"}

    async def request(
        self,
        endpoint: str,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        """The status and parsed body; ExchangeApiError when no complete reply came in time."""
        try:
            # One deadline over connect, headers and body: a server that trickles bytes
            # cannot hold the probe longer than `timeout`.
            async with asyncio.timeout(self.timeout):
                status, raw = await self._fetch(endpoint, method, path, params, body, headers)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            outcome = classify_exception(exc)
            raise ExchangeApiError(self.exchange, outcome, endpoint, self._describe(exc)) from None
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        return Reply(status, parsed)

    async def _fetch(
        self,
        endpoint: str,
        method: str,
        path: str,
        params: Mapping[str, str] | None,
        body: str | None,
        headers: Mapping[str, str] | None,
    ) -> tuple[int, bytes]:
        all_headers = {**self._headers, **(headers or {})}
        data = body.encode() if body is not None else None
        async with self._session.request(
            method, self.base_url + path, params=params, data=data, headers=all_headers
        ) as resp:
            raw = bytearray()
            async for chunk in resp.content.iter_chunked(64 * 1024):
                raw += chunk
                if len(raw) > MAX_BODY_BYTES:
                    raise ExchangeApiError(
                        self.exchange, Outcome.API_ERROR, endpoint, "reply body is too large"
                    )
            return resp.status, bytes(raw)

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, TimeoutError):
            return f"no complete reply within {self.timeout:g}s"
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class NonceSource:
    """Millisecond-clock nonces that never repeat or go back, even within one millisecond.

    An exchange (Kraken, Independent Reserve) rejects a nonce not greater than the last one seen for the key; the clock keeps
    nonces increasing across restarts, the counter keeps them increasing within one process.
    Two processes sharing one API key can still collide: give each replica its own key.
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._last = 0

    def __call__(self) -> int:
        self._last = max(int(self._clock() * 1000), self._last + 1)
        return self._last
