"""Purchase metrics from `bitcoin_purchases`: the numbers behind the purchase-failure runbook.

Each row falls in the bucket of the shortest window that holds it, and the windows are sums of
buckets. Rows are counted per slice of `created_at` (slices.py) and a slice's counts are kept
until a row in it changes, so a refresh classifies failure reasons (in SQL, reason_sql.py) only
for the slices written since the last one and the few that a window's start cuts: an outage in
which every failed purchase has its own text costs what its new purchases cost, not what its
texts cost. Every query bounds `created_at` by a plain predicate with constant durations, so the
planner uses the `created_at` index and the cost follows the window, not the table. All queries
share one read-only repeatable-read transaction, hence one `now()` and one snapshot.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal

import asyncpg
from prometheus_client.core import Metric

from exporter.config import Config, format_duration
from exporter.labels import OTHER, PURCHASE_STATUSES, REASON_CLASSES, SETTLED_STATUSES
from exporter.signals.classify import ReasonClassifier
from exporter.signals.collectors.base import LabelledValues
from exporter.signals.collectors.reason_sql import PYTHON, ReasonSql
from exporter.signals.collectors.slices import (
    NOTHING_KEPT,
    SLICE_SECONDS,
    Clock,
    SliceCache,
    census_of,
    slice_of,
    window_rows,
)

log = logging.getLogger(__name__)


def _cutoff(seconds: float) -> str:
    return f"now() - make_interval(secs => {float(seconds)!r})"


def _since(seconds: float) -> str:
    return f"p.created_at > {_cutoff(seconds)}"


# The slices to recount, each read through the `created_at` index (OFFSET 0 keeps the subquery
# apart: joined, the planner guesses a third of the table per range and scans the whole window).
_IN_SLICES = f"""unnest($3::timestamptz[]) AS s(slice)
     CROSS JOIN LATERAL (
         SELECT * FROM bitcoin_purchases p
         WHERE p.created_at >= s.slice AND p.created_at < s.slice + interval '{SLICE_SECONDS} seconds'
         OFFSET 0) AS p"""


class PurchasesSql:
    """The collector's SQL, built once from the configuration (durations are constants)."""

    def __init__(self, config: Config, non_ascii: str) -> None:
        purchases = config.purchases
        reasons = ReasonSql(purchases.failure_reasons)
        windows = purchases.windows  # sorted, shortest first
        bucket = " ".join(f"WHEN {_since(w)} THEN {i}" for i, w in enumerate(windows))
        bucket = f"CASE {bucket} ELSE {len(windows)} END"
        longest = max(windows)
        scanned = max(longest, purchases.retry_window)
        cutoffs = ", ".join(_cutoff(w) for w in windows)
        every_cutoff = ", ".join(_cutoff(w) for w in (*windows, purchases.retry_window))
        self.clock = f"""
SELECT now() AS now, pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS xmin,
       ARRAY[{cutoffs}] AS cutoffs, {_cutoff(purchases.retry_window)} AS retry_cutoff,
       ARRAY(SELECT DISTINCT {slice_of("c")} FROM unnest(ARRAY[{every_cutoff}]) AS c) AS edges
"""
        # Per slice: its rows, and whether one was written after the reference xid ($1).
        self.census = f"""
SELECT {slice_of("p.created_at")} AS slice, count(*) AS purchases,
       bool_or(age(p.xmin) <= (SELECT age($1::text::xid))) AS changed
FROM bitcoin_purchases p
WHERE {_since(scanned)}
GROUP BY 1
"""
        case = reasons.case("p.failure_reason", "lowered.text", non_ascii)
        select = f"""
SELECT {{slice}} AS slice, p.exchange_provider AS provider, p.status,
       CASE WHEN p.status = 'failed' THEN {case} END AS reason,
       {bucket} AS bucket, {_since(purchases.retry_window)} AS in_retry, count(*) AS purchases,
       coalesce(sum(p.amount_aud), 0) AS amount_aud,
       count(*) FILTER (WHERE p.status = 'failed' AND p.retry_count < $1) AS retry_candidates
FROM {{purchases}}, {reasons.lowered("p.failure_reason")} AS lowered(text)
WHERE p.status = ANY($2::text[]) AND {_since(scanned)}
GROUP BY 1, 2, 3, 4, 5, 6
"""
        python = f"""
SELECT {{slice}} AS slice, p.exchange_provider AS provider, p.failure_reason, {bucket} AS bucket,
       {_since(purchases.retry_window)} AS in_retry, count(*) AS purchases,
       coalesce(sum(p.amount_aud), 0) AS amount_aud,
       count(*) FILTER (WHERE p.retry_count < $1) AS retry_candidates
FROM {{purchases}}
WHERE p.status = 'failed' AND {_since(scanned)}
  AND {reasons.needs_python("p.failure_reason", non_ascii)}
GROUP BY 1, 2, 3, 4, 5
"""
        # The slices ($3) to recount, each read through the `created_at` index; then, only when
        # that returned rows marked PYTHON (texts PostgreSQL must not judge), those texts.
        self.recount = select.format(slice="s.slice", purchases=_IN_SLICES)
        self.python_reasons = python.format(
            slice="s.slice", purchases=_IN_SLICES.replace("$3", "$2")
        )
        # Every slice of the window in one scan: a cold start (and what bench/compare.py gives
        # query-exporter to run).
        whole = {"slice": slice_of("p.created_at"), "purchases": "bitcoin_purchases p"}
        self.recount_all = select.format(**whole)
        self.python_reasons_all = python.format(**whole)
        # A tenant counts in every window from the bucket of its latest failure on; providers are
        # mapped to exchanges before counting, so one tenant is one tenant in `other`.
        self.tenants = f"""
SELECT exchange, bucket, count(*) AS tenants
FROM (SELECT CASE WHEN lower(provider) = ANY($1::text[]) THEN lower(provider) ELSE 'other' END
               AS exchange, tenant_id, min(bucket) AS bucket
      FROM (SELECT p.exchange_provider AS provider, p.tenant_id, min({bucket}) AS bucket
            FROM bitcoin_purchases p
            WHERE p.status = 'failed' AND {_since(longest)}
            GROUP BY 1, 2) AS per_provider
      GROUP BY 1, 2) AS per_exchange
WHERE bucket < {len(windows)}
GROUP BY 1, 2
"""
        self.untranslatable = reasons.untranslatable


