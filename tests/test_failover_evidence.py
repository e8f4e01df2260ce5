"""A whole app configured with Kraken primary and both secondaries, against the fake servers: the
secondaries are probed like Kraken (their metrics, their own incident through the same quorum
rules) and verified, and every exchange's row of failover's evidence is written."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from exporter.config import parse_config
from exporter.database.embedded import free_port
from exporter.database.pool import Connection
from exporter.secrets import Secrets
from exporter.web.app import create_app
from liquid_abt_drill.exchanges.base import Mode
from liquid_abt_drill.exchanges.btcmarkets import FakeBtcMarkets
from liquid_abt_drill.exchanges.independentreserve import FakeIndependentReserve
from liquid_abt_drill.kraken_server.server import FakeKraken
from tests.helpers import scrape, series, value, wait_until

FAST = {"probe_interval": "300ms", "doubt_interval": "100ms", "incident_interval": "200ms",
        "timeout": "1s", "call_spacing": "1ms", "verify_interval": "300ms"}  # fmt: skip


@pytest.fixture
async def secondaries() -> AsyncIterator[tuple[FakeIndependentReserve, FakeBtcMarkets]]:
    ir, bm = FakeIndependentReserve(), FakeBtcMarkets()
    await ir.start()
    await bm.start()
    yield ir, bm
    await ir.stop()
    await bm.stop()


async def test_secondaries_are_probed_verified_and_stopped_like_kraken(
    aiohttp_client: Any, database: Connection, db: asyncpg.Connection, kraken: FakeKraken,
    secondaries: tuple[FakeIndependentReserve, FakeBtcMarkets],
) -> None:  # fmt: skip
    ir, bm = secondaries
    config = parse_config({
        "exchanges": {"kraken": {"role": "primary"}, "independentreserve": {"role": "secondary"},
                      "btcmarkets": {"role": "secondary"}},
        "collectors": {"interval": "1h", "timeout": "10s"},
        "kraken": {**FAST, "base_url": kraken.url},
        "independentreserve": {**FAST, "enabled": True, "base_url": ir.url},
        "btcmarkets": {**FAST, "enabled": True, "base_url": bm.url},
        "breaker": {"failure_threshold": 2},
    })  # fmt: skip
    client: TestClient = await aiohttp_client(create_app(config, database, Secrets()))

    async def rows() -> dict[str, bool]:
        found = await db.fetch("SELECT exchange, ok FROM liquid_abt.exchange_verifications")
        return {r["exchange"]: r["ok"] for r in found}

    async def all_verified() -> bool:
        return await rows() == {"kraken": True, "independentreserve": True, "btcmarkets": True}

    async def probed_up() -> bool:
        # Verification and probing are separate loops: the first verified row can come before
        # the first probe round has answered, so wait for both rather than assume an order.
        samples = await scrape(client)
        up = series(samples, "liquid_abt_exchange_up")
        return all(up.get(frozenset({("exchange", e)})) == 1
                   for e in ("independentreserve", "btcmarkets"))  # fmt: skip

    await wait_until(all_verified)
    await wait_until(probed_up)
    samples = await scrape(client)
    for exchange in ("independentreserve", "btcmarkets"):
        assert value(samples, "liquid_abt_exchange_up", exchange=exchange) == 1
        assert value(samples, "liquid_abt_exchange_verification_ok", exchange=exchange) == 1
        assert value(samples, "liquid_abt_exchange_role", exchange=exchange, role="secondary") == 1
        assert value(samples, "liquid_abt_exchange_role", exchange=exchange, role="primary") == 0
    assert value(samples, "liquid_abt_exchange_role", exchange="kraken", role="primary") == 1
    kraken_row = await db.fetchrow(
        "SELECT best_bid, best_ask FROM liquid_abt.exchange_verifications WHERE exchange = 'kraken'"
    )
    assert 0 < kraken_row["best_bid"] < kraken_row["best_ask"], "the primary's reference price"

    # Independent Reserve refuses connections: its own incident opens on the same evidence rules
    # as Kraken's (every replica's rounds unanswered), and its evidence turns to a failure.
    await ir.set_mode(Mode.DOWN)

    async def ir_stopped() -> bool:
        phase = await db.fetchval(
            "SELECT phase FROM liquid_abt.incidents WHERE exchange = 'independentreserve'"
        )
        return phase == "down" and (await rows())["independentreserve"] is False

    await wait_until(ir_stopped)
    assert (await rows())["kraken"] is True
    assert await db.fetchval(
        "SELECT phase FROM liquid_abt.incidents WHERE exchange = 'kraken'"
    ) in (None, "normal")  # fmt: skip


async def test_a_secondary_is_down_only_when_every_replica_sees_it_down(
    aiohttp_client: Any, database: Connection, db: asyncpg.Connection,
    secondaries: tuple[FakeIndependentReserve, FakeBtcMarkets],
) -> None:  # fmt: skip
    """Kraken's quorum rules, for free: a replica cut off from Independent Reserve is that
    replica's problem (isolated); when every replica sees it down, its incident opens."""
    ir, _ = secondaries

    def config(ir_url: str) -> Any:
        return parse_config({
            "exchanges": {"kraken": {"role": "primary"},
                          "independentreserve": {"role": "secondary"}},
            "collectors": {"interval": "1h", "timeout": "10s"},
            "kraken": {"enabled": False},
            "independentreserve": {**FAST, "enabled": True, "base_url": ir_url},
        })  # fmt: skip

    await aiohttp_client(create_app(config(ir.url), database, Secrets(), replica="replica-a"))
    # replica-b's network: nothing listens where it looks for Independent Reserve.
    cut_off = await aiohttp_client(
        create_app(config(f"http://127.0.0.1:{free_port()}"), database, Secrets(),
                   replica="replica-b")
    )  # fmt: skip

    async def isolated() -> bool:
        samples = await scrape(cut_off)
        return value(samples, "liquid_abt_exchange_isolated", exchange="independentreserve") == 1

    await wait_until(isolated)
    phase = "SELECT phase FROM liquid_abt.incidents WHERE exchange = 'independentreserve'"
    assert await db.fetchval(phase) in (None, "normal")

    await ir.set_mode(Mode.DOWN)

    async def down() -> bool:
        return await db.fetchval(phase) == "down"

    await wait_until(down)
