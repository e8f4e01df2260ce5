"""Typed keys of the application's state (aiohttp's "no singletons"): set by the factory in
app.py, read by handlers and the admin routes through `request.config_dict`."""

from __future__ import annotations

import asyncpg
from aiohttp import web
from prometheus_client import CollectorRegistry

from exporter.config import Config
from exporter.controls.breaker import BreakerStore
from exporter.database.pool import Connection, DatabaseMonitor
from exporter.runbook.worker import ActionWorker
from exporter.secrets import Secrets
from exporter.signals.collectors.base import SnapshotRunner
from exporter.signals.kraken.probe import ExchangeProbe, OnResult

CONFIG = web.AppKey("config", Config)
CONNECTION = web.AppKey("connection", Connection)
REGISTRY = web.AppKey("registry", CollectorRegistry)
POOL = web.AppKey("pool", asyncpg.Pool)
DB_MONITOR = web.AppKey("db_monitor", DatabaseMonitor)
SECRETS = web.AppKey("secrets", Secrets)
PROBE = web.AppKey("probe", ExchangeProbe)
# Called with (exchange, ok, outcome) after every probe round.
PROBE_OBSERVERS = web.AppKey("probe_observers", list[OnResult])
RUNNERS = web.AppKey("runners", list[SnapshotRunner])
BREAKERS = web.AppKey("breakers", BreakerStore)
ACTION_WORKER = web.AppKey("action_worker", ActionWorker)
