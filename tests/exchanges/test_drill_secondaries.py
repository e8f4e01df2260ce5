"""What the failover drills need of the drill: replicas configured with secondaries on the
scaled shipped cadence, and fakes that give each replica its own key."""

from __future__ import annotations

from collections.abc import Awaitable

import aiohttp
import yaml

from exporter.config import parse_config
from exporter.signals.btcmarkets.client import BtcMarketsClient
from exporter.signals.independentreserve.client import IndependentReserveClient
from exporter.signals.rest import ExchangeApiError
from liquid_abt_drill.exchanges.btcmarkets import FakeBtcMarkets
from liquid_abt_drill.exchanges.independentreserve import FakeIndependentReserve
from liquid_abt_drill.incidents.timing import Timing, exporter_config

from .conftest import BM_SECRET


def test_the_drills_replicas_can_be_configured_with_secondaries() -> None:
    text = exporter_config(
        Timing(scale=0.1), "http://127.0.0.1:1", "http://127.0.0.1:2",
        {"independentreserve": "http://127.0.0.1:3", "btcmarkets": "http://127.0.0.1:4"},
    )  # fmt: skip
    config = parse_config(yaml.safe_load(text))
    assert (config.primary, config.secondaries) == ("kraken", ["independentreserve", "btcmarkets"])
    ir = config.independentreserve
    assert (ir.base_url, ir.probe_interval, ir.verify_interval) == ("http://127.0.0.1:3", 3, 1.5)
    assert config.btcmarkets.call_spacing == config.kraken.call_spacing
    plain = parse_config(yaml.safe_load(exporter_config(Timing(), "http://a:1", "http://b:2")))
    assert (plain.exchanges, plain.secondaries) == (["kraken"], []), "no secondary: as before"


async def test_each_replica_has_its_own_key_and_nonces(session: aiohttp.ClientSession) -> None:
    """Replicas sharing a key would interleave their nonces; each has its own, as on Kraken."""
    keys = {"replica-0": "secret zero", "replica-1": "secret one"}
    ir = FakeIndependentReserve()
    ir.state.keys.update(keys)
    bm = FakeBtcMarkets()
    bm.state.keys.update({"replica-0": BM_SECRET})
    await ir.start()
    await bm.start()
    try:
        clients = [
            IndependentReserveClient(session, ir.url, 2, key, secret, nonce=lambda n=n: n)
            for n, (key, secret) in zip((2000, 1000), keys.items(), strict=True)
        ]
        for client in clients:  # the second's nonce is lower than the first's: its own key
            assert "AUD" in await client.balance()
        bm_client = BtcMarketsClient(session, bm.url, 2, "replica-0", BM_SECRET)
        assert "AUD" in await bm_client.balance()
        stranger = IndependentReserveClient(session, ir.url, 2, "nobody", "secret zero")
        assert (await _outcome(stranger.balance())) == "auth_error"
    finally:
        await ir.stop()
        await bm.stop()


async def _outcome(call: Awaitable[object]) -> str:
    try:
        await call
    except ExchangeApiError as exc:
        return exc.outcome.value
    return "success"
