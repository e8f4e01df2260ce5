"""BTC Markets behind the exchange-neutral seam (exporter/signals/exchange.py): its settings from
the `btcmarkets` config section, and its probe built from the client and the read-only API key
(BTCMARKETS_API_KEY / _SECRET, or their _FILE forms)."""

from __future__ import annotations

from typing import Final

import aiohttp
from prometheus_client import CollectorRegistry

from exporter.config import Config
from exporter.secrets import Secrets
from exporter.signals.exchange import ProbeSettings
from exporter.signals.market_probe import Endpoints, MarketProbe, settings_of

from .client import EXCHANGE, BtcMarketsClient


class BtcMarketsIntegration:
    name: Final = EXCHANGE

    def enabled(self, config: Config) -> bool:
        return config.btcmarkets.enabled

    def settings(self, config: Config) -> ProbeSettings:
        return settings_of(config.btcmarkets)

    def probe(
        self, config: Config, secrets: Secrets, session: aiohttp.ClientSession,
        registry: CollectorRegistry,
    ) -> MarketProbe:  # fmt: skip
        s = config.btcmarkets
        client = BtcMarketsClient(
            session, s.base_url, s.timeout, secrets.btcmarkets_api_key,
            secrets.btcmarkets_api_secret, market_id=s.pair.replace("/", "-"),
        )  # fmt: skip
        # The exchange's clock: a signature outside its window is refused (invalid_nonce).
        endpoints = Endpoints(
            status="markets", ticker="ticker", order_book="orderbook", balance="balances",
            extra=(("time", client.server_time),),
        )  # fmt: skip
        return MarketProbe(
            registry, client, self.name, endpoints, slow_threshold=s.slow_threshold,
            call_spacing=s.call_spacing,
        )  # fmt: skip


INTEGRATION: Final = BtcMarketsIntegration()
