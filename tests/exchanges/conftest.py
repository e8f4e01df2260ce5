"""Fixtures for the secondary exchanges' tests: each fake exchange on 127.0.0.1 (port 0, with a
control port) and a shared client session.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import aiohttp
import pytest_asyncio

from liquid_abt_drill.exchanges.btcmarkets import FakeBtcMarkets
from liquid_abt_drill.exchanges.independentreserve import FakeIndependentReserve

API_KEY = "test-api-key"
IR_SECRET = "an Independent Reserve secret only the tests know"
BM_SECRET = base64.b64encode(b"a BTC Markets secret that only the tests know").decode()


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


@pytest_asyncio.fixture
async def fake_ir() -> AsyncIterator[FakeIndependentReserve]:
    fake = FakeIndependentReserve(api_key=API_KEY, api_secret=IR_SECRET)
    await fake.start("127.0.0.1", 0, control_port=0)
    yield fake
    await fake.stop()


@pytest_asyncio.fixture
async def fake_bm() -> AsyncIterator[FakeBtcMarkets]:
    fake = FakeBtcMarkets(api_key=API_KEY, api_secret=BM_SECRET)
    await fake.start("127.0.0.1", 0, control_port=0)
    yield fake
    await fake.stop()
