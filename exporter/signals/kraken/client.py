"""An async client for the few Kraken REST endpoints the probe and the recovery check call.

Every call is bounded by one overall deadline and fails with one exception type, KrakenError,
whose `outcome` is the probe's closed outcome set: callers never see aiohttp exceptions.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Final
from urllib.parse import urlencode

import aiohttp

from .outcomes import Outcome, classify, kraken_errors
from .signing import NonceSource, decode_secret, sign

DEFAULT_BASE_URL: Final = "https://api.kraken.com"
PUBLIC_ENDPOINTS: Final = ("SystemStatus", "Ticker", "Depth", "Time")
PRIVATE_ENDPOINTS: Final = ("Balance",)
ENDPOINTS: Final = PUBLIC_ENDPOINTS + PRIVATE_ENDPOINTS
SYSTEM_STATUSES: Final = ("online", "maintenance", "cancel_only", "post_only")
# Kraken's replies to these calls are a few kilobytes; anything far larger is not Kraken.
MAX_BODY_BYTES: Final = 1 << 20


class KrakenError(Exception):
    """A failed call: `outcome` for metrics and breakers, `message` for humans (no secrets)."""

    def __init__(self, outcome: Outcome, endpoint: str, message: str) -> None:
        super().__init__(f"{endpoint}: {outcome.value}: {message}")
        self.outcome = outcome
        self.endpoint = endpoint
        self.message = message


@dataclass(frozen=True)
class Level:
    """One order book level."""

    price: Decimal
    volume: Decimal
    timestamp: int


@dataclass(frozen=True)
class OrderBook:
    """Top of the book for one pair, under Kraken's canonical pair name."""

    pair: str
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]


@dataclass(frozen=True)
class ServerTime:
    unixtime: int
    rfc1123: str


@contextmanager
def _parsing(endpoint: str) -> Iterator[None]:
    """Turn a reply of an unexpected shape into an api_error instead of a crash."""
    try:
        yield
    except (KeyError, IndexError, TypeError, ValueError, InvalidOperation) as exc:
        raise KrakenError(Outcome.API_ERROR, endpoint, f"unexpected reply: {exc!r}") from None


def _single_pair(endpoint: str, result: Mapping[str, Any]) -> tuple[str, Any]:
    """The one entry of a per-pair result, under Kraken's canonical name (XXBTZAUD for XBTAUD)."""
    if len(result) != 1:
        raise KrakenError(Outcome.API_ERROR, endpoint, f"expected one pair, got {len(result)}")
    return next(iter(result.items()))


def _levels(raw: list[list[Any]]) -> tuple[Level, ...]:
    return tuple(Level(Decimal(p), Decimal(v), int(t)) for p, v, t, *_ in raw)


