"""The fake exchanges themselves: run from the command line, counted by the clients' endpoint
names, and their argument checks."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import aiohttp
import pytest

from exporter.signals.btcmarkets import client as btcmarkets
from exporter.signals.independentreserve import client as independentreserve
from liquid_abt_drill.exchanges.base import serve
from liquid_abt_drill.exchanges.btcmarkets import FakeBtcMarkets
from liquid_abt_drill.exchanges.independentreserve import FakeIndependentReserve

from .conftest import API_KEY, BM_SECRET, IR_SECRET


async def test_hits_are_counted_under_the_clients_endpoint_names(
    fake_ir: FakeIndependentReserve, fake_bm: FakeBtcMarkets, session: aiohttp.ClientSession
) -> None:
    ir = independentreserve.IndependentReserveClient(session, fake_ir.url, 2, API_KEY, IR_SECRET)
    bm = btcmarkets.BtcMarketsClient(session, fake_bm.url, 2, API_KEY, BM_SECRET)
    for client in (ir, bm):
        await client.status()
        await client.ticker()
        await client.order_book()
        await client.balance()
    await bm.server_time()
    assert set(fake_ir.state.hits) == set(independentreserve.ENDPOINTS)
    assert set(fake_bm.state.hits) == set(btcmarkets.ENDPOINTS)


async def test_the_command_line_serves_a_mode_with_keys_from_env_and_file(
    tmp_path: Path,
    session: aiohttp.ClientSession,
    unused_tcp_port_factory: Callable[[], int],
) -> None:
    port, control = unused_tcp_port_factory(), unused_tcp_port_factory()
    (tmp_path / "secret").write_text(BM_SECRET + "\n")
    env = {**os.environ, "BTCMARKETS_API_KEY": API_KEY}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "liquid_abt_drill.exchanges.btcmarkets",
        "--listen", f"127.0.0.1:{port}", "--control-listen", f"127.0.0.1:{control}",
        "--mode", "maintenance", "--api-secret-file", str(tmp_path / "secret"),
        env=env, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        line = await asyncio.wait_for(proc.stderr.readline(), timeout=30)
        assert f"127.0.0.1:{port}" in line.decode()
        client = btcmarkets.BtcMarketsClient(
            session, f"http://127.0.0.1:{port}", 5, API_KEY, BM_SECRET
        )
        assert (await client.status()).state == "maintenance"
        async with session.post(
            f"http://127.0.0.1:{control}/_control/mode", json={"mode": "healthy"}
        ) as resp:
            assert resp.status == 200
        assert "AUD" in await client.balance()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=30) == 0


@pytest.mark.parametrize(
    ("argv", "text"),
    [
        (["--listen", "nowhere"], "expected host:port, got 'nowhere'"),
        (["--mode", "sideways"], "invalid choice: 'sideways'"),
        (["--mode", "slow", "--latency", "-1"], "latency must not be negative, got -1.0"),
    ],
)
def test_the_command_line_rejects_bad_arguments(
    argv: list[str], text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        serve(FakeIndependentReserve, argv, default_port=9989)
    assert info.value.code == 2
    assert text in capsys.readouterr().err


def test_the_command_line_wants_both_key_and_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("INDEPENDENTRESERVE_API_KEY", raising=False)
    monkeypatch.delenv("INDEPENDENTRESERVE_API_SECRET", raising=False)
    (tmp_path / "key").write_text("abc\n")
    with pytest.raises(SystemExit):
        serve(FakeIndependentReserve, ["--api-key-file", str(tmp_path / "key")], default_port=1)
    assert "both the API key and the API secret" in capsys.readouterr().err


async def test_the_market_knob_sets_prices_and_a_low_balance(
    fake_ir: FakeIndependentReserve, session: aiohttp.ClientSession
) -> None:
    """What the failover drills need beside the modes: a price, a spike, a short AUD balance."""
    assert fake_ir.control_url is not None
    control = f"{fake_ir.control_url}/_control/market"
    body = {"price": "100000", "spike": "0.02", "balances": {"AUD": "120.5"}}
    async with session.post(control, json=body) as resp:
        assert resp.status == 200
        described = await resp.json()
    assert (described["price"], described["spike"]) == ("100000", "0.02")
    assert described["balances"]["AUD"] == "120.5"
    client = independentreserve.IndependentReserveClient(
        session, fake_ir.url, 2, API_KEY, IR_SECRET
    )
    assert (await client.balance())["AUD"].available == Decimal("120.5")
    assert (await client.ticker()).last == Decimal("100000")
    await fake_ir.set_mode("price_spike")
    assert (await client.ticker()).last == Decimal("102000")
    for bad in ({"price": "-1"}, {"spike": "x"}, {"balances": {"AUD": "-5"}}, {"colour": 1}):
        async with session.post(control, json=bad) as resp:
            assert resp.status == 400, bad
            assert "invalid market request" in (await resp.json())["error"]
    assert fake_ir.state.price == Decimal("100000"), "nothing half-applied"
