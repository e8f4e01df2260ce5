"""Kraken behind the exchange-neutral seam (exporter/signals/exchange.py): its settings from the
`kraken` config section, and its probe built from the client and the API keys."""

from __future__ import annotations

from typing import Final

import aiohttp
from prometheus_client import CollectorRegistry

from exporter.config import Config
from exporter.secrets import Secrets
from exporter.signals.exchange import ProbeSettings

from .client import KrakenClient
from .probe import ExchangeProbe


class KrakenIntegration:
    name: Final = "kraken"

    def enabled(self, config: Config) -> bool:
        return config.kraken.enabled

    def settings(self, config: Config) -> ProbeSettings:
        k = config.kraken
        return ProbeSettings(
            probe_interval=k.probe_interval, doubt_interval=k.doubt_interval,
            incident_interval=k.incident_interval, timeout=k.timeout,
            # At most four calls of one timeout each, spaced by `call_spacing`, with room to spare.
            verification_time=6 * k.timeout, verify_interval=k.verify_interval,
        )  # fmt: skip

    def probe(
        self, config: Config, secrets: Secrets, session: aiohttp.ClientSession,
        registry: CollectorRegistry,
    ) -> ExchangeProbe:  # fmt: skip
        k = config.kraken
        client = KrakenClient(
            session, k.base_url, k.timeout, secrets.kraken_api_key, secrets.kraken_api_secret
        )
        return ExchangeProbe(
            registry, client, exchange=self.name, slow_threshold=k.slow_threshold,
            call_spacing=k.call_spacing,
        )  # fmt: skip


INTEGRATION: Final = KrakenIntegration()
