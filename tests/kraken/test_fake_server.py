"""The fake Kraken itself: payload shapes, the control endpoint and the `kraken-server` CLI."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from exporter.drill.kraken_server.server import FakeKraken

from .conftest import API_KEY, API_SECRET

pytestmark = pytest.mark.asyncio
ROOT = Path(__file__).resolve().parents[2]


async def test_ticker_has_krakens_shape(kraken: FakeKraken, session: aiohttp.ClientSession) -> None:
    async with session.get(f"{kraken.url}/0/public/Ticker", params={"pair": "XBTAUD"}) as resp:
        body = await resp.json()
    assert body["error"] == []
    ((pair, info),) = body["result"].items()
    assert pair == "XXBTZAUD"
    assert set(info) == {"a", "b", "c", "v", "p", "t", "l", "h", "o"}


async def test_system_status_has_krakens_shape(
    kraken: FakeKraken, session: aiohttp.ClientSession
) -> None:
    async with session.get(f"{kraken.url}/0/public/SystemStatus") as resp:
        body = await resp.json()
    assert body["result"]["status"] == "online"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["result"]["timestamp"])


async def test_control_port_switches_modes_and_survives_down(
    kraken: FakeKraken, session: aiohttp.ClientSession
) -> None:
    assert kraken.control_url is not None
    control = f"{kraken.control_url}/_control/mode"
    async with session.post(control, json={"mode": "down"}) as resp:
        assert resp.status == 200
        assert (await resp.json())["mode"] == "down"
    with pytest.raises(aiohttp.ClientConnectionError):
        async with session.get(f"{kraken.url}/0/public/Time"):
            pass
    async with session.get(control) as resp:
        assert (await resp.json())["mode"] == "down"
    async with session.post(control, json={"mode": "slow", "latency": 0.01}) as resp:
        assert await resp.json() == {"mode": "slow", "latency": 0.01, "http_status": 502}
    async with session.get(f"{kraken.url}/0/public/Time") as resp:
        assert resp.status == 200


async def test_control_is_also_served_on_the_api_port(
    kraken: FakeKraken, session: aiohttp.ClientSession
) -> None:
    async with session.post(f"{kraken.url}/_control/mode", json={"mode": "maintenance"}) as resp:
        assert resp.status == 200
    assert kraken.state.mode == "maintenance"


@pytest.mark.parametrize(
    "payload",
    [{"mode": "exploded"}, {"latency": 1}, {"mode": "slow", "latency": -1}, [1, 2]],
)
async def test_invalid_control_requests_are_rejected(
    kraken: FakeKraken, session: aiohttp.ClientSession, payload: object
) -> None:
    async with session.post(f"{kraken.control_url}/_control/mode", json=payload) as resp:
        assert resp.status == 400
    assert kraken.state.mode == "healthy"


async def test_stop_releases_hanging_requests(session: aiohttp.ClientSession) -> None:
    fake = FakeKraken()
    await fake.start()
    await fake.set_mode("hanging")
    request = asyncio.create_task(session.get(f"{fake.url}/0/public/Time"))
    await asyncio.sleep(0.05)  # let the request reach the server; the assertion does not need it
    await asyncio.wait_for(fake.stop(), timeout=1.5)
    with pytest.raises(aiohttp.ClientError):
        await asyncio.wait_for(request, timeout=1)


async def test_cli_serves_until_sigterm(
    tmp_path: Path, unused_tcp_port_factory: Callable[[], int], session: aiohttp.ClientSession
) -> None:
    ports = [unused_tcp_port_factory() for _ in range(2)]
    (tmp_path / "secret").write_text(API_SECRET + "\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KRAKEN_API_KEY": API_KEY}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "exporter.drill.kraken_server",
        "--listen", f"127.0.0.1:{ports[0]}", "--control-listen", f"127.0.0.1:{ports[1]}",
        "--mode", "cancel_only", "--api-secret-file", str(tmp_path / "secret"),
        env=env, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        line = await asyncio.wait_for(proc.stderr.readline(), timeout=10)
        assert f"127.0.0.1:{ports[0]}" in line.decode()
        url = f"http://127.0.0.1:{ports[0]}/0/public/SystemStatus"
        async with session.get(url) as resp:
            assert (await resp.json())["result"]["status"] == "cancel_only"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=10) == 0
