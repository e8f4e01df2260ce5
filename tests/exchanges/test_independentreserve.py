"""IndependentReserveClient against the fake Independent Reserve on 127.0.0.1: shapes, signing,
every mode of the fake, and the classification of every reply into the closed outcome set."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import aiohttp
import pytest

from exporter.signals.independentreserve.client import IndependentReserveClient
from exporter.signals.independentreserve.outcomes import classify, is_nonce_fault
from exporter.signals.independentreserve.signing import check_secret, message, sign
from exporter.signals.kraken.outcomes import Outcome
from exporter.signals.rest import INVALID_NONCE, ExchangeApiError
from liquid_abt_drill.exchanges.independentreserve import FakeIndependentReserve

from .conftest import API_KEY, IR_SECRET

MakeClient = Callable[..., IndependentReserveClient]


@pytest.fixture
def make_client(fake_ir: FakeIndependentReserve, session: aiohttp.ClientSession) -> MakeClient:
    def make(
        timeout: float = 2.0, credentials: bool = True, **kwargs: Any
    ) -> IndependentReserveClient:
        key, secret = (API_KEY, IR_SECRET) if credentials else (None, None)
        return IndependentReserveClient(session, fake_ir.url, timeout, key, secret, **kwargs)

    return make


async def failure(call: Any) -> ExchangeApiError:
    with pytest.raises(ExchangeApiError) as info:
        await call()
    return info.value


# Signing ------------------------------------------------------------------------------------------

# The published scheme has no worked example with a result; this one was computed independently
# with `printf '%s' MESSAGE | openssl dgst -sha256 -hmac SECRET` (uppercased).
DOC_URL = "https://api.independentreserve.com/Private/GetAccounts"
DOC_KEY = "f2a4b6c8-1234-4cde-9abc-0123456789ab"
DOC_SECRET = "an-example-secret-not-a-credential"
DOC_SIGNATURE = "8575FD0FFE84A5FE9500F04D0A052B622E170EDD4CCF0AD4E74CE898F1666E1B"


def test_message_is_the_url_then_each_parameter_comma_separated() -> None:
    params = [("apiKey", DOC_KEY), ("nonce", 1700000000000), ("primaryCurrencyCode", "Xbt")]
    assert message(DOC_URL, params) == (
        f"{DOC_URL},apiKey={DOC_KEY},nonce=1700000000000,primaryCurrencyCode=Xbt"
    )


def test_signature_matches_an_independent_hmac_sha256() -> None:
    params = [("apiKey", DOC_KEY), ("nonce", 1700000000000)]
    assert sign(DOC_URL, params, DOC_SECRET) == DOC_SIGNATURE


def test_signature_covers_url_key_and_nonce() -> None:
    base = [("apiKey", DOC_KEY), ("nonce", 1700000000000)]
    changed = [
        sign(DOC_URL.replace("GetAccounts", "GetTrades"), base, DOC_SECRET),
        sign(DOC_URL, [("apiKey", DOC_KEY), ("nonce", 1700000000001)], DOC_SECRET),
        sign(DOC_URL, [("apiKey", DOC_KEY + "x"), ("nonce", 1700000000000)], DOC_SECRET),
        sign(DOC_URL, base, DOC_SECRET + "x"),
    ]
    assert DOC_SIGNATURE not in changed


@pytest.mark.parametrize("secret", ["", "   ", "sécret"])
def test_an_unusable_secret_is_refused_without_echoing_it(secret: str) -> None:
    with pytest.raises(ValueError, match="Independent Reserve API secret") as info:
        check_secret(secret)
    assert secret.strip() == "" or secret not in str(info.value)


# Shapes -------------------------------------------------------------------------------------------


async def test_ticker_reads_best_bid_ask_and_last(
    fake_ir: FakeIndependentReserve, make_client: MakeClient
) -> None:
    fake_ir.state.price = Decimal("150000.5")
    ticker = await make_client().ticker()
    assert ticker.pair == "Xbt/Aud"
    assert (ticker.bid, ticker.ask, ticker.last) == (
        Decimal("149995.5"), Decimal("150005.5"), Decimal("150000.5"),
    )  # fmt: skip


async def test_order_book_is_sorted_best_first(make_client: MakeClient) -> None:
    book = await make_client().order_book()
    assert len(book.bids) == len(book.asks) == 20
    assert book.bids[0].price < book.asks[0].price
    assert [b.price for b in book.bids] == sorted((b.price for b in book.bids), reverse=True)
    assert [a.price for a in book.asks] == sorted(a.price for a in book.asks)
    assert book.asks[0].volume == Decimal("0.4")


async def test_status_is_online_when_trading_is_enabled(make_client: MakeClient) -> None:
    status = await make_client().status()
    assert status.online and status.state == "online"


async def test_signed_balance_is_accepted(make_client: MakeClient) -> None:
    client = make_client()
    balances = await client.balance()
    assert set(balances) == {"AUD", "BTC"}  # named as on BTC Markets, not Aud and Xbt
    assert balances["AUD"].available == Decimal("25000")
    assert balances["BTC"].total == Decimal("0.5")
    assert await client.balance()  # the next call needs, and gets, a larger nonce


async def test_an_unknown_currency_is_an_api_error(
    session: aiohttp.ClientSession, fake_ir: FakeIndependentReserve
) -> None:
    client = IndependentReserveClient(session, fake_ir.url, 2.0, primary="Doge")
    error = await failure(client.ticker)
    assert error.outcome is Outcome.API_ERROR
    assert error.endpoint == "GetMarketSummary"
    assert "HTTP 400: Invalid primaryCurrencyCode" in error.message


# Modes --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "endpoint", "expected", "text"),
    [
        ("down", "ticker", Outcome.NETWORK_ERROR, ""),
        ("maintenance", "ticker", Outcome.SERVICE_UNAVAILABLE, "HTTP 503"),
        ("maintenance", "balance", Outcome.SERVICE_UNAVAILABLE, "HTTP 503"),
        ("rate_limited", "order_book", Outcome.RATE_LIMITED, "HTTP 429"),
        ("auth_failure", "balance", Outcome.AUTH_ERROR, "Invalid credentials (bad signature)"),
        ("server_error", "status", Outcome.SERVER_ERROR, "HTTP 502: reply is not"),
        ("garbage", "ticker", Outcome.API_ERROR, "reply is not JSON"),
    ],
)
async def test_each_failure_mode_raises_its_outcome(
    fake_ir: FakeIndependentReserve,
    make_client: MakeClient,
    mode: str,
    endpoint: str,
    expected: Outcome,
    text: str,
) -> None:
    await fake_ir.set_mode(mode)
    error = await failure(getattr(make_client(), endpoint))
    assert error.outcome is expected
    assert text in error.message
    assert error.exchange == "independentreserve"


async def test_maintenance_shows_in_the_status_and_auth_failure_spares_public_calls(
    fake_ir: FakeIndependentReserve, make_client: MakeClient
) -> None:
    client = make_client()
    await fake_ir.set_mode("maintenance")
    status = await client.status()
    assert (status.state, status.online) == ("maintenance", False)
    assert "trading disabled for Xbt, Aud" in status.raw
    await fake_ir.set_mode("auth_failure")
    assert (await client.ticker()).last == fake_ir.state.price


async def test_slow_answers_within_the_timeout_and_times_out_beyond_it(
    fake_ir: FakeIndependentReserve, make_client: MakeClient
) -> None:
    await fake_ir.set_mode("slow", latency=0.2)
    assert (await make_client(timeout=2.0).ticker()).last is not None
    error = await failure(make_client(timeout=0.1).ticker)
    assert error.outcome is Outcome.TIMEOUT
    assert "0.1s" in error.message


async def test_a_hanging_server_costs_one_timeout(
    fake_ir: FakeIndependentReserve, make_client: MakeClient
) -> None:
    await fake_ir.set_mode("hanging")
    error = await failure(lambda: asyncio.wait_for(make_client(timeout=0.3).balance(), 10.0))
    assert error.outcome is Outcome.TIMEOUT


async def test_a_thin_book_is_served_as_a_healthy_reply(
    fake_ir: FakeIndependentReserve, make_client: MakeClient
) -> None:
    await fake_ir.set_mode("thin_book")
    book = await make_client().order_book()
    aud = sum(level.price * level.volume for level in book.asks)
    assert len(book.asks) == 2 and aud < 500


async def test_a_price_spike_moves_ticker_and_book_together(
    fake_ir: FakeIndependentReserve, make_client: MakeClient
) -> None:
    await fake_ir.set_mode("price_spike")
    client = make_client()
    ticker, book = await client.ticker(), await client.order_book()
    assert ticker.last == fake_ir.state.price * Decimal("1.05")
    assert book.asks[0].price == ticker.ask


async def test_back_to_healthy_after_down_on_the_same_port(
    fake_ir: FakeIndependentReserve, make_client: MakeClient
) -> None:
    client = make_client()
    await fake_ir.set_mode("down")
    assert (await failure(client.ticker)).outcome is Outcome.NETWORK_ERROR
    await fake_ir.set_mode("healthy")
    assert (await client.ticker()).last is not None


# Credentials --------------------------------------------------------------------------------------


async def test_a_wrong_secret_is_a_bad_signature(
    fake_ir: FakeIndependentReserve, session: aiohttp.ClientSession
) -> None:
    client = IndependentReserveClient(session, fake_ir.url, 2.0, API_KEY, "not the secret")
    error = await failure(client.balance)
    assert error.outcome is Outcome.AUTH_ERROR
    assert "bad signature" in error.message


async def test_a_wrong_key_is_invalid_credentials(
    fake_ir: FakeIndependentReserve, session: aiohttp.ClientSession
) -> None:
    client = IndependentReserveClient(session, fake_ir.url, 2.0, "someone-else", IR_SECRET)
    error = await failure(client.balance)
    assert (error.outcome, error.message) == (Outcome.AUTH_ERROR, "HTTP 401: Invalid credentials")


async def test_a_replayed_nonce_is_the_nonce_outcome_not_a_rejected_key(
    make_client: MakeClient,
) -> None:
    client = make_client(nonce=lambda: 1_700_000_000_000)
    await client.balance()
    error = await failure(client.balance)
    assert error.outcome is INVALID_NONCE
    assert error.outcome.value in ("invalid_nonce", "auth_error")  # auth_error until it lands
    assert "bad nonce" in error.message


async def test_a_private_call_without_credentials(make_client: MakeClient) -> None:
    client = make_client(credentials=False)
    assert not client.has_credentials
    assert (await failure(client.balance)).outcome is Outcome.AUTH_ERROR


async def test_private_calls_never_overlap(
    fake_ir: FakeIndependentReserve, make_client: MakeClient
) -> None:
    client = make_client()
    await asyncio.gather(*(client.balance() for _ in range(5)))
    assert fake_ir.state.max_in_flight == 1


async def test_configuration_errors_name_the_problem(session: aiohttp.ClientSession) -> None:
    with pytest.raises(ValueError, match="key and secret must be set together"):
        IndependentReserveClient(session, "http://127.0.0.1:1", 1.0, API_KEY, None)
    with pytest.raises(ValueError, match="timeout must be positive, got 0"):
        IndependentReserveClient(session, "http://127.0.0.1:1", 0)


async def test_repr_never_shows_the_credentials(make_client: MakeClient) -> None:
    text = repr(make_client())
    assert IR_SECRET not in text and API_KEY not in text


# Classification, reply by reply -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (200, {"LastPrice": 1}, Outcome.SUCCESS),
        (400, {"Message": "Invalid credentials"}, Outcome.AUTH_ERROR),
        (400, {"Message": "Invalid credentials (bad signature)"}, Outcome.AUTH_ERROR),
        (400, {"Message": "Invalid credentials (bad nonce)"}, INVALID_NONCE),
        (
            401,
            {"Message": "Invalid credentials (bad nonce). This nonce=5, last valid nonce=9"},
            INVALID_NONCE,
        ),
        (403, {"Message": "Forbidden"}, Outcome.AUTH_ERROR),
        (429, {"Message": "Too many requests"}, Outcome.RATE_LIMITED),
        (429, None, Outcome.RATE_LIMITED),
        (503, {"Message": "Service unavailable"}, Outcome.SERVICE_UNAVAILABLE),
        (500, {"Message": "An error has occurred."}, Outcome.SERVER_ERROR),
        (502, None, Outcome.SERVER_ERROR),
        (400, {"Message": "Invalid primaryCurrencyCode"}, Outcome.API_ERROR),
        (404, None, Outcome.API_ERROR),
    ],
)
def test_every_reply_maps_to_one_outcome(status: int, body: Any, expected: Outcome) -> None:
    assert classify(status, body) is expected


@pytest.mark.parametrize(
    ("message", "nonce_fault"),
    [
        ("Invalid credentials (bad nonce)", True),
        ("Invalid credentials (bad nonce). This nonce=5, last valid nonce=9", True),
        ("  invalid credentials (BAD NONCE)", True),
        ("Invalid credentials (bad signature)", False),
        ("Invalid credentials", False),
        ("Too many requests", False),
    ],
)
def test_a_stale_nonce_is_told_apart_from_a_rejected_key(message: str, nonce_fault: bool) -> None:
    # Until invalid_nonce joins the outcome set both file as auth_error; this tells them apart.
    assert is_nonce_fault(message) is nonce_fault
