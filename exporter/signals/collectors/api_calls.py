"""Platform API call metrics from `api_call_logs`: what the platform itself saw from the exchange."""

from __future__ import annotations

import asyncpg
from prometheus_client.core import Metric

from exporter.config import Config, format_duration
from exporter.labels import OTHER
from exporter.signals.collectors.base import LabelledValues

# Providers and endpoints outside the closed sets are folded into `other` in SQL, so the mean
# and the percentile are computed over exactly the rows of each series.
API_CALLS_SQL = """
WITH windows(label, seconds) AS (SELECT * FROM unnest($1::text[], $2::float8[]))
SELECT w.label AS window,
       CASE WHEN lower(c.provider) = ANY($3::text[]) THEN lower(c.provider) ELSE 'other' END AS exchange,
       CASE WHEN c.endpoint = ANY($4::text[]) THEN c.endpoint ELSE 'other' END AS endpoint,
       count(*) FILTER (WHERE c.success) AS succeeded,
       count(*) FILTER (WHERE NOT c.success) AS failed,
       avg(c.response_time)::float8 / 1000 AS mean_seconds,
       (percentile_cont(0.95) WITHIN GROUP (ORDER BY c.response_time))::float8 / 1000 AS p95_seconds
FROM windows w
JOIN api_call_logs c ON c.created_at > now() - make_interval(secs => w.seconds)
WHERE c.created_at > now() - make_interval(secs => $5::float8)  -- the longest window: uses the index
GROUP BY 1, 2, 3
"""


class ApiCallsSource:
    name = "api_calls"

    def __init__(self, config: Config) -> None:
        self._windows = [format_duration(w) for w in config.api_calls.windows]
        self._seconds = list(config.api_calls.windows)
        self._exchanges = list(config.exchanges)
        self._endpoints = list(config.api_calls.endpoints)

    def _families(self) -> dict[str, LabelledValues]:
        w, x, e = self._windows, [*self._exchanges, OTHER], [*self._endpoints, OTHER]
        return {
            "calls": LabelledValues(
                "liquid_abt_platform_api_calls",
                "Exchange API calls logged by the platform in the window.",
                ["window", "exchange", "endpoint", "success"], w, x, e, ["true", "false"],
            ),
            "mean": LabelledValues(
                "liquid_abt_platform_api_mean_response_time_seconds",
                "Mean response time of the platform's exchange API calls in the window; 0 when none.",
                ["window", "exchange", "endpoint"], w, x, e,
            ),
            "p95": LabelledValues(
                "liquid_abt_platform_api_p95_response_time_seconds",
                "95th percentile response time of the platform's exchange API calls in the window.",
                ["window", "exchange", "endpoint"], w, x, e,
            ),
        }  # fmt: skip

    async def collect(self, connection: asyncpg.Connection) -> list[Metric]:
        families = self._families()
        rows = await connection.fetch(
            API_CALLS_SQL,
            self._windows,
            self._seconds,
            self._exchanges,
            self._endpoints,
            max(self._seconds),
        )
        for row in rows:
            key = (row["window"], row["exchange"], row["endpoint"])
            families["calls"].set((*key, "true"), row["succeeded"])
            families["calls"].set((*key, "false"), row["failed"])
            # Rows without a response_time leave the averages undefined: keep 0 then.
            families["mean"].set(key, row["mean_seconds"] or 0.0)
            families["p95"].set(key, row["p95_seconds"] or 0.0)
        return [f.family() for f in families.values()]