class KrakenClient:
    """Kraken REST calls on a shared aiohttp session (the caller owns and closes it)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = 10.0,
        api_key: str | None = None,
        api_secret: str | None = None,
        *,
        nonce: Callable[[], int] | None = None,
        user_agent: str = "liquid-abt-exporter",
    ) -> None:
        if (api_key is None) != (api_secret is None):
            raise ValueError("the Kraken API key and secret must be configured together")
        self._session = session
        self._base_url = base_url.rstrip("/")
        self._timeout = timeout
        self._api_key = api_key
        self._secret = decode_secret(api_secret) if api_secret is not None else None
        self._nonce = nonce or NonceSource()
        self._headers = {"User-Agent": user_agent}
        # Nonces must reach Kraken in order: concurrent private calls could overtake each other.
        self._private_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"KrakenClient({self._base_url!r}, has_credentials={self.has_credentials})"

    @property
    def has_credentials(self) -> bool:
        return self._api_key is not None

    @property
    def timeout(self) -> float:
        return self._timeout

    async def system_status(self) -> str:
        """Kraken's trading status: online, maintenance, cancel_only or post_only."""
        result = await self._request("SystemStatus", "GET", "/0/public/SystemStatus")
        with _parsing("SystemStatus"):
            return str(result["status"])

    async def ticker(self, pair: str = "XBTAUD") -> Decimal:
        """Last trade price of `pair`."""
        result = await self._request("Ticker", "GET", "/0/public/Ticker", params={"pair": pair})
        _, info = _single_pair("Ticker", result)
        with _parsing("Ticker"):
            return Decimal(info["c"][0])

    async def depth(self, pair: str = "XBTAUD", count: int = 10) -> OrderBook:
        """The best `count` bids and asks of `pair`."""
        params = {"pair": pair, "count": str(count)}
        result = await self._request("Depth", "GET", "/0/public/Depth", params=params)
        name, book = _single_pair("Depth", result)
        with _parsing("Depth"):
            return OrderBook(name, _levels(book["bids"]), _levels(book["asks"]))

    async def server_time(self) -> ServerTime:
        result = await self._request("Time", "GET", "/0/public/Time")
        with _parsing("Time"):
            return ServerTime(int(result["unixtime"]), str(result["rfc1123"]))

    async def balance(self) -> dict[str, Decimal]:
        """Balances by Kraken asset name (private: needs a key with the Query Funds permission)."""
        result = await self._private("Balance")
        with _parsing("Balance"):
            return {asset: Decimal(amount) for asset, amount in result.items()}

    async def _private(self, endpoint: str) -> dict[str, Any]:
        if self._api_key is None or self._secret is None:
            raise KrakenError(Outcome.AUTH_ERROR, endpoint, "no API key configured")
        path = f"/0/private/{endpoint}"
        async with self._private_lock:
            nonce = self._nonce()
            body = urlencode({"nonce": nonce})
            headers = {
                "API-Key": self._api_key,
                "API-Sign": sign(path, nonce, body, self._secret),
                "Content-Type": "application/x-www-form-urlencoded",
            }
            return await self._request(endpoint, "POST", path, data=body, headers=headers)

    async def _request(
        self,
        endpoint: str,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        data: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        try:
            # One deadline over connect, headers and body: a server that trickles bytes
            # cannot hold the probe longer than `timeout`.
            async with asyncio.timeout(self._timeout):
                status, raw = await self._fetch(endpoint, method, path, params, data, headers)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise KrakenError(classify(exc=exc), endpoint, _describe(exc, self._timeout)) from None
        return _result(endpoint, status, raw)

    async def _fetch(
        self,
        endpoint: str,
        method: str,
        path: str,
        params: Mapping[str, str] | None,
        data: str | None,
        headers: Mapping[str, str] | None,
    ) -> tuple[int, bytes]:
        url = self._base_url + path
        all_headers = {**self._headers, **(headers or {})}
        body = data.encode() if data is not None else None
        async with self._session.request(
            method, url, params=params, data=body, headers=all_headers
        ) as resp:
            raw = bytearray()
            async for chunk in resp.content.iter_chunked(64 * 1024):
                raw += chunk
                if len(raw) > MAX_BODY_BYTES:
                    raise KrakenError(Outcome.API_ERROR, endpoint, "reply body is too large")
            return resp.status, bytes(raw)


def _describe(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"no complete reply within {timeout:g}s"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _result(endpoint: str, status: int, raw: bytes) -> dict[str, Any]:
    """The `result` object of a successful reply; KrakenError for anything else."""
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    errors = body.get("error") if isinstance(body, dict) else None
    if not (isinstance(errors, list) and all(isinstance(e, str) for e in errors)):
        errors = None
    outcome = classify(status=status, errors=errors)
    if outcome is not Outcome.SUCCESS:
        if errors is None:
            detail = "reply is not Kraken JSON"
        else:
            detail = ", ".join(kraken_errors(errors)) or "no error message"
        raise KrakenError(outcome, endpoint, f"HTTP {status}: {detail}")
    result = body.get("result") if isinstance(body, dict) else None
    if not isinstance(result, dict):
        raise KrakenError(Outcome.API_ERROR, endpoint, f"HTTP {status}: reply has no result")
    return result
