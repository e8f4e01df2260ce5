"""Control metrics from the exporter's own tables: breaker, pause, retry queue, API rate, and the
incident model's phase and the failures it handled.

These rows are shared by every replica and by the platform, so they are read like the platform's
data (in the background), not from this process's memory.
"""

from __future__ import annotations

import json

import asyncpg
from prometheus_client.core import CounterMetricFamily, Metric

from exporter.config import Config, format_duration
from exporter.controls.gate import GATE_SQL
from exporter.labels import (
    BREAKER_STATES,
    INCIDENT_CAUSES,
    INCIDENT_PHASES,
    OTHER,
    RECOVERY_CHECKS,
    ROUTE_GUARDS,
)
from exporter.signals.collectors.base import LabelledValues

CONTROLS_SQL = """
SELECT x.exchange,
       coalesce(b.state, 'closed') AS state,
       coalesce(b.failure_count, 0) AS failure_count,
       coalesce(b.manual_hold, false) AS breaker_held,
       coalesce(c.manual_hold, false) AS pause_held,
       coalesce(c.purchases_paused, false) AS paused,
       coalesce(extract(epoch FROM c.paused_at), 0)::float8 AS paused_at,
       coalesce(c.api_rate_multiplier, 1)::float8 AS rate_multiplier,
       coalesce(i.phase, 'normal') AS phase,
       coalesce(split_part(i.cause, ':', 1), 'none') AS cause,
       CASE WHEN i.phase = 'down' THEN i.last_verification END AS verification,
       (SELECT count(*) FROM liquid_abt.retry_queue q
         WHERE q.exchange = x.exchange AND q.status IN ('queued', 'in_progress')) AS queue_depth,
       (SELECT coalesce(extract(epoch FROM now() - min(q.enqueued_at)), 0)::float8
          FROM liquid_abt.retry_queue q
         WHERE q.exchange = x.exchange AND q.status IN ('queued', 'in_progress')) AS oldest_age
FROM unnest($1::text[]) AS x(exchange)
LEFT JOIN liquid_abt.circuit_breakers b ON b.exchange = x.exchange
LEFT JOIN liquid_abt.exchange_controls c ON c.exchange = x.exchange
LEFT JOIN liquid_abt.incidents i ON i.exchange = x.exchange
"""

# Failed purchases inside a period in which the incident model held purchases (from a margin
# before its first evidence, since the platform fails before a probe round notices): failures
# the loop handled, which must not page again as a failure rate once the outage is over.
HANDLED_SQL = """
SELECT i.exchange, w.label AS window, count(p.*) AS failures
FROM liquid_abt.incident_periods i
CROSS JOIN unnest($1::text[], $2::float8[]) AS w(label, seconds)
JOIN bitcoin_purchases p
  ON p.status = 'failed' AND p.exchange_provider = i.exchange
 AND p.created_at >= greatest(i.started_at - make_interval(secs => $3::float8),
                              now() - make_interval(secs => w.seconds))
 AND p.created_at <= coalesce(i.ended_at, now())
WHERE coalesce(i.ended_at, now()) > now() - make_interval(secs => $4::float8)
  AND i.exchange = ANY($5::text[])
GROUP BY 1, 2
"""


# Failover's route of the primary: the gate's answer (what the platform sees), and the row.
ROUTE_SQL = f"""
SELECT g.buy_on, r.routed_to, r.blocked_guard, coalesce(r.failovers, 0) AS failovers,
       CASE WHEN g.buy_on IS DISTINCT FROM g.exchange AND g.buy_on IS NOT NULL
            THEN extract(epoch FROM now() - r.since) ELSE 0 END::float8 AS routed_seconds
FROM ({GATE_SQL}) AS g
LEFT JOIN liquid_abt.purchase_routes r ON r.exchange = g.exchange
"""


BACKLOG_SQL = """
SELECT count(*) FROM liquid_abt.notifications WHERE processed_at IS NULL AND dead_lettered_at IS NULL
"""


def failed_checks(verification: str | None) -> set[str]:
    """The checks a failed verification (incidents.last_verification, JSON) failed itself: not
    those skipped because an earlier one failed; names outside the closed set count as other."""
    if not verification:
        return set()
    result = json.loads(verification)
    if result.get("passed"):
        return set()
    failed = {
        str(c.get("name"))
        for c in result.get("checks", [])
        if not c.get("ok") and not str(c.get("detail", "")).startswith("skipped")
    }
    return {c if c in RECOVERY_CHECKS else OTHER for c in failed} or {OTHER}


