"""The platform's side of the controls: the check it runs before every automatic purchase.

The SQL is documented in docs/platform-integration.md; a missing row means the defaults (not
paused, breaker closed, normal rate, not routed).

`buy_on` is failover's answer (docs/failover.md): the exchange asked about when it may be used,
the secondary's name while its purchases are routed there, NULL when purchases must wait. The
other columns are what they were before failover, so a platform that ignores `buy_on` pauses
exactly as before. A route is followed only while it is valid (its secondary verified recently)
and nothing holds it: an admin's hold on the asked exchange, the secondary's own pause or open
breaker.
"""

from __future__ import annotations

from dataclasses import dataclass

from exporter.database.transactions import Executor

# The exchange to buy on, for an exchange `x` whose controls are `c` and `b`, its route `r`, and
# the routed secondary's controls `sc` and `sb` (the same text in the gate and the routed claim).
BUY_ON = """CASE
           WHEN r.routed_to IS NOT NULL AND r.valid_until > now()
                AND NOT coalesce(c.manual_hold, false) AND NOT coalesce(b.manual_hold, false)
                AND NOT coalesce(sc.purchases_paused, false)
                AND coalesce(sb.state, 'closed') <> 'open'
               THEN r.routed_to
           WHEN NOT coalesce(c.purchases_paused, false) AND coalesce(b.state, 'closed') <> 'open'
               THEN {exchange}
       END"""

ROUTE_JOINS = """LEFT JOIN liquid_abt.exchange_controls c ON c.exchange = {exchange}
LEFT JOIN liquid_abt.circuit_breakers b ON b.exchange = {exchange}
LEFT JOIN liquid_abt.purchase_routes r ON r.exchange = {exchange}
LEFT JOIN liquid_abt.exchange_controls sc ON sc.exchange = r.routed_to
LEFT JOIN liquid_abt.circuit_breakers sb ON sb.exchange = r.routed_to"""

GATE_SQL = f"""
SELECT x.exchange,
       coalesce(c.purchases_paused, false) AS purchases_paused,
       coalesce(b.state, 'closed') AS breaker_state,
       coalesce(c.api_rate_multiplier, 1)::float8 AS api_rate_multiplier,
       {BUY_ON.format(exchange="x.exchange")} AS buy_on
FROM (VALUES ($1::text)) AS x(exchange)
{ROUTE_JOINS.format(exchange="x.exchange")}
"""


@dataclass(frozen=True)
class PurchaseGate:
    """What the platform checks before buying on an exchange."""

    exchange: str
    purchases_paused: bool
    breaker_state: str
    api_rate_multiplier: float
    buy_on: str | None = None

    @property
    def may_buy(self) -> bool:
        """Today's answer, for a platform that ignores routes: may it buy on this exchange."""
        return not self.purchases_paused and self.breaker_state != "open"

    @property
    def routed(self) -> bool:
        return self.buy_on is not None and self.buy_on != self.exchange


async def purchase_gate(db: Executor, exchange: str) -> PurchaseGate:
    """The platform's pre-purchase check, as it runs it: may it buy, where, at what call rate."""
    row = await db.fetchrow(GATE_SQL, exchange)
    return PurchaseGate(**dict(row))
