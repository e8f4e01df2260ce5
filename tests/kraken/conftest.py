"""Fixtures for the Kraken tests: a real fake Kraken on 127.0.0.1 (port 0), a shared client
session and a fresh metrics registry per test. Async fixtures use pytest_asyncio.fixture so
they work whatever `asyncio_mode` the suite runs in."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from prometheus_client import CollectorRegistry

from exporter.signals.kraken.client import KrakenClient
from exporter.signals.kraken.probe import ExchangeProbe
from liquid_abt_drill.kraken_server.server import FakeKraken

API_KEY = "test-api-key"
API_SECRET = base64.b64encode(b"a secret that only the tests and the fake Kraken know").decode()


@pytest_asyncio.fixture
async def kraken() -> AsyncIterator[FakeKraken]:
    fake = FakeKraken(api_key=API_KEY, api_secret=API_SECRET)
    await fake.start("127.0.0.1", 0, control_port=0)
    yield fake
    await fake.stop()


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


@pytest.fixture
def make_client(kraken: FakeKraken, session: aiohttp.ClientSession) -> Callable[..., KrakenClient]:
    def make(timeout: float = 2.0, credentials: bool = True, **kwargs: Any) -> KrakenClient:
        key, secret = (API_KEY, API_SECRET) if credentials else (None, None)
        return KrakenClient(session, kraken.url, timeout, key, secret, **kwargs)

    return make


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def make_probe(
    registry: CollectorRegistry, make_client: Callable[..., KrakenClient]
) -> Callable[..., ExchangeProbe]:
    def make(client: KrakenClient | None = None, **kwargs: Any) -> ExchangeProbe:
        kwargs.setdefault("call_spacing", 0.0)
        return ExchangeProbe(registry, client or make_client(), **kwargs)

    return make
