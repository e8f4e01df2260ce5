"""`admin --database-url`: status, pause and resume straight against PostgreSQL, for when no
exporter answers (`LiquidAbtExporterDown`: every replica is down); also the incidents and their
reviews, which only read.

The answers are the admin API's own: the same functions build them (web/admin/status.py,
web/admin/purchases.py), so a pause made here is the same audited transaction, a manual hold
recorded as actor `admin`, that every replica and the platform read when they come back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import unquote

import asyncpg
from prometheus_client import CollectorRegistry

from exporter.config import Config, dsn_problem
from exporter.controls import pause as controls
from exporter.controls.breaker import BreakerStore
from exporter.database.pool import DATABASE_ERRORS, Connection, create_pool
from exporter.operator.client import AdminError
from exporter.runbook import review
from exporter.secrets import read_secret
from exporter.web.admin.incidents import incidents_answer, review_of
from exporter.web.admin.inputs import Paging
from exporter.web.admin.purchases import pause_answer, resume_answer
from exporter.web.admin.status import exchange_status

T = TypeVar("T")

# The incidents and their reviews read the database only: they work without an exporter too.
REVIEW_COMMANDS = ("incidents", "incident-report")

# What works without an exporter; every other command needs the admin API's process.
DIRECT_COMMANDS = ("status", "pause", "resume", *REVIEW_COMMANDS)


def connection(dsn: str) -> Connection:
    """The DSN of --database-url, its password from DATABASE_PASSWORD[_FILE] (never the flag)."""
    if problem := dsn_problem(dsn):
        raise AdminError(f"--database-url: {problem}")
    return Connection(dsn, read_secret("DATABASE_PASSWORD"))


class DirectClient:
    """The admin API's calls that an operator needs with every replica down, answered here."""

    def __init__(self, database: Connection, config: Config) -> None:
        self.url = database.masked
        self._database = database
        self._config = config

    def get(self, path: str, **params: Any) -> Any:
        if path == "status":
            return self._run(self._status)
        if path == "purchases/status":
            return self._run(self._purchases)
        if path == "incidents":
            paging = Paging(limit=params.get("limit", 20), offset=params.get("offset", 0))
            return self._run(lambda pool: incidents_answer(pool, params.get("exchange"), paging))
        if path.startswith("incidents/"):
            return self._review(path).as_json()
        raise self._unsupported()

    def get_text(self, path: str, **params: Any) -> str:
        if path.startswith("incidents/"):
            return review.markdown(self._review(path))
        raise self._unsupported()

    def _review(self, path: str) -> review.Review:
        reference = unquote(path.removeprefix("incidents/"))
        try:
            return self._run(lambda pool: review_of(pool, self._config, reference))
        except (ValueError, review.IncidentNotFound) as exc:
            raise AdminError(str(exc)) from None

    def post(self, path: str, body: dict[str, Any]) -> Any:
        if path == "purchases/pause":
            exchange = self._known(body["affectedExchange"])
            return self._run(
                lambda pool: pause_answer(
                    pool, exchange, body["reason"], body.get("estimatedDuration")
                )
            )
        if path == "purchases/resume":
            exchange = self._known(body["exchange"])
            cause = body.get("reason") or "manual resume through the operator CLI (--database-url)"
            return self._run(lambda pool: resume_answer(pool, exchange, cause))
        raise self._unsupported()

    def patch(self, path: str, body: dict[str, Any]) -> Any:
        raise self._unsupported()

    async def _status(self, pool: asyncpg.Pool) -> dict[str, Any]:
        breakers = BreakerStore(pool, self._config, CollectorRegistry(auto_describe=False))
        return await exchange_status(pool, self._config, breakers)

    async def _purchases(self, pool: asyncpg.Pool) -> dict[str, Any]:
        found = await controls.statuses(pool, list(self._config.exchanges))
        return {"exchanges": [s.as_json() for s in found]}

    def _known(self, exchange: str) -> str:
        configured = self._config.exchanges
        if exchange not in configured:
            raise AdminError(
                f"unknown exchange {exchange!r}: configured are {', '.join(configured)} "
                "(the exchanges of --config.file)"
            )
        return exchange

    def _unsupported(self) -> AdminError:
        return AdminError(
            f"with --database-url only {', '.join(DIRECT_COMMANDS)} work; the other commands "
            "need a running exporter (--exporter.url)"
        )

    def _run(self, call: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
        return asyncio.run(self._with_pool(call))

    async def _with_pool(self, call: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
        database = self._config.database
        try:
            pool = await create_pool(self._database, database)
            try:
                return await call(pool)
            finally:
                await pool.close()
        except asyncpg.UndefinedTableError as exc:
            raise AdminError(
                f"{self.url}: {exc}: not the exporter's database, or run "
                "`liquid-abt-exporter migrate` first"
            ) from None
        except DATABASE_ERRORS as exc:
            why = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise AdminError(f"database {self.url}: {why}") from None
