"""The exchange-neutral seam: a second exchange is one integration plus config. The registry, the
Kraken integration's settings, and a whole app that probes, stops and verifies an exchange it
only knows through an integration the test registers."""

from __future__ import annotations

from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from exporter.config import Config, parse_config
from exporter.database.pool import Connection
from exporter.runbook.incident.state import LEASE_MARGIN, Policy
from exporter.secrets import Secrets
from exporter.signals.exchange import (
    UNPROBED,
    Check,
    ProbeSettings,
    RecoveryResult,
    Registry,
    RoundResult,
    round_of,
)
from exporter.signals.integrations import default_registry
from exporter.web.app import create_app
from tests.helpers import wait_until

SETTINGS = ProbeSettings(
    probe_interval=0.1, doubt_interval=0.05, incident_interval=0.1, timeout=1.0,
    verification_time=2.0,
)  # fmt: skip


class FakeExchangeProbe:
    """An exchange that refuses connections until told otherwise."""

    def __init__(self) -> None:
        self.round: RoundResult = round_of("network_error", status=None)
        self.verifications = 0

    async def run_once(self) -> RoundResult:
        return self.round

    async def recovery_check(self) -> RecoveryResult:
        self.verifications += 1
        return RecoveryResult(True, (Check("price", True, "last trade 1"),))


class FakeIntegration:
    name = "independent_reserve"

    def __init__(self) -> None:
        self.built = FakeExchangeProbe()

    def enabled(self, config: Config) -> bool:
        return True

    def settings(self, config: Config) -> ProbeSettings:
        return SETTINGS

    def probe(
        self, config: Config, secrets: Secrets, session: aiohttp.ClientSession,
        registry: CollectorRegistry,
    ) -> FakeExchangeProbe:  # fmt: skip
        return self.built


def test_an_exchange_without_an_integration_is_decided_on_unprobed() -> None:
    registry = default_registry()
    config = parse_config({"exchanges": ["kraken", "coinjar"]})
    assert registry.names() == ["btcmarkets", "independentreserve", "kraken"]
    assert registry.settings(config, "coinjar") == UNPROBED
    assert registry.probed(config, "coinjar") is None


def test_an_integration_registers_once() -> None:
    registry = Registry([FakeIntegration()])
    with pytest.raises(ValueError, match="'independent_reserve' registered twice"):
        registry.register(FakeIntegration())


def test_krakens_settings_and_lease_come_from_its_own_section() -> None:
    config = parse_config({
        "kraken": {"probe_interval": "20s", "doubt_interval": "1s", "incident_interval": "3s",
                   "timeout": "4s", "enabled": False},
    })  # fmt: skip
    registry = default_registry()
    settings = registry.settings(config, "kraken")
    assert (settings.probe_interval, settings.doubt_interval, settings.incident_interval) == (
        20, 1, 3,
    )  # fmt: skip
    assert Policy.from_config(config, settings).lease == 6 * 4 + LEASE_MARGIN
    assert registry.probed(config, "kraken") is None, "disabled: verified, not probed"


async def test_a_second_exchange_is_probed_stopped_and_verified_through_its_integration(
    aiohttp_client: Any, database: Connection, db: asyncpg.Connection
) -> None:
    config = parse_config({
        "exchanges": ["kraken", "independent_reserve"],
        "collectors": {"interval": "1h", "timeout": "10s"},
        "kraken": {"enabled": False},
        "breaker": {"recovery_timeout": "100ms"},
        "incident": {"probation": "200ms"},
    })  # fmt: skip
    integration = FakeIntegration()
    app = create_app(config, database, Secrets(), exchanges=Registry([integration]))
    client: TestClient = await aiohttp_client(app)
    assert client.app is not None

    async def phase() -> str:
        return await db.fetchval(
            """SELECT coalesce(max(phase), 'normal') FROM liquid_abt.incidents
               WHERE exchange = 'independent_reserve'"""
        )

    async def down() -> bool:
        return await phase() == "down"

    await wait_until(down)
    opened = await db.fetchval(
        """SELECT cause FROM liquid_abt.audit_log
           WHERE action = 'incident_opened' AND exchange = 'independent_reserve'"""
    )
    assert opened.startswith("independent_reserve refuses connections on 1 of 1 replicas")

    integration.built.round = round_of()

    async def normal() -> bool:
        return await phase() == "normal"

    await wait_until(normal)
    assert integration.built.verifications >= 1
    assert await db.fetchval(
        "SELECT purchases_paused FROM liquid_abt.exchange_controls WHERE exchange = 'independent_reserve'"
    ) is False  # fmt: skip
