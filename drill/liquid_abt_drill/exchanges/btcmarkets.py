"""A fake BTC Markets (API v3) for tests and drills: the public and private calls the probe makes,
in the published shapes (https://docs.btcmarkets.net/v3/), switchable into failure modes.

Public: GET /v3/markets, /v3/markets/{marketId}/ticker, /v3/markets/{marketId}/orderbook,
/v3/time. Private: GET /v3/accounts/me/balances with BM-AUTH-APIKEY, BM-AUTH-TIMESTAMP and
BM-AUTH-SIGNATURE, verified as the exchange does: the key, the timestamp within the window, then
the signature over method + path + timestamp (no query string).
Amounts are JSON strings; errors are a 4xx/5xx status with {"code": ..., "message": ...}, with
the exchange's codes where they are known (InvalidAuthSignature, MarketNotFound); the codes of the
429 and 503 replies are this fake's, and the client files those by status.

`python -m liquid_abt_drill.exchanges.btcmarkets --listen 127.0.0.1:9990` serves it.
"""

from __future__ import annotations

import hmac
import sys
import time
from datetime import UTC, datetime
from decimal import Decimal
from typing import Final

from aiohttp import web

from exporter.signals.btcmarkets.signing import sign

from .base import FakeExchange, Mode, garbage, html_error, serve

MARKETS: Final = ("BTC-AUD", "ETH-AUD", "XRP-AUD")
# How far BM-AUTH-TIMESTAMP may be from this server's clock.
TIME_WINDOW_MS: Final = 10_000


def error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"code": code, "message": message}, status=status)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _amount(value: Decimal) -> str:
    return f"{value:f}"


class FakeBtcMarkets(FakeExchange):
    name = "btcmarkets"
    api_prefix = "/v3/"

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/v3/markets", self.markets)
        app.router.add_get("/v3/markets/{market}/ticker", self.ticker)
        app.router.add_get("/v3/markets/{market}/orderbook", self.order_book)
        app.router.add_get("/v3/time", self.server_time)
        app.router.add_get("/v3/accounts/me/balances", self.balances)

    def failure(self, request: web.Request, endpoint: str) -> web.StreamResponse | None:
        mode, private = self.state.mode, request.path.startswith("/v3/accounts/")
        if mode is Mode.RATE_LIMITED:
            return error(429, "TooManyRequests", "too many requests")
        if mode is Mode.SERVER_ERROR:
            return html_error(self.state.http_status)
        if mode is Mode.GARBAGE:
            return garbage()
        if mode is Mode.MAINTENANCE and endpoint != "markets":
            return error(503, "ServiceUnavailable", "BTC Markets is down for maintenance")
        if private and mode is Mode.AUTH_FAILURE:
            return error(401, "InvalidAuthSignature", "invalid signature")
        return None

    async def markets(self, request: web.Request) -> web.Response:
        status = "Offline" if self.state.mode is Mode.MAINTENANCE else "Online"
        return web.json_response(
            [
                {
                    "marketId": market,
                    "baseAssetName": market.split("-")[0],
                    "quoteAssetName": "AUD",
                    "minOrderAmount": "0.00001",
                    "maxOrderAmount": "1000000",
                    "amountDecimals": "8",
                    "priceDecimals": "2",
                    "status": status,
                }
                for market in MARKETS
            ]
        )

    async def ticker(self, request: web.Request) -> web.Response:
        market = request.match_info["market"]
        if market not in MARKETS:
            return error(400, "MarketNotFound", "invalid marketId")
        bids, asks = self.state.book()
        last = self.state.quote
        return web.json_response(
            {
                "marketId": market,
                "bestBid": _amount(bids[0][0]),
                "bestAsk": _amount(asks[0][0]),
                "lastPrice": _amount(last),
                "volume24h": "56.19297613",
                "volumeQte24h": _amount(last * Decimal("56.19297613")),
                "price24h": "1200.00",
                "pricePct24h": "0.79",
                "low24h": _amount(last - 900),
                "high24h": _amount(last + 800),
                "timestamp": _now(),
            }
        )

    async def order_book(self, request: web.Request) -> web.Response:
        market = request.match_info["market"]
        if market not in MARKETS:
            return error(400, "MarketNotFound", "invalid marketId")
        if request.query.get("level", "1") not in ("1", "2"):
            return error(400, "InvalidRequest", "level must be 1 or 2")
        bids, asks = self.state.book()
        return web.json_response(
            {
                "marketId": market,
                "snapshotId": int(time.time() * 1_000_000),
                "asks": [[_amount(p), _amount(v)] for p, v in asks],
                "bids": [[_amount(p), _amount(v)] for p, v in bids],
            }
        )

    async def server_time(self, request: web.Request) -> web.Response:
        return web.json_response({"timestamp": _now()})

    async def balances(self, request: web.Request) -> web.Response:
        refused = self._authenticate(request)
        if refused is not None:
            return refused
        return web.json_response(
            [
                {
                    "assetName": asset,
                    "balance": _amount(amount),
                    "available": _amount(amount),
                    "locked": "0",
                }
                for asset, amount in self.state.balances.items()
            ]
        )

    def _authenticate(self, request: web.Request) -> web.Response | None:
        """The exchange's checks: the key, the timestamp window, then the signature."""
        state, headers = self.state, request.headers
        secret = state.secret_of(headers.get("BM-AUTH-APIKEY", ""))
        if secret is None:
            return error(401, "InvalidAPIKey", "invalid api key")
        timestamp = headers.get("BM-AUTH-TIMESTAMP", "")
        if not timestamp.isdigit() or abs(int(timestamp) - time.time() * 1000) > TIME_WINDOW_MS:
            return error(401, "InvalidAuthTimestamp", "invalid timestamp")
        expected = sign(request.method, request.path, timestamp, "", secret)
        if not hmac.compare_digest(headers.get("BM-AUTH-SIGNATURE", ""), expected):
            return error(401, "InvalidAuthSignature", "invalid signature")
        return None


if __name__ == "__main__":
    sys.exit(serve(FakeBtcMarkets, sys.argv[1:], default_port=9990))
