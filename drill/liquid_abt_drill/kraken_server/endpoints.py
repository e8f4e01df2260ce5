"""The fake Kraken's endpoints when healthy: Kraken's payload shapes, error strings and checks."""

from __future__ import annotations

import hmac
import time
from email.utils import formatdate
from typing import Any, Final
from urllib.parse import parse_qs

from aiohttp import web

from exporter.signals.kraken.signing import sign

from .state import STATE, FakeKrakenState, Mode

_STATUS_BY_MODE: Final = {
    Mode.MAINTENANCE: "maintenance",
    Mode.CANCEL_ONLY: "cancel_only",
    Mode.POST_ONLY: "post_only",
}
# Kraken accepts the short and the canonical pair name and always answers with the canonical one.
_PAIRS: Final = {
    "XBTAUD": "XXBTZAUD",
    "XXBTZAUD": "XXBTZAUD",
    "XBTUSD": "XXBTZUSD",
    "XXBTZUSD": "XXBTZUSD",
}


def kraken_reply(result: dict[str, Any] | None = None, error: str | None = None) -> web.Response:
    body: dict[str, Any] = {"error": [error] if error else []}
    if result is not None:
        body["result"] = result
    return web.json_response(body)


async def _params(request: web.Request) -> dict[str, str]:
    params = dict(request.query)
    if request.method == "POST":
        params.update({k: str(v) for k, v in (await request.post()).items()})
    return params


async def system_status(request: web.Request) -> web.Response:
    status = _STATUS_BY_MODE.get(request.app[STATE].mode, "online")
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return kraken_reply({"status": status, "timestamp": now})


async def ticker(request: web.Request) -> web.Response:
    pair = _PAIRS.get((await _params(request)).get("pair", ""))
    if pair is None:
        return kraken_reply(error="EQuery:Unknown asset pair")
    p = request.app[STATE].prices[pair]
    f = "{:.5f}".format
    return kraken_reply(
        {
            pair: {
                "a": [f(p + 5), "1", "1.000"],
                "b": [f(p - 5), "2", "2.000"],
                "c": [f(p), "0.00150000"],
                "v": ["12.34567890", "45.67890123"],
                "p": [f(p - 1), f(p - 2)],
                "t": [321, 1234],
                "l": [f(p - 900), f(p - 1500)],
                "h": [f(p + 800), f(p + 1200)],
                "o": f(p - 300),
            }
        }
    )


async def depth(request: web.Request) -> web.Response:
    params = await _params(request)
    pair = _PAIRS.get(params.get("pair", ""))
    if pair is None or not params.get("count", "100").isdigit():
        return kraken_reply(
            error="EQuery:Unknown asset pair" if pair is None else "EGeneral:Invalid arguments"
        )
    count = min(max(int(params.get("count", "100")), 1), 500)
    p, now = request.app[STATE].prices[pair], int(time.time())
    # A crossed book (best bid above best ask) is what a broken matching engine serves.
    side = -1 if request.app[STATE].faults.crossed_book else 1
    asks = [[f"{p + side * 5 * (i + 1):.5f}", "0.250", now] for i in range(count)]
    bids = [[f"{p - side * 5 * (i + 1):.5f}", "0.400", now] for i in range(count)]
    return kraken_reply({pair: {"asks": asks, "bids": bids}})


async def server_time(request: web.Request) -> web.Response:
    now = time.time()
    return kraken_reply({"unixtime": int(now), "rfc1123": formatdate(now, usegmt=True)})


async def balance(request: web.Request) -> web.Response:
    state = request.app[STATE]
    error = _authenticate(state, request, await request.text())
    return kraken_reply(error=error) if error else kraken_reply(dict(state.balances))


def _authenticate(state: FakeKrakenState, request: web.Request, body: str) -> str | None:
    """Kraken's checks in Kraken's words: the key, then the signature, then the nonce, which must
    be above the last one accepted for the same key."""
    key = request.headers.get("API-Key", "")
    secret = next((s for k, s in state.keys.items() if hmac.compare_digest(key, k)), None)
    if secret is None:
        return "EAPI:Invalid key"
    nonce = parse_qs(body).get("nonce", [""])[0]
    if not nonce.isdigit():
        return "EAPI:Invalid nonce"
    expected = sign(request.path, nonce, body, secret)
    if not hmac.compare_digest(request.headers.get("API-Sign", ""), expected):
        return "EAPI:Invalid signature"
    if int(nonce) <= state.nonces.get(key, 0):
        return "EAPI:Invalid nonce"
    state.nonces[key] = int(nonce)
    return None
