"""Purchase metrics from `bitcoin_purchases`: the numbers behind the purchase-failure runbook.

All windows are read in one read-only transaction, so every family shares one `now()`. Each
query bounds `created_at` by the longest window as a plain predicate: without it the planner
cannot use the `created_at` index through the join with the windows and scans the whole table.
"""

from __future__ import annotations

import asyncpg
from prometheus_client.core import Metric

from exporter.config import Config, format_duration
from exporter.labels import OTHER, PURCHASE_STATUSES, REASON_CLASSES, SETTLED_STATUSES
from exporter.signals.classify import ReasonClassifier
from exporter.signals.collectors.base import LabelledValues

_WINDOWS = "windows(label, seconds) AS (SELECT * FROM unnest($1::text[], $2::float8[]))"
_EXCHANGE = "CASE WHEN lower(p.exchange_provider) = ANY($3::text[]) THEN lower(p.exchange_provider) ELSE 'other' END"

COUNTS_SQL = f"""
WITH {_WINDOWS}
SELECT w.label AS window, {_EXCHANGE} AS exchange, p.status,
       CASE WHEN p.status = 'failed' THEN p.failure_reason END AS failure_reason,
       count(*) AS purchases,
       coalesce(sum(p.amount_aud), 0)::float8 AS amount_aud
FROM windows w
JOIN bitcoin_purchases p ON p.created_at > now() - make_interval(secs => w.seconds)
WHERE p.status = ANY($4::text[])
  AND p.created_at > now() - make_interval(secs => $5::float8)  -- the longest window
GROUP BY 1, 2, 3, 4
"""

TENANTS_SQL = f"""
WITH {_WINDOWS}
SELECT w.label AS window, {_EXCHANGE} AS exchange, count(DISTINCT p.tenant_id) AS tenants
FROM windows w
JOIN bitcoin_purchases p ON p.created_at > now() - make_interval(secs => w.seconds)
WHERE p.status = 'failed'
  AND p.created_at > now() - make_interval(secs => $4::float8)  -- the longest window
GROUP BY 1, 2
"""

# The runbook's "eligible for retry" query; the reason test happens on the classified reason.
RETRY_SQL = f"""
SELECT {_EXCHANGE} AS exchange, p.failure_reason, count(*) AS purchases
FROM bitcoin_purchases p
WHERE p.status = 'failed'
  AND p.retry_count < $1
  AND p.created_at > now() - make_interval(secs => $2::float8)
GROUP BY 1, 2
"""


class PurchasesSource:
    name = "purchases"

    def __init__(self, config: Config, classifier: ReasonClassifier) -> None:
        self._windows = [format_duration(w) for w in config.purchases.windows]
        self._seconds = list(config.purchases.windows)
        self._exchanges = list(config.exchanges)
        self._config = config.purchases
        self._classify = classifier.classify

    def _families(self) -> dict[str, LabelledValues]:
        w, x = self._windows, [*self._exchanges, OTHER]
        return {
            "purchases": LabelledValues(
                "liquid_abt_purchases",
                "Purchases created in the window, by status.",
                ["window", "exchange", "status"], w, x, PURCHASE_STATUSES,
            ),
            "failures": LabelledValues(
                "liquid_abt_purchase_failures",
                "Failed purchases created in the window, by failure reason class.",
                ["window", "exchange", "reason"], w, x, REASON_CLASSES,
            ),
            "ratio": LabelledValues(
                "liquid_abt_purchase_failure_ratio",
                "Failed / settled (completed, failed, refunded) purchases in the window; 0 when none settled.",
                ["window", "exchange"], w, x,
            ),
            "amount": LabelledValues(
                "liquid_abt_purchase_failed_amount_aud",
                "Total amount_aud of failed purchases created in the window.",
                ["window", "exchange"], w, x,
            ),
            "tenants": LabelledValues(
                "liquid_abt_purchase_affected_tenants",
                "Distinct tenants with a failed purchase created in the window.",
                ["window", "exchange"], w, x,
            ),
            "retry": LabelledValues(
                "liquid_abt_purchase_retry_eligible",
                "Failed purchases eligible for retry by the runbook's criteria.",
                ["exchange"], x,
            ),
        }  # fmt: skip

    async def collect(self, connection: asyncpg.Connection) -> list[Metric]:
        families = self._families()
        window_args = (self._windows, self._seconds, self._exchanges)
        longest = max(self._seconds)
        counts = await connection.fetch(COUNTS_SQL, *window_args, list(PURCHASE_STATUSES), longest)
        tenants = await connection.fetch(TENANTS_SQL, *window_args, longest)
        retry = await connection.fetch(
            RETRY_SQL,
            self._config.retry_max_count,
            self._config.retry_window,
            self._exchanges,
        )
        self._add_counts(families, counts)
        for row in tenants:
            families["tenants"].set((row["window"], row["exchange"]), row["tenants"])
        for row in retry:
            if self._classify(row["failure_reason"]) not in self._config.retry_excluded_reasons:
                families["retry"].add((row["exchange"],), row["purchases"])
        return [f.family() for f in families.values()]

    def _add_counts(self, families: dict[str, LabelledValues], rows: list[asyncpg.Record]) -> None:
        settled: dict[tuple[str, str], int] = {}
        failed: dict[tuple[str, str], int] = {}
        for row in rows:
            key = (row["window"], row["exchange"])
            families["purchases"].add((*key, row["status"]), row["purchases"])
            if row["status"] in SETTLED_STATUSES:
                settled[key] = settled.get(key, 0) + row["purchases"]
            if row["status"] == "failed":
                failed[key] = failed.get(key, 0) + row["purchases"]
                reason = self._classify(row["failure_reason"])
                families["failures"].add((*key, reason), row["purchases"])
                families["amount"].add(key, row["amount_aud"])
        for key, total in settled.items():
            families["ratio"].set(key, failed.get(key, 0) / total)
