"""Background refresh of database-backed metrics, served from the latest snapshot.

A scrape never waits on the database: each source refreshes on its own interval with a timeout,
and `/metrics` serves the families of its last successful refresh, with their age, until they
expire. Each snapshot is an exposition section (web/exposition.py) rendered once per refresh.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import count, product
from typing import Protocol

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily, Metric

from exporter.database.background import run_forever
from exporter.database.pool import DATABASE_ERRORS
from exporter.database.transactions import transaction

log = logging.getLogger(__name__)


class Source(Protocol):
    """One query family: reads the database and returns complete, pre-initialised families."""

    name: str

    async def collect(self, connection: asyncpg.Connection) -> list[Metric]: ...


class LabelledValues:
    """Values of one gauge family with every label combination pre-initialised to zero."""

    def __init__(self, name: str, doc: str, labels: Sequence[str], *domains: Iterable[str]):
        self.name, self.doc, self.labels = name, doc, list(labels)
        self.values: dict[tuple[str, ...], float] = {
            key: 0.0 for key in product(*(list(d) for d in domains))
        }

    def add(self, key: tuple[str, ...], value: float) -> None:
        # Keys are built from closed sets, so an unknown key is a bug, not data.
        if key not in self.values:
            raise KeyError(f"{self.name}: label values {key} outside the closed sets")
        self.values[key] += value

    def set(self, key: tuple[str, ...], value: float) -> None:
        if key not in self.values:
            raise KeyError(f"{self.name}: label values {key} outside the closed sets")
        self.values[key] = value

    def family(self) -> GaugeMetricFamily:
        family = GaugeMetricFamily(self.name, self.doc, labels=self.labels)
        for key, value in self.values.items():
            family.add_metric(list(key), value)
        return family


_serials = count()


@dataclass(frozen=True)
class Snapshot:
    families: list[Metric]
    taken_at: float  # wall clock, for the age and the expiry
    serial: int = field(default_factory=lambda: next(_serials))  # tells snapshots apart


class SelfMetrics:
    """The exporter's metrics about its own collectors."""

    def __init__(self, registry: CollectorRegistry, names: Sequence[str]) -> None:
        self.duration = Gauge(
            "liquid_abt_collector_duration_seconds",
            "Duration of the last refresh of a collector.",
            ["collector"],
            registry=registry,
        )
        self.errors = Counter(
            "liquid_abt_collector_errors_total",
            "Refreshes of a collector that failed or timed out.",
            ["collector"],
            registry=registry,
        )
        self.last_success = Gauge(
            "liquid_abt_collector_last_success_timestamp_seconds",
            "Unix time of the last successful refresh of a collector.",
            ["collector"],
            registry=registry,
        )
        for name in names:
            self.duration.labels(name)
            self.errors.labels(name)
            self.last_success.labels(name)


class SnapshotRunner:
    """Refreshes one source in the background and keeps its latest snapshot."""

    def __init__(
        self,
        source: Source,
        pool: asyncpg.Pool,
        metrics: SelfMetrics,
        interval: float,
        timeout: float,
        expiry: float | None,
        on_refreshed: Callable[[], None] = lambda: None,
    ) -> None:
        self.source = source
        self._pool = pool
        self._metrics = metrics
        self._interval = interval
        self._timeout = timeout
        self._expiry = expiry
        # Told after every refresh, failed or not: the collector's own metrics changed.
        self._on_refreshed = on_refreshed
        self.snapshot: Snapshot | None = None
        # One refresh at a time: a slower, older refresh must never overwrite a newer snapshot.
        self._lock = asyncio.Lock()

    @property
    def name(self) -> str:
        return self.source.name

    async def refresh(self) -> bool:
        async with self._lock:
            try:
                return await self._refresh()
            finally:
                self._on_refreshed()

    async def _refresh(self) -> bool:
        started = time.perf_counter()
        try:
            async with (
                asyncio.timeout(self._timeout),
                # One snapshot: the families of a source agree with each other.
                transaction(
                    self._pool,
                    statement_timeout=self._timeout,
                    isolation="repeatable_read",
                    readonly=True,
                ) as connection,
            ):
                families = await self.source.collect(connection)
        except DATABASE_ERRORS as exc:
            self._metrics.errors.labels(self.name).inc()
            log.warning(
                "collector refresh failed",
                extra={"collector": self.name, "error": str(exc) or type(exc).__name__},
            )
            return False
        finally:
            self._metrics.duration.labels(self.name).set(time.perf_counter() - started)
        self.snapshot = Snapshot(families, time.time())
        self._metrics.last_success.labels(self.name).set(self.snapshot.taken_at)
        return True

    def current(self, now: float) -> Snapshot | None:
        snapshot = self.snapshot
        if snapshot is None:
            return None
        if self._expiry is not None and now - snapshot.taken_at > self._expiry:
            return None
        return snapshot

    async def run(self) -> None:
        await run_forever(f"collector-{self.name}", self._iteration, retry_after=self._interval)

    async def _iteration(self) -> float:
        started = time.monotonic()
        try:
            await self.refresh()
        except Exception:
            self._metrics.errors.labels(self.name).inc()  # a bug counts as an error too
            raise
        # Interval from start to start, so a slow refresh does not stretch the cadence.
        return max(0.0, self._interval - (time.monotonic() - started))


class SnapshotSection:
    """One runner's latest snapshot as an exposition section: a new version per refresh."""

    def __init__(self, runner: SnapshotRunner) -> None:
        self._runner = runner

    def version(self, now: float) -> Hashable:
        snapshot = self._runner.current(now)
        return None if snapshot is None else snapshot.serial

    def collect(self, now: float) -> Iterable[Metric]:
        snapshot = self._runner.current(now)
        return [] if snapshot is None else snapshot.families


class SnapshotAges:
    """The age of each snapshot served, as an exposition section: recomputed once a second."""

    def __init__(self, runners: Sequence[SnapshotRunner]) -> None:
        self._runners = runners

    def version(self, now: float) -> Hashable:
        serials = tuple(s and s.serial for s in (r.current(now) for r in self._runners))
        return int(now), serials

    def collect(self, now: float) -> Iterable[Metric]:
        age = GaugeMetricFamily(
            "liquid_abt_collector_snapshot_age_seconds",
            "Age of the snapshot of a collector served by this scrape (updated once a second).",
            labels=["collector"],
        )
        for runner in self._runners:
            snapshot = runner.current(now)
            if snapshot is not None:
                age.add_metric([runner.name], now - snapshot.taken_at)
        return [age]


def snapshot_sections(runners: Sequence[SnapshotRunner]) -> list[SnapshotSection | SnapshotAges]:
    """The exposition sections of the runners: each snapshot, then their ages."""
    return [*(SnapshotSection(r) for r in runners), SnapshotAges(runners)]
