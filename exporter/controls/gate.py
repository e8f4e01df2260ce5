"""The platform's side of the controls: the check it runs before every automatic purchase.

The SQL is documented in docs/platform-integration.md; a missing row means the defaults (not
paused, breaker closed, normal rate).
"""

from __future__ import annotations

from dataclasses import dataclass

from exporter.database.transactions import Executor

GATE_SQL = """
SELECT x.exchange,
       coalesce(c.purchases_paused, false) AS purchases_paused,
       coalesce(b.state, 'closed') AS breaker_state,
       coalesce(c.api_rate_multiplier, 1)::float8 AS api_rate_multiplier
FROM (VALUES ($1::text)) AS x(exchange)
LEFT JOIN liquid_abt.exchange_controls c ON c.exchange = x.exchange
LEFT JOIN liquid_abt.circuit_breakers b ON b.exchange = x.exchange
"""


@dataclass(frozen=True)
class PurchaseGate:
    """What the platform checks before buying on an exchange."""

    exchange: str
    purchases_paused: bool
    breaker_state: str
    api_rate_multiplier: float

    @property
    def may_buy(self) -> bool:
        return not self.purchases_paused and self.breaker_state != "open"


async def purchase_gate(db: Executor, exchange: str) -> PurchaseGate:
    """The platform's pre-purchase check, as it runs it: may it buy, and at what call rate."""
    row = await db.fetchrow(GATE_SQL, exchange)
    return PurchaseGate(**dict(row))
