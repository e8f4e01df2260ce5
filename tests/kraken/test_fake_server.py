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

from liquid_abt_drill.kraken_server.server import FakeKraken

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
        body = await resp.json()
        assert {k: body[k] for k in ("mode", "latency", "http_status")} == {
            "mode": "slow",
            "latency": 0.01,
            "http_status": 502,
        }
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
        sys.executable, "-m", "liquid_abt_drill.kraken_server",
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


async def test_faults_make_a_share_of_requests_hang_or_rate_limited_and_cross_the_book(
    kraken: FakeKraken, session: aiohttp.ClientSession
) -> None:
    control = f"{kraken.url}/_control/faults"
    async with session.post(control, json={"hang_ratio": 2}) as response:
        assert response.status == 400 and "hang_ratio" in (await response.json())["error"]
    async with session.post(control, json={"rate_limit_ratio": 1.0, "crossed_book": True}) as r:
        assert (await r.json())["faults"] == {
            "hang_ratio": 0.0, "rate_limit_ratio": 1.0, "crossed_book": True,
        }  # fmt: skip
    async with session.get(f"{kraken.url}/0/public/Time") as response:
        assert (await response.json())["error"] == ["EAPI:Rate limit exceeded"]
    async with session.post(control, json={"crossed_book": True}) as r:
        assert r.status == 200
    async with session.get(f"{kraken.url}/0/public/Depth?pair=XBTAUD") as response:
        book = (await response.json())["result"]["XXBTZAUD"]
        assert float(book["bids"][0][0]) > float(book["asks"][0][0])
    kraken.state.rng.seed(7)
    async with session.post(control, json={"hang_ratio": 0.5}) as r:
        assert r.status == 200
    timeout = aiohttp.ClientTimeout(total=0.3)
    outcomes = []
    for _ in range(20):
        try:
            async with session.get(f"{kraken.url}/0/public/Time", timeout=timeout) as response:
                outcomes.append(response.status)
        except TimeoutError:
            outcomes.append("hung")
    assert 3 <= outcomes.count("hung") <= 17 and 200 in outcomes
