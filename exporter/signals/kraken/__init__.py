"""Kraken REST access for the live probe and the recovery check: signing, outcome classification,
the client, the probe, and its integration behind the exchange-neutral seam (integration.py,
exporter/signals/exchange.py). Nothing outside this package and signals/integrations.py imports
it (an import-linter contract)."""
