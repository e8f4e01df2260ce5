"""An async client for the few BTC Markets API v3 calls a secondary-exchange probe needs.

Public: GET /v3/markets (each market's trading status), /v3/markets/{id}/ticker,
/v3/markets/{id}/orderbook, /v3/time; private: GET /v3/accounts/me/balances, signed with the
BM-AUTH-* headers (a read-only key is enough). Shapes as published at
https://docs.btcmarkets.net/v3/. Every call is bounded by one deadline and fails with
ExchangeApiError, whose `outcome` is the probe's closed outcome set.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

import aiohttp

from ..outcomes import Outcome
from ..rest import (
    Balance,
    ExchangeApiError,
    MarketStatus,
    OrderBook,
    Ticker,
    Transport,
    decimal_or_none,
    levels,
    parsing,
)
from .outcomes import classify, error_code
from .signing import decode_secret, sign

EXCHANGE: Final = "btcmarkets"
DEFAULT_BASE_URL: Final = "https://api.btcmarkets.net"
PUBLIC_ENDPOINTS: Final = ("markets", "ticker", "orderbook", "time")
PRIVATE_ENDPOINTS: Final = ("balances",)
ENDPOINTS: Final = PUBLIC_ENDPOINTS + PRIVATE_ENDPOINTS
# A market's `status` in /v3/markets, in Kraken's vocabulary; only online takes market orders.
MARKET_STATES: Final = {
    "Online": "online",
    "Post Only": "post_only",
    "Limit Only": "limit_only",
    "Cancel Only": "cancel_only",
    "Offline": "maintenance",
}


class BtcMarketsClient:
    """BTC Markets REST calls on a shared aiohttp session (the caller owns and closes it)."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = 10.0,
        api_key: str | None = None,
        api_secret: str | None = None,
        *,
        market_id: str = "BTC-AUD",
        clock: Callable[[], float] = time.time,
        user_agent: str = "liquid-abt-exporter",
    ) -> None:
        if (api_key is None) != (api_secret is None):
            raise ValueError("the BTC Markets API key and secret must be set together")
        if not market_id or "/" in market_id:
            raise ValueError(f"a BTC Markets market id looks like BTC-AUD, got {market_id!r}")
        self._http = Transport(EXCHANGE, session, base_url, timeout, user_agent)
        self._api_key = api_key
        self._secret = decode_secret(api_secret) if api_secret is not None else None
        self._market = market_id
        self._clock = clock

    def __repr__(self) -> str:
        return f"BtcMarketsClient({self._http.base_url!r}, has_credentials={self.has_credentials})"

    @property
    def exchange(self) -> str:
        return EXCHANGE

    @property
    def pair(self) -> str:
        return self._market

    @property
    def has_credentials(self) -> bool:
        return self._api_key is not None

    @property
    def timeout(self) -> float:
        return self._http.timeout

    async def status(self) -> MarketStatus:
        """The market's trading status; a market the exchange does not list is an api_error."""
        body = await self._get("markets", "/v3/markets")
        with parsing(EXCHANGE, "markets"):
            market = next((m for m in body if m["marketId"] == self._market), None)
            if market is None:
                raise ValueError(f"market {self._market} is not listed")
            raw = str(market["status"])
        return MarketStatus(MARKET_STATES.get(raw, raw.lower().replace(" ", "_")), raw)

    async def ticker(self) -> Ticker:
        body = await self._get("ticker", f"/v3/markets/{self._market}/ticker")
        with parsing(EXCHANGE, "ticker"):
            return Ticker(
                str(body["marketId"]),
                decimal_or_none(body.get("bestBid")),
                decimal_or_none(body.get("bestAsk")),
                decimal_or_none(body.get("lastPrice")),
            )

    async def order_book(self, level: int = 1) -> OrderBook:
        """Level 1 is the best price levels aggregated; level 2 the whole aggregated book."""
        path = f"/v3/markets/{self._market}/orderbook"
        body = await self._get("orderbook", path, params={"level": str(level)})
        with parsing(EXCHANGE, "orderbook"):
            bids = [(p, v) for p, v, *_ in body["bids"]]
            asks = [(p, v) for p, v, *_ in body["asks"]]
            return OrderBook(
                str(body["marketId"]),
                levels(bids, descending=True),
                levels(asks, descending=False),
            )

    async def server_time(self) -> datetime:
        """The exchange's clock: signatures older than its window are refused."""
        body = await self._get("time", "/v3/time")
        with parsing(EXCHANGE, "time"):
            return datetime.fromisoformat(str(body["timestamp"]).replace("Z", "+00:00"))

    async def balance(self) -> dict[str, Balance]:
        """Balances by asset name (private: needs a key, read-only is enough)."""
        body = await self._get("balances", "/v3/accounts/me/balances", signed=True)
        with parsing(EXCHANGE, "balances"):
            return {
                str(asset["assetName"]): Balance(
                    Decimal(str(asset["available"])), Decimal(str(asset["balance"]))
                )
                for asset in body
            }

    async def _get(
        self,
        endpoint: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        signed: bool = False,
    ) -> Any:
        headers: dict[str, str] = {}
        if signed:
            if self._api_key is None or self._secret is None:
                message = "no API key configured"
                raise ExchangeApiError(EXCHANGE, Outcome.AUTH_ERROR, endpoint, message)
            # The query string is not signed: method + path + timestamp (+ body, none for GET).
            timestamp = str(int(self._clock() * 1000))
            headers = {
                "BM-AUTH-APIKEY": self._api_key,
                "BM-AUTH-TIMESTAMP": timestamp,
                "BM-AUTH-SIGNATURE": sign("GET", path, timestamp, "", self._secret),
            }
        reply = await self._http.request(endpoint, "GET", path, params=params, headers=headers)
        return _result(endpoint, reply.status, reply.body)


def _result(endpoint: str, status: int, body: Any) -> Any:
    """The parsed body of a successful reply; ExchangeApiError for anything else."""
    outcome = classify(status, body)
    if outcome is Outcome.SUCCESS:
        if body is None:
            raise ExchangeApiError(EXCHANGE, Outcome.API_ERROR, endpoint, "reply is not JSON")
        return body
    code = error_code(body)
    if code is None:
        detail = "reply is not BTC Markets JSON"
    else:
        detail = f"{code}: {body.get('message', '')}".rstrip(": ")
    raise ExchangeApiError(EXCHANGE, outcome, endpoint, f"HTTP {status}: {detail}")
