"""Independent Reserve behind the exchange-neutral seam (exporter/signals/exchange.py): its settings
from the `independentreserve` config section, and its probe built from the client and the
read-only API key (INDEPENDENTRESERVE_API_KEY / _SECRET, or their _FILE forms)."""

from __future__ import annotations

from typing import Final

import aiohttp
from prometheus_client import CollectorRegistry

from exporter.config import Config
from exporter.secrets import Secrets
from exporter.signals.exchange import ProbeSettings
from exporter.signals.market_probe import Endpoints, MarketProbe, settings_of

from .client import EXCHANGE, IndependentReserveClient

ENDPOINTS: Final = Endpoints(
    status="GetExchangeStatus", ticker="GetMarketSummary", order_book="GetOrderBook",
    balance="GetAccounts",
)  # fmt: skip
# The exporter's asset codes as Independent Reserve spells them (it calls bitcoin Xbt).
_CODES: Final = {"BTC": "Xbt"}


def currency_code(asset: str) -> str:
    """BTC as Xbt, AUD as Aud: the exchange's primaryCurrencyCode / secondaryCurrencyCode."""
    return _CODES.get(asset, asset.title())


class IndependentReserveIntegration:
    name: Final = EXCHANGE

    def enabled(self, config: Config) -> bool:
        return config.independentreserve.enabled

    def settings(self, config: Config) -> ProbeSettings:
        return settings_of(config.independentreserve)

    def probe(
        self, config: Config, secrets: Secrets, session: aiohttp.ClientSession,
        registry: CollectorRegistry,
    ) -> MarketProbe:  # fmt: skip
        s = config.independentreserve
        base, _, quote = s.pair.partition("/")
        client = IndependentReserveClient(
            session, s.base_url, s.timeout, secrets.independentreserve_api_key,
            secrets.independentreserve_api_secret,
            primary=currency_code(base), secondary=currency_code(quote),
        )  # fmt: skip
        return MarketProbe(
            registry, client, self.name, ENDPOINTS, slow_threshold=s.slow_threshold,
            call_spacing=s.call_spacing,
        )  # fmt: skip


INTEGRATION: Final = IndependentReserveIntegration()