class ControlsSource:
    name = "controls"

    def __init__(self, config: Config, probe_margin: float = 40.0) -> None:
        self._exchanges = list(config.exchanges)
        self._windows = [format_duration(w) for w in config.purchases.windows]
        self._seconds = list(config.purchases.windows)
        # The margin before the first failed probe round: one interval and one timeout (the
        # wiring computes it from the exchanges' probe settings).
        self._margin = probe_margin
        failover = config.failover
        # Served whenever the primary is configured, failover or not (the route is then the
        # gate's: primary or none), so that rules and dashboards always find the series.
        self._primary = failover.primary if failover.primary in config.exchanges else None
        self._routes = ["primary", *failover.secondaries, "none"]

    def _families(self) -> dict[str, LabelledValues]:
        x = self._exchanges
        return {
            "state": LabelledValues(
                "liquid_abt_circuit_breaker_state",
                "Circuit breaker state: 1 for the current state, 0 for the others.",
                ["exchange", "state"], x, BREAKER_STATES,
            ),
            "failures": LabelledValues(
                "liquid_abt_circuit_breaker_failures",
                "Replicas that see the exchange API not answer (the incident model's evidence).",
                ["exchange"], x,
            ),
            "held": LabelledValues(
                "liquid_abt_manual_hold",
                "1 while an admin holds a control (breaker open, purchases paused); automation never lifts it.",
                ["exchange", "control"], x, ["circuit_breaker", "purchases"],
            ),
            "paused": LabelledValues(
                "liquid_abt_purchases_paused",
                "1 when automatic purchases on the exchange are paused.",
                ["exchange"], x,
            ),
            "paused_since": LabelledValues(
                "liquid_abt_purchases_paused_since_timestamp_seconds",
                "Unix time automatic purchases were paused; 0 when not paused.",
                ["exchange"], x,
            ),
            "depth": LabelledValues(
                "liquid_abt_retry_queue_depth",
                "Purchases waiting in the retry queue (queued or in progress).",
                ["exchange"], x,
            ),
            "oldest": LabelledValues(
                "liquid_abt_retry_queue_oldest_age_seconds",
                "Age of the oldest purchase waiting in the retry queue; 0 when empty.",
                ["exchange"], x,
            ),
            "rate": LabelledValues(
                "liquid_abt_api_rate_multiplier",
                "Multiplier applied to the platform's exchange API call rate (1 is normal).",
                ["exchange"], x,
            ),
            "phase": LabelledValues(
                "liquid_abt_incident_phase",
                "The incident model's phase: 1 for the current one (normal; down: purchases "
                "stopped; probation: recovery verified, purchases resume after a period of health).",
                ["exchange", "phase"], x, INCIDENT_PHASES,
            ),
            "cause": LabelledValues(
                "liquid_abt_incident_cause",
                "Why the incident model stopped purchases: 1 for the current cause, none when normal.",
                ["exchange", "cause"], x, INCIDENT_CAUSES,
            ),
            "verification": LabelledValues(
                "liquid_abt_recovery_verification_failed",
                "1 for each check the latest recovery verification failed while purchases stay "
                "stopped (the exchange's evidence: status, price, order book, balance).",
                ["exchange", "check"], x, RECOVERY_CHECKS,
            ),
            "handled": LabelledValues(
                "liquid_abt_purchase_handled_failures",
                "Failed purchases inside an incident the loop handled (purchases stopped, retries "
                "queued), by window: the failure-rate alerts leave them out.",
                ["exchange", "window"], x, self._windows,
            ),
        }  # fmt: skip

    async def collect(self, connection: asyncpg.Connection) -> list[Metric]:
        families = self._families()
        backlog = LabelledValues(
            "liquid_abt_webhook_unprocessed_notifications",
            "Recorded alert states whose actions have not run yet (a growing value: a stuck worker).",
            [],
        )
        backlog.set((), await connection.fetchval(BACKLOG_SQL))
        for row in await connection.fetch(CONTROLS_SQL, self._exchanges):
            exchange = row["exchange"]
            families["state"].set((exchange, row["state"]), 1)
            families["failures"].set((exchange,), row["failure_count"])
            families["held"].set((exchange, "circuit_breaker"), 1 if row["breaker_held"] else 0)
            families["held"].set((exchange, "purchases"), 1 if row["pause_held"] else 0)
            families["paused"].set((exchange,), 1 if row["paused"] else 0)
            families["paused_since"].set((exchange,), row["paused_at"] if row["paused"] else 0)
            families["depth"].set((exchange,), row["queue_depth"])
            families["oldest"].set((exchange,), row["oldest_age"])
            families["rate"].set((exchange,), row["rate_multiplier"])
            families["phase"].set((exchange, row["phase"]), 1)
            families["cause"].set((exchange, row["cause"]), 1)
            for check in failed_checks(row["verification"]):
                families["verification"].set((exchange, check), 1)
        handled = await connection.fetch(
            HANDLED_SQL, self._windows, self._seconds, self._margin, max(self._seconds),
            self._exchanges,
        )  # fmt: skip
        for row in handled:
            families["handled"].set((row["exchange"], row["window"]), row["failures"])
        return [
            *(f.family() for f in families.values()), backlog.family(),
            *await self._route(connection),
        ]  # fmt: skip

    async def _route(self, connection: asyncpg.Connection) -> list[Metric]:
        """Failover's series for the primary."""
        exchange = self._primary
        if exchange is None:
            return []
        route = LabelledValues(
            "liquid_abt_purchase_route",
            "Where the exchange's purchases go, as the platform's gate says (buy_on): 1 for the "
            "current route (primary; a secondary's name while routed; none while they wait).",
            ["exchange", "route"], [exchange], self._routes,
        )  # fmt: skip
        blocked = LabelledValues(
            "liquid_abt_purchase_route_blocked",
            "1 for the guard that keeps the exchange's purchases from being routed to a "
            "secondary while its incident stops them.",
            ["exchange", "guard"], [exchange], ROUTE_GUARDS,
        )  # fmt: skip
        routed = LabelledValues(
            "liquid_abt_purchase_routed_seconds",
            "How long the exchange's purchases have been routed to a secondary; 0 when not.",
            ["exchange"], [exchange],
        )  # fmt: skip
        failovers = CounterMetricFamily(
            "liquid_abt_purchase_failovers",
            "Times the exchange's purchases were routed to a secondary.",
            labels=["exchange"],
        )
        row = await connection.fetchrow(ROUTE_SQL, exchange)
        buy_on = row["buy_on"]
        label = "none" if buy_on is None else "primary" if buy_on == exchange else buy_on
        route.set((exchange, label if label in self._routes else "none"), 1)
        if row["blocked_guard"] in ROUTE_GUARDS:
            blocked.set((exchange, row["blocked_guard"]), 1)
        routed.set((exchange,), row["routed_seconds"])
        failovers.add_metric([exchange], row["failovers"])
        return [route.family(), blocked.family(), routed.family(), failovers]
