"""Typed keys of the application's state (aiohttp's "no singletons"): set by the factory in
app.py, read by handlers and the admin routes through `request.config_dict`."""

from __future__ import annotations

import asyncpg
from aiohttp import web
from prometheus_client import CollectorRegistry

from exporter.config import Config
from exporter.controls.breaker import BreakerStore
from exporter.database.pool import Connection, DatabaseMonitor
from exporter.runbook.incident import IncidentModel
from exporter.runbook.metrics import ActionMetrics
from exporter.runbook.notices.loop import NoticeLoop
from exporter.runbook.probing import IncidentLoop
from exporter.runbook.retry_filler import RetryFiller
from exporter.runbook.verification_watch import VerificationWatch
from exporter.runbook.worker import ActionWorker
from exporter.secrets import Secrets
from exporter.signals.collectors.base import SnapshotRunner
from exporter.signals.exchange import Probe, Registry
from exporter.web.exposition import MetricsExposition, RegistrySection
from exporter.web.reload import Reloader
from exporter.web.webconfig import WebSecurity

CONFIG = web.AppKey("config", Config)
CONNECTION = web.AppKey("connection", Connection)
REGISTRY = web.AppKey("registry", CollectorRegistry)
POOL = web.AppKey("pool", asyncpg.Pool)
DB_MONITOR = web.AppKey("db_monitor", DatabaseMonitor)
SECRETS = web.AppKey("secrets", Secrets)
# The exchange integrations, and the probe each probed exchange has (exporter/signals/exchange.py).
EXCHANGES = web.AppKey("exchanges", Registry)
PROBES = web.AppKey("probes", dict[str, Probe])
RUNNERS = web.AppKey("runners", list[SnapshotRunner])
BREAKERS = web.AppKey("breakers", BreakerStore)
ACTION_WORKER = web.AppKey("action_worker", ActionWorker)
ACTION_METRICS = web.AppKey("action_metrics", ActionMetrics)
INCIDENTS = web.AppKey("incidents", IncidentModel)
INCIDENT_LOOPS = web.AppKey("incident_loops", dict[str, IncidentLoop])
# Failover's evidence: each secondary's verification and the primary's last good market.
VERIFICATION_WATCH = web.AppKey("verification_watch", VerificationWatch)
# The customer-notice planner (absent in dry run or with notices.enabled false).
NOTICE_LOOP = web.AppKey("notice_loop", NoticeLoop)
# The retry filler (None in dry run), told by the incident loops' platform watch what failed.
RETRY_FILLER: web.AppKey[RetryFiller | None] = web.AppKey("retry_filler")
# This process's name among the replicas (its row in probe_observations).
REPLICA = web.AppKey("replica", str)
# /metrics: the exposition, and its section of live metrics (`changed()` after they change).
EXPOSITION = web.AppKey("exposition", MetricsExposition)
LIVE_METRICS = web.AppKey("live_metrics", RegistrySection)
# The web config in force (TLS, basic auth users, headers); replaced on reload.
WEB_SECURITY = web.AppKey("web_security", WebSecurity)
RELOADER = web.AppKey("reloader", Reloader)
# Where /metrics is served (--web.telemetry-path), for pages that link to it.
TELEMETRY_PATH = web.AppKey("telemetry_path", str)
