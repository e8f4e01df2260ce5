"""liquid-abt-exporter: Prometheus exporter and Alertmanager webhook receiver for LIQUID ABT."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("liquid-abt-exporter")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
