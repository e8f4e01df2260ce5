"""The exchanges this build can probe and verify: the one module outside an exchange's own package
that names it. The application's wiring (exporter/web/app.py) takes the registry from here; the
runbook only ever sees the neutral seam (exporter/signals/exchange.py)."""

from __future__ import annotations

from exporter.signals.btcmarkets.integration import INTEGRATION as BTCMARKETS
from exporter.signals.exchange import Registry
from exporter.signals.independentreserve.integration import INTEGRATION as INDEPENDENTRESERVE
from exporter.signals.kraken.integration import INTEGRATION as KRAKEN


def default_registry() -> Registry:
    """A fresh registry of every shipped integration (tests may add their own)."""
    return Registry([KRAKEN, INDEPENDENTRESERVE, BTCMARKETS])