def non_ascii_test(server_encoding: str) -> str:
    """Texts with a character outside ASCII; cheap in UTF-8, where such characters are longer."""
    if server_encoding.upper() in ("UTF8", "UTF-8"):
        return "octet_length(p.failure_reason) <> char_length(p.failure_reason)"
    return "p.failure_reason ~ E'[^\\\\u0001-\\\\u007f]'"


class PurchasesSource:
    name = "purchases"

    def __init__(self, config: Config, classifier: ReasonClassifier) -> None:
        self._config = config
        self._windows = [format_duration(w) for w in config.purchases.windows]
        self._exchanges = list(config.exchanges)
        self._excluded = set(config.purchases.retry_excluded_reasons)
        self._classify = classifier.classify
        self._sql: dict[str, PurchasesSql] = {}  # by the non-ASCII test of the server's encoding
        self._cache = SliceCache()
        self.recounted_slices = 0  # by the last refresh: what it classified, for tests and benches

    def sql(self, connection: asyncpg.Connection) -> PurchasesSql:
        non_ascii = non_ascii_test(connection.get_settings().server_encoding)
        if non_ascii not in self._sql:
            sql = self._sql[non_ascii] = PurchasesSql(self._config, non_ascii)
            if sql.untranslatable is not None:
                log.warning(
                    "failure reasons are classified in Python: refreshes cost one row per "
                    "distinct text of the recounted slices",
                    extra={"error": str(sql.untranslatable)},
                )
        return self._sql[non_ascii]

    def _exchange(self, provider: str | None) -> str:
        name = (provider or "").lower()
        return name if name in self._exchanges else OTHER

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
        if not connection.is_in_transaction():  # the runner opens one; a direct call gets its own
            async with connection.transaction(isolation="repeatable_read", readonly=True):
                return await self.collect(connection)
        sql = self.sql(connection)
        # The planner reads the groups of a reason or a bucket as one per distinct text or
        # time and would sort to disk; the real groups are a few hundred, so hash them.
        # And plan every refresh for the rows of this hour: a plan cached (after 5 runs of a
        # prepared statement) while the hour was quiet would go on serving the storm.
        await connection.execute(
            "SET LOCAL work_mem = '64MB'; SET LOCAL plan_cache_mode = force_custom_plan"
        )
        clock = Clock.from_row(await connection.fetchrow(sql.clock))
        census, stale, recounted = await self._counts(connection, sql, clock)
        tenants = await connection.fetch(sql.tenants, self._exchanges)
        slices = self._cache.merged(census, stale, recounted)
        families = self._families()
        self._add_counts(families, window_rows(clock, slices, stale, recounted))
        for row in tenants:
            for window in self._windows[row["bucket"] :]:
                families["tenants"].add((window, row["exchange"]), row["tenants"])
        self._cache.keep(clock, slices)
        self.recounted_slices = len(stale)
        return [f.family() for f in families.values()]

    async def _counts(
        self, connection: asyncpg.Connection, sql: PurchasesSql, clock: Clock
    ) -> tuple[list[Mapping], frozenset[datetime], list[dict]]:
        """The census of the window's slices, those to recount, and their recount."""
        reference = self._cache.reference(clock)
        if reference == NOTHING_KEPT:  # one scan counts every slice; the census follows from it
            recounted = await self._recount(connection, sql, None)
            census = census_of(recounted)
            return census, frozenset(row["slice"] for row in census), recounted
        census = await connection.fetch(sql.census, reference)
        stale = self._cache.stale(clock, census)
        if len(stale) * 4 > len(census):  # most of the window: one scan beats a range per slice
            everything = await self._recount(connection, sql, None)
            return census, frozenset(row["slice"] for row in census), everything
        return census, stale, await self._recount(connection, sql, sorted(stale))

    async def _recount(
        self, connection: asyncpg.Connection, sql: PurchasesSql, slices: list[datetime] | None
    ) -> list[dict]:
        """The slices' rows (all of the window's for None) by key, bucket and retry window, every
        reason classified."""
        if slices == []:
            return []
        retry_max = self._config.purchases.retry_max_count
        statuses = list(PURCHASE_STATUSES)
        if slices is None:
            recount, python, args = sql.recount_all, sql.python_reasons_all, []
        else:
            recount, python, args = sql.recount, sql.python_reasons, [slices]
        rows = [dict(r) for r in await connection.fetch(recount, retry_max, statuses, *args)]
        if any(row["reason"] == PYTHON for row in rows):
            rows = [row for row in rows if row["reason"] != PYTHON] + [
                {**row, "status": "failed", "reason": self._classify(row["failure_reason"])}
                for row in await connection.fetch(python, retry_max, *args)
            ]
        return rows

    def _add_counts(self, families: dict[str, LabelledValues], rows: list[dict]) -> None:
        settled: dict[tuple[str, str], int] = {}
        failed: dict[tuple[str, str], int] = {}
        amounts: dict[tuple[str, str], Decimal] = {}  # exact sums: one rounding to float each
        for row in rows:
            reason, status = row["reason"], row["status"]
            exchange = self._exchange(row["provider"])
            if status == "failed" and reason not in self._excluded:
                families["retry"].add((exchange,), row["retry_eligible"])
            for window in self._windows[row["bucket"] :]:
                key, n = (window, exchange), row["purchases"]
                families["purchases"].add((*key, status), n)
                if status in SETTLED_STATUSES:
                    settled[key] = settled.get(key, 0) + n
                if status == "failed":
                    failed[key] = failed.get(key, 0) + n
                    families["failures"].add((*key, reason), n)  # type: ignore[arg-type]
                    amounts[key] = amounts.get(key, Decimal(0)) + row["amount_aud"]
        for key, amount in amounts.items():
            families["amount"].set(key, float(amount))
        for key, total in settled.items():
            families["ratio"].set(key, failed.get(key, 0) / total)
