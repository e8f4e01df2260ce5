"""KrakenClient against the real fake Kraken on 127.0.0.1: parsing, signing, and failures."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from decimal import Decimal

import aiohttp
import pytest

from exporter.signals.kraken.client import KrakenClient, KrakenError
from exporter.signals.kraken.outcomes import Outcome
from liquid_abt_drill.kraken_server.server import FakeKraken

from .conftest import API_KEY, API_SECRET

pytestmark = pytest.mark.asyncio

MakeClient = Callable[..., KrakenClient]


async def test_ticker_reads_the_canonical_pair_key(
    kraken: FakeKraken, make_client: MakeClient
) -> None:
    kraken.state.prices["XXBTZAUD"] = Decimal("150001.2")
    kraken.state.prices["XXBTZUSD"] = Decimal("97000.5")
    client = make_client()
    # Asked as XBTAUD, answered under XXBTZAUD: the client must not look up the name it sent.
    assert await client.ticker("XBTAUD") == Decimal("150001.2")
    assert await client.ticker("XBTUSD") == Decimal("97000.5")


async def test_depth_returns_count_levels_on_each_side(make_client: MakeClient) -> None:
    book = await make_client().depth("XBTAUD", count=3)
    assert book.pair == "XXBTZAUD"
    assert len(book.bids) == len(book.asks) == 3
    assert book.bids[0].price < book.asks[0].price
    assert [b.price for b in book.bids] == sorted((b.price for b in book.bids), reverse=True)


async def test_system_status_and_server_time(kraken: FakeKraken, make_client: MakeClient) -> None:
    client = make_client()
    assert await client.system_status() == "online"
    assert (await client.server_time()).unixtime > 1_600_000_000
    await kraken.set_mode("cancel_only")
    assert await client.system_status() == "cancel_only"


async def test_unknown_pair_is_an_api_error(make_client: MakeClient) -> None:
    with pytest.raises(KrakenError) as info:
        await make_client().ticker("DOGEXYZ")
    assert info.value.outcome is Outcome.API_ERROR
    assert info.value.endpoint == "Ticker"
    assert "EQuery:Unknown asset pair" in info.value.message


async def test_signed_balance_is_accepted(make_client: MakeClient) -> None:
    client = make_client()
    assert await client.balance() == {"ZAUD": Decimal("25000.0000"), "XXBT": Decimal("0.5")}
    # A second call needs a larger nonce, which the client provides.
    assert await client.balance()


async def test_wrong_secret_is_rejected_as_invalid_signature(
    kraken: FakeKraken, session: aiohttp.ClientSession
) -> None:
    wrong = KrakenClient(session, kraken.url, 2.0, API_KEY, "d3Jvbmcgc2VjcmV0")
    with pytest.raises(KrakenError) as info:
        await wrong.balance()
    assert info.value.outcome is Outcome.AUTH_ERROR
    assert "EAPI:Invalid signature" in info.value.message


async def test_wrong_key_is_rejected_as_invalid_key(
    kraken: FakeKraken, session: aiohttp.ClientSession
) -> None:
    wrong = KrakenClient(session, kraken.url, 2.0, "someone-else", API_SECRET)
    with pytest.raises(KrakenError) as info:
        await wrong.balance()
    assert info.value.outcome is Outcome.AUTH_ERROR
    assert "EAPI:Invalid key" in info.value.message


async def test_a_replayed_nonce_is_rejected(make_client: MakeClient) -> None:
    client = make_client(nonce=lambda: 1_700_000_000_000)
    await client.balance()
    with pytest.raises(KrakenError) as info:
        await client.balance()
    assert info.value.outcome is Outcome.INVALID_NONCE
    assert "EAPI:Invalid nonce" in info.value.message


async def test_nonces_increase_per_key_so_two_keys_never_collide(
    kraken: FakeKraken, session: aiohttp.ClientSession
) -> None:
    """Two replicas, each with its own key, may send the same nonce; on one key the second
    is refused, as Kraken does."""
    kraken.state.keys["replica-2"] = API_SECRET
    first = KrakenClient(session, kraken.url, 2.0, API_KEY, API_SECRET, nonce=lambda: 5)
    second = KrakenClient(session, kraken.url, 2.0, "replica-2", API_SECRET, nonce=lambda: 5)
    assert await first.balance() and await second.balance()
    shared = KrakenClient(session, kraken.url, 2.0, "replica-2", API_SECRET, nonce=lambda: 4)
    with pytest.raises(KrakenError) as info:
        await shared.balance()
    assert info.value.outcome is Outcome.INVALID_NONCE
    assert kraken.state.nonces == {API_KEY: 5, "replica-2": 5}


async def test_private_call_without_credentials(make_client: MakeClient) -> None:
    client = make_client(credentials=False)
    assert not client.has_credentials
    with pytest.raises(KrakenError) as info:
        await client.balance()
    assert info.value.outcome is Outcome.AUTH_ERROR


async def test_a_hanging_server_costs_one_timeout(
    kraken: FakeKraken, make_client: MakeClient
) -> None:
    await kraken.set_mode("hanging")
    client = make_client(timeout=0.5)
    with pytest.raises(KrakenError) as info:
        await asyncio.wait_for(client.ticker(), timeout=0.5 + 1)
    assert info.value.outcome is Outcome.TIMEOUT
    assert "0.5s" in info.value.message


@pytest.mark.parametrize(
    ("mode", "expected", "text"),
    [
        ("down", Outcome.NETWORK_ERROR, ""),
        ("rate_limited", Outcome.RATE_LIMITED, "EAPI:Rate limit exceeded"),
        ("rate_limited_http", Outcome.RATE_LIMITED, "HTTP 429"),
        ("maintenance", Outcome.SERVICE_UNAVAILABLE, "EService:Unavailable"),
        ("server_error", Outcome.SERVER_ERROR, "HTTP 502"),
        ("garbage", Outcome.API_ERROR, "not Kraken JSON"),
    ],
)
async def test_failure_modes_raise_one_exception_type(
    kraken: FakeKraken, make_client: MakeClient, mode: str, expected: Outcome, text: str
) -> None:
    await kraken.set_mode(mode)
    with pytest.raises(KrakenError) as info:
        await make_client().ticker()
    assert info.value.outcome is expected
    assert text in info.value.message


async def test_server_error_status_is_configurable(
    kraken: FakeKraken, make_client: MakeClient
) -> None:
    await kraken.set_mode("server_error", http_status=500)
    with pytest.raises(KrakenError, match="HTTP 500"):
        await make_client().server_time()


async def test_key_without_secret_is_a_configuration_error(session: aiohttp.ClientSession) -> None:
    with pytest.raises(ValueError, match="together"):
        KrakenClient(session, "http://127.0.0.1:1", 1.0, API_KEY, None)


async def test_repr_never_shows_the_secret(make_client: MakeClient) -> None:
    text = repr(make_client())
    assert API_SECRET not in text and API_KEY not in text
