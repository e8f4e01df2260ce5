"""An async client for the few Independent Reserve REST calls a secondary-exchange probe needs.

Public (GET, query parameters): GetExchangeStatus, GetMarketSummary, GetOrderBook; private (POST,
signed JSON body): GetAccounts, which a read-only key may call. Shapes as published at
https://www.independentreserve.com/features/api and in the exchange's own client
(github.com/independentreserve/dotNetApiClient). Every call is bounded by one deadline and fails
with ExchangeApiError, whose `outcome` is the probe's closed outcome set.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, Final

import aiohttp

from ..outcomes import Outcome
from ..rest import (
    Balance,
    ExchangeApiError,
    MarketStatus,
    NonceSource,
    OrderBook,
    Ticker,
    Transport,
    decimal_or_none,
    levels,
    parsing,
)
from .outcomes import classify, error_message
from .signing import check_secret, sign

EXCHANGE: Final = "independentreserve"
DEFAULT_BASE_URL: Final = "https://api.independentreserve.com"
PUBLIC_ENDPOINTS: Final = ("GetExchangeStatus", "GetMarketSummary", "GetOrderBook")
PRIVATE_ENDPOINTS: Final = ("GetAccounts",)
ENDPOINTS: Final = PUBLIC_ENDPOINTS + PRIVATE_ENDPOINTS


class IndependentReserveClient:
    """Independent Reserve REST calls on a shared aiohttp session (the caller owns and closes it).

    Currencies use the exchange's codes: `Xbt` for bitcoin, `Aud` for Australian dollars.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = 10.0,
        api_key: str | None = None,
        api_secret: str | None = None,
        *,
        primary: str = "Xbt",
        secondary: str = "Aud",
        nonce: Callable[[], int] | None = None,
        user_agent: str = "liquid-abt-exporter",
    ) -> None:
        if (api_key is None) != (api_secret is None):
            raise ValueError("the Independent Reserve API key and secret must be set together")
        self._http = Transport(EXCHANGE, session, base_url, timeout, user_agent)
        self._api_key = api_key
        self._secret = check_secret(api_secret) if api_secret is not None else None
        self._pair = {"primaryCurrencyCode": primary, "secondaryCurrencyCode": secondary}
        self._nonce = nonce or NonceSource()
        # Nonces must reach the exchange in order: concurrent private calls could overtake.
        self._private_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return (
            f"IndependentReserveClient({self._http.base_url!r}, "
            f"has_credentials={self.has_credentials})"
        )

    @property
    def exchange(self) -> str:
        return EXCHANGE

    @property
    def pair(self) -> str:
        return f"{self._pair['primaryCurrencyCode']}/{self._pair['secondaryCurrencyCode']}"

    @property
    def has_credentials(self) -> bool:
        return self._api_key is not None

    @property
    def timeout(self) -> float:
        return self._http.timeout

    async def status(self) -> MarketStatus:
        """online when trading is enabled for both currencies of the pair, else maintenance."""
        body = await self._public("GetExchangeStatus")
        with parsing(EXCHANGE, "GetExchangeStatus"):
            trading = body["TradingEnabled"]
            codes = list(self._pair.values())
            disabled = [code for code in codes if not _enabled(trading, code)]
            healthy = bool(body["IsOverallHealthy"])
        if disabled:
            raw = f"trading disabled for {', '.join(disabled)}"
            return MarketStatus("maintenance", raw)
        return MarketStatus("online", "healthy" if healthy else "trading enabled, not all healthy")

    async def ticker(self) -> Ticker:
        """Best bid, best ask and last price from GetMarketSummary."""
        body = await self._public("GetMarketSummary", self._pair)
        with parsing(EXCHANGE, "GetMarketSummary"):
            return Ticker(
                self.pair,
                decimal_or_none(body["CurrentHighestBidPrice"]),
                decimal_or_none(body["CurrentLowestOfferPrice"]),
                decimal_or_none(body["LastPrice"]),
            )

    async def order_book(self) -> OrderBook:
        """The order book, aggregated by price, best levels first."""
        body = await self._public("GetOrderBook", self._pair)
        with parsing(EXCHANGE, "GetOrderBook"):
            bids = [(o["Price"], o["Volume"]) for o in body["BuyOrders"]]
            asks = [(o["Price"], o["Volume"]) for o in body["SellOrders"]]
            return OrderBook(
                self.pair, levels(bids, descending=True), levels(asks, descending=False)
            )

    async def balance(self) -> dict[str, Balance]:
        """Balances by asset, upper case with bitcoin as BTC, as BTC Markets names them (private:
        needs a key, read-only is enough)."""
        body = await self._private("GetAccounts")
        with parsing(EXCHANGE, "GetAccounts"):
            return {
                _asset(str(account["CurrencyCode"])): Balance(
                    Decimal(str(account["AvailableBalance"])),
                    Decimal(str(account["TotalBalance"])),
                )
                for account in body
            }

    async def _public(self, endpoint: str, params: Mapping[str, str] | None = None) -> Any:
        reply = await self._http.request(endpoint, "GET", f"/Public/{endpoint}", params=params)
        return _result(endpoint, reply.status, reply.body)

    async def _private(self, endpoint: str) -> Any:
        if self._api_key is None or self._secret is None:
            raise ExchangeApiError(EXCHANGE, Outcome.AUTH_ERROR, endpoint, "no API key configured")
        path = f"/Private/{endpoint}"
        async with self._private_lock:
            params: list[tuple[str, object]] = [("apiKey", self._api_key), ("nonce", self._nonce())]
            signature = sign(self._http.base_url + path, params, self._secret)
            body = json.dumps({**dict(params), "signature": signature})
            headers = {"Content-Type": "application/json"}
            reply = await self._http.request(endpoint, "POST", path, body=body, headers=headers)
        return _result(endpoint, reply.status, reply.body)


def _asset(code: str) -> str:
    """`Aud` as AUD, `Xbt` (Independent Reserve's bitcoin) as BTC."""
    return "BTC" if code.upper() == "XBT" else code.upper()


def _enabled(trading: Mapping[str, Any], code: str) -> bool:
    """Currency codes are case-insensitive (`Xbt`, `XBT`); a missing currency is not enabled."""
    return any(k.lower() == code.lower() and v is True for k, v in trading.items())


def _result(endpoint: str, status: int, body: Any) -> Any:
    """The parsed body of a successful reply; ExchangeApiError for anything else."""
    outcome = classify(status, body)
    if outcome is Outcome.SUCCESS:
        if body is None:
            raise ExchangeApiError(EXCHANGE, Outcome.API_ERROR, endpoint, "reply is not JSON")
        return body
    message = error_message(body)
    detail = message if message is not None else "reply is not Independent Reserve JSON"
    raise ExchangeApiError(EXCHANGE, outcome, endpoint, f"HTTP {status}: {detail}")
