"""A fake Independent Reserve for tests and drills: the public and private calls the probe makes,
in the published shapes (https://www.independentreserve.com/features/api, and the exchange's own
client github.com/independentreserve/dotNetApiClient), switchable into failure modes.

Public: GET /Public/GetExchangeStatus, /Public/GetMarketSummary, /Public/GetOrderBook.
Private: POST /Private/GetAccounts with a JSON body {apiKey, nonce, signature}; the signature is
verified against this server's own URL, and nonces must increase, as on the exchange.
Errors are a non-200 status with {"Message": "..."}; credential errors use the exchange's words
("Invalid credentials", "... (bad signature)", "... (bad nonce). This nonce=..., last valid
nonce=..."). The words of the 429, 503 and 400 replies are this fake's: the client files those by
status.

`python -m liquid_abt_drill.exchanges.independentreserve --listen 127.0.0.1:9989` serves it.
"""

from __future__ import annotations

import hmac
import json
import sys
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

from aiohttp import web

from exporter.signals.independentreserve.signing import sign

from .base import FakeExchange, Mode, garbage, html_error, serve

PRIMARY: Final = {"xbt": "Xbt", "eth": "Eth"}
SECONDARY: Final = {"aud": "Aud", "usd": "Usd", "nzd": "Nzd", "sgd": "Sgd"}
# Our balances are kept as AUD and BTC; Independent Reserve names bitcoin Xbt.
_CURRENCY: Final = {"AUD": "Aud", "BTC": "Xbt"}


def reply(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        status=status, text=json.dumps(body, default=_number), content_type="application/json"
    )


def error(status: int, message: str) -> web.Response:
    return reply({"Message": message}, status)


def _number(value: object) -> float:
    """Independent Reserve sends amounts as JSON numbers."""
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"not JSON serialisable: {value!r}")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f0Z")


class FakeIndependentReserve(FakeExchange):
    name = "independentreserve"
    api_prefix = "/P"  # /Public and /Private

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/Public/GetExchangeStatus", self.exchange_status)
        app.router.add_get("/Public/GetMarketSummary", self.market_summary)
        app.router.add_get("/Public/GetOrderBook", self.order_book)
        app.router.add_post("/Private/GetAccounts", self.accounts)

    def failure(self, request: web.Request, endpoint: str) -> web.StreamResponse | None:
        mode, private = self.state.mode, request.path.startswith("/Private/")
        if mode is Mode.RATE_LIMITED:
            return error(429, "Too many requests, slow down")
        if mode is Mode.SERVER_ERROR:
            return html_error(self.state.http_status)
        if mode is Mode.GARBAGE:
            return garbage()
        if mode is Mode.MAINTENANCE and endpoint != "GetExchangeStatus":
            return error(503, "Independent Reserve is down for maintenance")
        if private and mode is Mode.AUTH_FAILURE:
            return error(401, "Invalid credentials (bad signature)")
        return None

    async def exchange_status(self, request: web.Request) -> web.Response:
        trading = self.state.mode is not Mode.MAINTENANCE
        currencies = [*PRIMARY.values(), *SECONDARY.values()]
        enabled = {code: trading for code in currencies}
        return reply(
            {
                "IsOverallHealthy": trading,
                "TradingEnabled": enabled,
                "WithdrawalsEnabled": enabled,
                "DepositsEnabled": dict.fromkeys(currencies, True),
            }
        )

    async def market_summary(self, request: web.Request) -> web.Response:
        pair = _pair(request)
        if isinstance(pair, web.Response):
            return pair
        bids, asks = self.state.book()
        last = self.state.quote
        return reply(
            {
                "DayHighestPrice": last + 800,
                "DayLowestPrice": last - 900,
                "DayAvgPrice": last - 50,
                "DayVolumeXbt": Decimal("12.34567890"),
                "DayVolumeXbtInSecondaryCurrrency": Decimal("0.0"),  # sic, the published name
                "CurrentLowestOfferPrice": asks[0][0],
                "CurrentHighestBidPrice": bids[0][0],
                "LastPrice": last,
                "PrimaryCurrencyCode": pair[0],
                "SecondaryCurrencyCode": pair[1],
                "CreatedTimestampUtc": _now(),
            }
        )

    async def order_book(self, request: web.Request) -> web.Response:
        pair = _pair(request)
        if isinstance(pair, web.Response):
            return pair
        bids, asks = self.state.book()
        return reply(
            {
                "BuyOrders": [{"OrderType": "LimitBid", "Price": p, "Volume": v} for p, v in bids],
                "SellOrders": [
                    {"OrderType": "LimitOffer", "Price": p, "Volume": v} for p, v in asks
                ],
                "CreatedTimestampUtc": _now(),
                "PrimaryCurrencyCode": pair[0],
                "SecondaryCurrencyCode": pair[1],
            }
        )

    async def accounts(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object")
        except ValueError:
            return error(400, "The request is invalid.")
        refused = self._authenticate(str(request.url.with_query(None)), body)
        if refused:
            return error(401, refused)
        return reply(
            [
                {
                    "AccountGuid": str(uuid.uuid5(uuid.NAMESPACE_URL, currency)),
                    "AccountStatus": "Active",
                    "AvailableBalance": amount,
                    "CurrencyCode": _CURRENCY.get(currency, currency.title()),
                    "TotalBalance": amount,
                }
                for currency, amount in self.state.balances.items()
            ]
        )

    def _authenticate(self, url: str, body: dict[str, Any]) -> str | None:
        """The exchange's checks in its words: the key, the signature, then the nonce."""
        state = self.state
        key, nonce = str(body.get("apiKey", "")), body.get("nonce")
        secret = state.secret_of(key)
        if secret is None or not isinstance(nonce, int):
            return "Invalid credentials"
        signed = [(k, v) for k, v in body.items() if k != "signature"]
        expected = sign(url, signed, secret)
        if not hmac.compare_digest(str(body.get("signature", "")).upper(), expected):
            return "Invalid credentials (bad signature)"
        last = state.last_nonces.get(key, 0)
        if nonce <= last:
            return f"Invalid credentials (bad nonce). This nonce={nonce}, last valid nonce={last}"
        state.last_nonces[key] = nonce
        return None


def _pair(request: web.Request) -> tuple[str, str] | web.Response:
    primary = PRIMARY.get(request.query.get("primaryCurrencyCode", "").lower())
    secondary = SECONDARY.get(request.query.get("secondaryCurrencyCode", "").lower())
    if primary is None:
        return error(400, "Invalid primaryCurrencyCode")
    if secondary is None:
        return error(400, "Invalid secondaryCurrencyCode")
    return primary, secondary


if __name__ == "__main__":
    sys.exit(serve(FakeIndependentReserve, sys.argv[1:], default_port=9989))
