"""The secondary exchanges' probes through their integrations, against the fake servers: each mode
classified onto the closed outcome set, the probe metrics labelled by exchange, and recovery
checks that carry the quote failover reads."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry

from exporter.config import parse_config
from exporter.secrets import Secrets
from exporter.signals.exchange import Quote
from exporter.signals.integrations import default_registry
from exporter.signals.market_probe import MarketProbe
from liquid_abt_drill.exchanges.base import REFERENCE_PRICE, FakeExchange, Mode
from liquid_abt_drill.exchanges.btcmarkets import FakeBtcMarkets
from liquid_abt_drill.exchanges.independentreserve import FakeIndependentReserve

from .conftest import API_KEY, BM_SECRET, IR_SECRET

EXCHANGES = ("independentreserve", "btcmarkets")


@pytest.fixture(params=EXCHANGES)
def fake(request: Any, fake_ir: FakeIndependentReserve, fake_bm: FakeBtcMarkets) -> FakeExchange:
    return fake_ir if request.param == "independentreserve" else fake_bm


def make_probe(
    fake: FakeExchange,
    session: aiohttp.ClientSession,
    registry: CollectorRegistry | None = None,
    *,
    keys: bool = True,
    timeout: str = "2s",
) -> MarketProbe:
    name = fake.name
    config = parse_config({
        "exchanges": {"kraken": {"role": "primary"}, name: {"role": "secondary"}},
        name: {"enabled": True, "base_url": fake.url, "timeout": timeout, "call_spacing": "1ms"},
    })  # fmt: skip
    secret = IR_SECRET if name == "independentreserve" else BM_SECRET
    env = {f"{name.upper()}_API_KEY": API_KEY, f"{name.upper()}_API_SECRET": secret}
    secrets = Secrets.from_env(env if keys else {})
    integration = default_registry().probed(config, name)
    assert integration is not None
    probe = integration.probe(config, secrets, session, registry or CollectorRegistry())
    assert isinstance(probe, MarketProbe)
    return probe


async def test_a_healthy_round_reads_every_call_and_the_market(
    fake: FakeExchange, session: aiohttp.ClientSession
) -> None:
    result = await make_probe(fake, session).run_once()
    assert (result.ok, result.outcome, result.status) == (True, "success", "online")
    assert len(result.calls) == (5 if fake.name == "btcmarkets" else 4)  # BTC Markets' clock
    bids, asks = fake.state.book()
    assert result.quote == Quote(
        bids[0][0], asks[0][0], tuple(asks), Decimal("25000.00"),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("mode", "http_status", "outcome", "calls"),
    [
        (Mode.DOWN, None, "network_error", 1),
        (Mode.SERVER_ERROR, 503, "service_unavailable", 1),
        (Mode.SERVER_ERROR, 502, "server_error", 1),
        (Mode.RATE_LIMITED, None, "rate_limited", 1),
        (Mode.AUTH_FAILURE, None, "auth_error", None),
        (Mode.GARBAGE, None, "api_error", None),
    ],
)
async def test_each_failure_is_classified_and_an_unanswered_call_ends_the_round(
    fake: FakeExchange,
    session: aiohttp.ClientSession,
    mode: Mode,
    http_status: int | None,
    outcome: str,
    calls: int | None,
) -> None:
    await fake.set_mode(mode, http_status=http_status)
    result = await make_probe(fake, session).run_once()
    assert (result.ok, result.outcome, result.quote) == (False, outcome, None)
    if calls is not None:
        assert len(result.calls) == calls
    assert result.available is (outcome not in ("network_error", "service_unavailable",
                                                 "server_error"))  # fmt: skip


async def test_a_hanging_exchange_costs_one_timeout(
    fake: FakeExchange, session: aiohttp.ClientSession
) -> None:
    await fake.set_mode(Mode.HANGING)
    result = await make_probe(fake, session, timeout="200ms").run_once()
    assert (result.outcome, len(result.calls), result.available) == ("timeout", 1, False)


async def test_maintenance_is_read_as_a_status_and_fails_the_check(
    fake: FakeExchange, session: aiohttp.ClientSession
) -> None:
    await fake.set_mode(Mode.MAINTENANCE)
    probe = make_probe(fake, session)
    result = await probe.run_once()
    assert result.status == "maintenance"
    check = await probe.recovery_check()
    assert not check.ok and check.checks[0].name == "system_status"
    assert [c.detail for c in check.checks[1:]] == ["skipped: system_status failed"] * 3


async def test_a_recovery_check_passes_with_the_quote_failover_reads(
    fake: FakeExchange, session: aiohttp.ClientSession
) -> None:
    fake.state.set_market(balances={"AUD": "812.50"})
    check = await make_probe(fake, session).recovery_check()
    assert check.ok, check.checks
    assert [c.name for c in check.checks] == ["system_status", "price", "balance", "order_book"]
    assert check.quote is not None
    assert check.quote.balance_aud == Decimal("812.50")
    assert check.quote.mid == REFERENCE_PRICE
    assert check.quote.asks[0] == (REFERENCE_PRICE + 5, Decimal("0.4"))


async def test_without_a_key_the_balance_is_neither_called_nor_quoted(
    fake: FakeExchange, session: aiohttp.ClientSession
) -> None:
    check = await make_probe(fake, session, keys=False).recovery_check()
    assert check.ok and "balance" not in [c.name for c in check.checks]
    assert check.quote is not None and check.quote.balance_aud is None


async def test_a_thin_book_and_a_price_spike_show_in_the_quote(
    fake: FakeExchange, session: aiohttp.ClientSession
) -> None:
    probe = make_probe(fake, session)
    await fake.set_mode(Mode.THIN_BOOK)
    thin = (await probe.recovery_check()).quote
    assert thin is not None and sum(v for _, v in thin.asks) == Decimal("0.002")
    await fake.set_mode(Mode.PRICE_SPIKE)
    spiked = (await probe.recovery_check()).quote
    assert spiked is not None and spiked.mid == REFERENCE_PRICE * Decimal("1.05")


async def test_both_secondaries_report_into_the_same_families(
    fake_ir: FakeIndependentReserve, fake_bm: FakeBtcMarkets, session: aiohttp.ClientSession
) -> None:
    registry = CollectorRegistry()
    for fake in (fake_ir, fake_bm):
        await make_probe(fake, session, registry).run_once()
    for name in EXCHANGES:
        assert registry.get_sample_value("liquid_abt_exchange_up", {"exchange": name}) == 1
        assert registry.get_sample_value(
            "liquid_abt_exchange_status", {"exchange": name, "status": "online"}
        ) == 1  # fmt: skip
    assert registry.get_sample_value(
        "liquid_abt_exchange_requests_total",
        {"exchange": "btcmarkets", "endpoint": "orderbook", "outcome": "success"},
    ) == 1  # fmt: skip
    assert registry.get_sample_value(
        "liquid_abt_exchange_requests_total",
        {"exchange": "independentreserve", "endpoint": "GetAccounts", "outcome": "timeout"},
    ) == 0, "every series pre-initialised"  # fmt: skip
