"""Simulated LIQUID ABT platform traffic for demos, dashboards and drills.

Writes `bitcoin_purchases` and one `api_call_logs` row per exchange call, at a steady rate with a
failure mix that follows the runbook scenarios, or backfills history at once. Live, it behaves
like the platform towards the exporter's controls: it buys nothing while automatic purchases are
paused and fails fast, without calling the exchange, while the circuit breaker is open.

It refuses a database that holds purchases of tenants it did not create (its tenants are
`sim-*`): fake purchases in production would page people and could be retried for real.
"""

from .cli import build_parser, main
from .database import Controls, backfill, check_database, read_controls
from .generator import (
    BALANCE,
    DEPTH,
    ORDER,
    PRICE,
    TENANT_PREFIX,
    Call,
    Purchase,
    Simulator,
    Summary,
)
from .live import Connect, Live
from .scenarios import (
    BREAKER_OPEN,
    CATALOGUE,
    FAILURES,
    SCENARIOS,
    Failure,
    Scenario,
    SimulateError,
    parse_mix,
)

__all__ = [
    "BALANCE",
    "BREAKER_OPEN",
    "CATALOGUE",
    "DEPTH",
    "FAILURES",
    "ORDER",
    "PRICE",
    "SCENARIOS",
    "TENANT_PREFIX",
    "Call",
    "Connect",
    "Controls",
    "Failure",
    "Live",
    "Purchase",
    "Scenario",
    "SimulateError",
    "Simulator",
    "Summary",
    "backfill",
    "build_parser",
    "check_database",
    "main",
    "parse_mix",
    "read_controls",
]
