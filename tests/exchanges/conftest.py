"""Fixtures for the secondary exchanges' tests: each fake exchange on 127.0.0.1 (port 0, with a
control port) and a shared client session.

`liquid_abt_drill` lives in drill/ (not installed into the venv), so that folder goes onto
sys.path here; once the drill package is installed with the project this is a no-op.
"""

from __future__ import annotations

import base64
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest_asyncio

DRILL = Path(__file__).resolve().parents[2] / "drill"
if str(DRILL) not in sys.path:
    sys.path.insert(0, str(DRILL))

from liquid_abt_drill.exchanges.btcmarkets import FakeBtcMarkets  # noqa: E402
from liquid_abt_drill.exchanges.independentreserve import FakeIndependentReserve  # noqa: E402

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
