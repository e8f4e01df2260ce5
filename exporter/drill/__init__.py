"""The drill: the demo, the traffic simulator and the Kraken-compatible server.

Nothing in production imports this package (an import-linter contract checks it); only the
command line dispatches to it.
"""
