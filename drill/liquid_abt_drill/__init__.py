"""The drill: the demo, the incident drills, the traffic simulator and the Kraken-compatible server.

A distribution of its own (`liquid-abt-drill`, drill/pyproject.toml): the exporter never imports
it (an import-linter contract checks it), and the exporter's wheel and image do not carry it.
"""
