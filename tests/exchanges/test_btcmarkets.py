"""BtcMarketsClient against the fake BTC Markets on 127.0.0.1: shapes, signing, every mode of the
fake, and the classification of every reply into the closed outcome set."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import aiohttp
import pytest

from exporter.signals.btcmarkets.client import BtcMarketsClient
from exporter.signals.btcmarkets.outcomes import classify, is_nonce_fault
from exporter.signals.btcmarkets.signing import decode_secret, message, sign
from exporter.signals.kraken.outcomes import Outcome
from exporter.signals.rest import INVALID_NONCE, ExchangeApiError
from liquid_abt_drill.exchanges.btcmarkets import FakeBtcMarkets

from .conftest import API_KEY, BM_SECRET

MakeClient = Callable[..., BtcMarketsClient]


@pytest.fixture
def make_client(fake_bm: FakeBtcMarkets, session: aiohttp.ClientSession) -> MakeClient:
    def make(timeout: float = 2.0, credentials: bool = True, **kwargs: Any) -> BtcMarketsClient:
        key, secret = (API_KEY, BM_SECRET) if credentials else (None, None)
        return BtcMarketsClient(session, fake_bm.url, timeout, key, secret, **kwargs)

    return make


async def failure(call: Any) -> ExchangeApiError:
    with pytest.raises(ExchangeApiError) as info:
        await call()
    return info.value


# Signing ------------------------------------------------------------------------------------------

# The exchange's own SDK test (github.com/BTCMarkets/btcmarkets-node-sdk,
# test/authorization.test.ts): a sample key and request, not a credential.
SDK_SECRET = "myPrivateKey"
SDK_TIMESTAMP = 1569349976622
SDK_BODY = json.dumps(
    {"firstName": "test first name", "lastName": "test last name"}, separators=(",", ":")
)
SDK_SIGNATURE = (
    "QNZzyrw1pVzc+N7qJFgj5MBGJwp/pm5sxHnm05zgsBpA0TOK0v0KcRIVyDvE+ut+P+D2xnK+SasUDFtXr/AJzA=="
)


def test_reproduces_the_exchanges_own_sdk_signature() -> None:
    assert sign("GET", "/v3/testpath", SDK_TIMESTAMP, SDK_BODY, SDK_SECRET) == SDK_SIGNATURE


def test_message_is_method_path_timestamp_body_without_query_string() -> None:
    assert message("get", "/v3/accounts/me/balances", "17") == "GET/v3/accounts/me/balances17"


def test_accepts_a_decoded_key_and_covers_every_part() -> None:
    key = base64.b64decode(SDK_SECRET)
    assert sign("GET", "/v3/testpath", SDK_TIMESTAMP, SDK_BODY, key) == SDK_SIGNATURE
    changed = [
        sign("POST", "/v3/testpath", SDK_TIMESTAMP, SDK_BODY, key),
        sign("GET", "/v3/otherpath", SDK_TIMESTAMP, SDK_BODY, key),
        sign("GET", "/v3/testpath", SDK_TIMESTAMP + 1, SDK_BODY, key),
        sign("GET", "/v3/testpath", SDK_TIMESTAMP, SDK_BODY + " ", key),
    ]
    assert SDK_SIGNATURE not in changed


@pytest.mark.parametrize("secret", ["not base64!", "", "abc"])
def test_an_invalid_secret_is_refused_without_echoing_it(secret: str) -> None:
    with pytest.raises(ValueError, match="BTC Markets API secret") as info:
        decode_secret(secret)
    assert secret == "" or secret not in str(info.value)


# Shapes -------------------------------------------------------------------------------------------


async def test_ticker_reads_best_bid_ask_and_last(
    fake_bm: FakeBtcMarkets, make_client: MakeClient
) -> None:
    fake_bm.state.price = Decimal("150000.5")
    ticker = await make_client().ticker()
    assert ticker.pair == "BTC-AUD"
    assert (ticker.bid, ticker.ask, ticker.last) == (
        Decimal("149995.5"), Decimal("150005.5"), Decimal("150000.5"),
    )  # fmt: skip


async def test_order_book_is_sorted_best_first(make_client: MakeClient) -> None:
    book = await make_client().order_book()
    assert book.pair == "BTC-AUD"
    assert len(book.bids) == len(book.asks) == 20
    assert [b.price for b in book.bids] == sorted((b.price for b in book.bids), reverse=True)
    assert [a.price for a in book.asks] == sorted(a.price for a in book.asks)
    assert book.bids[0].price < book.asks[0].price


async def test_status_and_server_time(make_client: MakeClient) -> None:
    client = make_client()
    status = await client.status()
    assert (status.state, status.raw, status.online) == ("online", "Online", True)
    assert abs(await client.server_time() - datetime.now(UTC)) < timedelta(seconds=30)


async def test_signed_balance_is_accepted(make_client: MakeClient) -> None:
    balances = await make_client().balance()
    assert balances["AUD"].available == Decimal("25000.00")
    assert balances["BTC"].total == Decimal("0.5")


async def test_an_unknown_market_is_an_api_error(make_client: MakeClient) -> None:
    client = make_client(market_id="DOGE-AUD")
    error = await failure(client.ticker)
    assert error.outcome is Outcome.API_ERROR
    assert error.message == "HTTP 400: MarketNotFound: invalid marketId"
    status_error = await failure(client.status)
    assert (status_error.outcome, status_error.endpoint) == (Outcome.API_ERROR, "markets")
    assert "DOGE-AUD is not listed" in status_error.message


# Modes --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "endpoint", "expected", "text"),
    [
        ("down", "ticker", Outcome.NETWORK_ERROR, ""),
        ("maintenance", "ticker", Outcome.SERVICE_UNAVAILABLE, "HTTP 503"),
        ("maintenance", "balance", Outcome.SERVICE_UNAVAILABLE, "HTTP 503"),
        ("rate_limited", "order_book", Outcome.RATE_LIMITED, "HTTP 429"),
        ("auth_failure", "balance", Outcome.AUTH_ERROR, "InvalidAuthSignature"),
        ("server_error", "status", Outcome.SERVER_ERROR, "HTTP 502: reply is not"),
        ("garbage", "ticker", Outcome.API_ERROR, "reply is not JSON"),
    ],
)
async def test_each_failure_mode_raises_its_outcome(
    fake_bm: FakeBtcMarkets,
    make_client: MakeClient,
    mode: str,
    endpoint: str,
    expected: Outcome,
    text: str,
) -> None:
    await fake_bm.set_mode(mode)
    error = await failure(getattr(make_client(), endpoint))
    assert error.outcome is expected
    assert text in error.message
    assert error.exchange == "btcmarkets"


async def test_maintenance_shows_in_the_status_and_auth_failure_spares_public_calls(
    fake_bm: FakeBtcMarkets, make_client: MakeClient
) -> None:
    client = make_client()
    await fake_bm.set_mode("maintenance")
    status = await client.status()
    assert (status.state, status.raw, status.online) == ("maintenance", "Offline", False)
    await fake_bm.set_mode("auth_failure")
    assert (await client.ticker()).last == fake_bm.state.price


async def test_slow_answers_within_the_timeout_and_times_out_beyond_it(
    fake_bm: FakeBtcMarkets, make_client: MakeClient
) -> None:
    await fake_bm.set_mode("slow", latency=0.2)
    assert (await make_client(timeout=2.0).ticker()).last is not None
    error = await failure(make_client(timeout=0.1).order_book)
    assert error.outcome is Outcome.TIMEOUT
    assert "0.1s" in error.message


async def test_a_hanging_server_costs_one_timeout(
    fake_bm: FakeBtcMarkets, make_client: MakeClient
) -> None:
    await fake_bm.set_mode("hanging")
    error = await failure(lambda: asyncio.wait_for(make_client(timeout=0.3).balance(), 10.0))
    assert error.outcome is Outcome.TIMEOUT


async def test_a_thin_book_is_served_as_a_healthy_reply(
    fake_bm: FakeBtcMarkets, make_client: MakeClient
) -> None:
    await fake_bm.set_mode("thin_book")
    book = await make_client().order_book()
    aud = sum(level.price * level.volume for level in book.asks)
    assert len(book.asks) == 2 and aud < 500


async def test_a_price_spike_moves_ticker_and_book_together(
    fake_bm: FakeBtcMarkets, make_client: MakeClient
) -> None:
    await fake_bm.set_mode("price_spike")
    client = make_client()
    ticker, book = await client.ticker(), await client.order_book()
    assert ticker.last == fake_bm.state.price * Decimal("1.05")
    assert book.asks[0].price == ticker.ask


async def test_the_control_port_switches_modes_while_the_api_is_down(
    fake_bm: FakeBtcMarkets, make_client: MakeClient, session: aiohttp.ClientSession
) -> None:
    assert fake_bm.control_url is not None
    control = f"{fake_bm.control_url}/_control/mode"
    async with session.post(control, json={"mode": "down"}) as resp:
        assert (resp.status, (await resp.json())["mode"]) == (200, "down")
    assert (await failure(make_client().ticker)).outcome is Outcome.NETWORK_ERROR
    async with session.post(control, json={"mode": "nonsense"}) as resp:
        assert resp.status == 400
        assert "nonsense" in (await resp.json())["error"]
    async with session.post(control, json={"mode": "healthy"}) as resp:
        assert resp.status == 200
    assert (await make_client().ticker()).last is not None


# Credentials --------------------------------------------------------------------------------------


async def test_a_wrong_secret_is_an_invalid_signature(
    fake_bm: FakeBtcMarkets, session: aiohttp.ClientSession
) -> None:
    wrong = base64.b64encode(b"wrong secret").decode()
    client = BtcMarketsClient(session, fake_bm.url, 2.0, API_KEY, wrong)
    error = await failure(client.balance)
    assert (error.outcome, error.message) == (
        Outcome.AUTH_ERROR, "HTTP 401: InvalidAuthSignature: invalid signature",
    )  # fmt: skip


async def test_a_wrong_key_is_an_auth_error(
    fake_bm: FakeBtcMarkets, session: aiohttp.ClientSession
) -> None:
    client = BtcMarketsClient(session, fake_bm.url, 2.0, "someone-else", BM_SECRET)
    assert (await failure(client.balance)).outcome is Outcome.AUTH_ERROR


async def test_a_clock_outside_the_window_is_the_nonce_outcome_not_a_rejected_key(
    make_client: MakeClient,
) -> None:
    client = make_client(clock=lambda: time.time() - 60)
    error = await failure(client.balance)
    assert error.outcome is INVALID_NONCE
    assert error.outcome.value in ("invalid_nonce", "auth_error")  # auth_error until it lands
    assert "InvalidAuthTimestamp" in error.message


async def test_a_private_call_without_credentials(make_client: MakeClient) -> None:
    client = make_client(credentials=False)
    assert not client.has_credentials
    assert (await failure(client.balance)).outcome is Outcome.AUTH_ERROR


async def test_configuration_errors_name_the_problem(session: aiohttp.ClientSession) -> None:
    with pytest.raises(ValueError, match="key and secret must be set together"):
        BtcMarketsClient(session, "http://127.0.0.1:1", 1.0, API_KEY, None)
    with pytest.raises(ValueError, match="looks like BTC-AUD, got 'BTC/AUD'"):
        BtcMarketsClient(session, "http://127.0.0.1:1", 1.0, market_id="BTC/AUD")


async def test_repr_never_shows_the_credentials(make_client: MakeClient) -> None:
    text = repr(make_client())
    assert BM_SECRET not in text and API_KEY not in text


# Classification, reply by reply -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, {"marketId": "BTC-AUD"}, Outcome.SUCCESS),
        (200, [], Outcome.SUCCESS),
        (401, {"code": "InvalidAuthSignature", "message": "invalid signature"}, Outcome.AUTH_ERROR),
        (401, {"code": "UnAuthorized", "message": "invalid access token"}, Outcome.AUTH_ERROR),
        (401, {"code": "InvalidAuthTimestamp", "message": "invalid timestamp"}, INVALID_NONCE),
        (400, {"code": "InvalidTimeWindow", "message": "invalid time window"}, INVALID_NONCE),
        (403, {"code": "Forbidden", "message": "no permission"}, Outcome.AUTH_ERROR),
        (429, {"code": "TooManyRequests", "message": "slow down"}, Outcome.RATE_LIMITED),
        (429, None, Outcome.RATE_LIMITED),
        (
            503,
            {"code": "ServiceUnavailable", "message": "maintenance"},
            Outcome.SERVICE_UNAVAILABLE,
        ),
        (500, {"code": "InternalServerError", "message": "oops"}, Outcome.SERVER_ERROR),
        (502, None, Outcome.SERVER_ERROR),
        (400, {"code": "MarketNotFound", "message": "invalid marketId"}, Outcome.API_ERROR),
        (404, None, Outcome.API_ERROR),
    ],
)
def test_every_reply_maps_to_one_outcome(status: int, body: Any, expected: Outcome) -> None:
    assert classify(status, body) is expected


@pytest.mark.parametrize(
    ("body", "nonce_fault"),
    [
        ({"code": "InvalidAuthTimestamp", "message": "invalid timestamp"}, True),
        ({"code": "InvalidTimeWindow", "message": "invalid time window"}, True),
        ({"code": "InvalidAuthSignature", "message": "invalid signature"}, False),
        ({"code": "InvalidAPIKey", "message": "invalid api key"}, False),
        ({"message": "InvalidAuthTimestamp"}, False),
        (None, False),
    ],
)
def test_a_clock_fault_is_told_apart_from_a_rejected_key(body: Any, nonce_fault: bool) -> None:
    # Until invalid_nonce joins the outcome set both file as auth_error; this tells them apart.
    assert is_nonce_fault(body) is nonce_fault
