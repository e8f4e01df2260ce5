"""Dry run: a second executor that records what it would do and changes nothing.

The decisions are the same (decision.py knows nothing of dry run). The incident row it decides on is
its own, in memory, started from the database's; every effect that is a runbook action becomes an
audit entry with result `dry_run`, a `dry_run` count and a log line; nothing else is written (the
probe rounds are still recorded: they are evidence, not actions). The row in memory is this
replica's: with several replicas in dry run, each records what it alone would have done.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from exporter.controls import audit
from exporter.controls.breaker import ACTOR_AUTOMATION
from exporter.database.transactions import after_commit
from exporter.runbook.incident import route_store, store
from exporter.runbook.incident.effects import Effect, StartVerification
from exporter.runbook.incident.executor import Applying, Executor, log
from exporter.runbook.incident.state import NORMAL, Incident, Route


class DryRunExecutor(Executor):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._incidents: dict[str, Incident] = {}
        self._routes: dict[str, Route] = {}

    async def _load(self, connection: asyncpg.Connection, exchange: str) -> Incident:
        if exchange not in self._incidents:
            self._incidents[exchange] = await store.peek(connection, exchange)
        return self._incidents[exchange]

    async def _save(self, connection: asyncpg.Connection, incident: Incident) -> None:
        self._incidents[incident.exchange] = incident

    async def _load_route(self, connection: asyncpg.Connection, exchange: str) -> Route:
        if exchange not in self._routes:
            self._routes[exchange] = await route_store.peek(connection, exchange)
        return self._routes[exchange]

    async def _save_route(self, connection: asyncpg.Connection, route: Route) -> None:
        self._routes[route.exchange] = route

    async def _paused(
        self, connection: asyncpg.Connection, exchange: str, incident: Incident
    ) -> bool:
        # Nothing was paused for real: an open incident of its own is the pause it would keep.
        if incident.phase != NORMAL:
            return True
        return await super()._paused(connection, exchange, incident)

    async def _do(self, connection: asyncpg.Connection, applying: Applying, effect: Effect) -> str:
        if isinstance(effect, StartVerification) or effect.action is None:
            return "dry_run"  # a lease is only in memory; audit entries, logs: nothing to write
        cause = getattr(effect, "cause", None)
        fingerprint = getattr(effect, "fingerprint", None)
        await audit.record(
            connection, actor=ACTOR_AUTOMATION, action=effect.action, result="dry_run",
            exchange=applying.exchange, cause=cause, fingerprint=fingerprint,
        )  # fmt: skip
        said = f"dry run: the incident model would {effect.action}: {cause}"
        fields = {"exchange": applying.exchange, "would": effect.action}
        after_commit(lambda: log.warning(said, extra=fields))
        return "dry_run"
