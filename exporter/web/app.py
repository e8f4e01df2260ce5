"""The aiohttp application: state under typed app keys, one cleanup context per resource."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Gauge,
)

from exporter.buildinfo import build_info
from exporter.config import Config
from exporter.controls.breaker import BreakerStore
from exporter.controls.exposition import ControlsSource
from exporter.controls.notice_metrics import NoticesSource
from exporter.database.background import run_forever
from exporter.database.listen import listen
from exporter.database.pool import (
    DATABASE_ERRORS,
    Connection,
    DatabaseMonitor,
    close_pool,
    create_pool,
)
from exporter.runbook.alert_states import outage_alertnames, rate_alertnames
from exporter.runbook.evidence import REPLICA as DEFAULT_REPLICA
from exporter.runbook.incident import IncidentModel, route_store
from exporter.runbook.metrics import ActionMetrics, IncidentMetrics
from exporter.runbook.notices.loop import NoticeLoop, NoticeMetrics
from exporter.runbook.notices.webhook import WebhookMetrics, WebhookSender
from exporter.runbook.platform_watch import PlatformReading
from exporter.runbook.probing import IncidentLoop
from exporter.runbook.receiver import ReceiverMetrics, WebhookHandler
from exporter.runbook.reconcile import Reconciler
from exporter.runbook.retention import run_retention
from exporter.runbook.retry_filler import RetryFiller
from exporter.runbook.verification_watch import (
    ObservedProbe,
    Target,
    VerificationMetrics,
    VerificationWatch,
)
from exporter.runbook.worker import WORK_CHANNEL, ActionWorker
from exporter.secrets import Secrets
from exporter.signals.classify import ReasonClassifier
from exporter.signals.collectors.api_calls import ApiCallsSource
from exporter.signals.collectors.base import (
    SelfMetrics,
    SnapshotRunner,
    Source,
    snapshot_sections,
)
from exporter.signals.collectors.purchases import PurchasesSource
from exporter.signals.exchange import Probe, Registry
from exporter.signals.integrations import default_registry
from exporter.web.admin.audit import routes as audit_routes
from exporter.web.admin.breaker import routes as breaker_routes
from exporter.web.admin.common import bearer_matches, build_admin_app
from exporter.web.admin.incidents import routes as incidents_routes
from exporter.web.admin.notices import routes as notices_routes
from exporter.web.admin.purchases import routes as purchases_routes
from exporter.web.admin.route import routes as route_routes
from exporter.web.admin.status import routes as status_routes
from exporter.web.exposition import MetricsExposition, RegistrySection
from exporter.web.keys import (
    ACTION_METRICS,
    ACTION_WORKER,
    BREAKERS,
    CONFIG,
    CONNECTION,
    DB_MONITOR,
    EXCHANGES,
    EXPOSITION,
    INCIDENT_LOOPS,
    INCIDENTS,
    LIVE_METRICS,
    NOTICE_LOOP,
    POOL,
    PROBES,
    REGISTRY,
    RELOADER,
    REPLICA,
    RETRY_FILLER,
    RUNNERS,
    SECRETS,
    TELEMETRY_PATH,
    VERIFICATION_WATCH,
    WEB_SECURITY,
)
from exporter.web.pages import healthy, index, ready
from exporter.web.protocol_log import quiet_malformed_requests
from exporter.web.reload import Reloader
from exporter.web.server import ADMIN, MAIN, connection_of, track_requests
from exporter.web.webconfig import Verdict, WebSecurity, busy, load_web_config, unauthorized

log = logging.getLogger(__name__)


def build_sources(config: Config, exchanges: Registry | None = None) -> list[Source]:
    classifier = ReasonClassifier(config.purchases.failure_reasons)
    margin = probe_margin(config, exchanges or default_registry())
    return [
        PurchasesSource(config, classifier),
        ApiCallsSource(config),
        ControlsSource(config, probe_margin=margin),
        NoticesSource(config),
    ]


def probe_margin(config: Config, registry: Registry) -> float:
    """Handled failures leave a margin before the first failed probe round: one interval and one
    timeout of the slowest probe."""
    return max(
        s.probe_interval + s.timeout
        for s in (registry.settings(config, name) for name in config.exchanges)
    )


async def _pool_ctx(app: web.Application) -> AsyncIterator[None]:
    connection, config = app[CONNECTION], app[CONFIG]
    app[POOL] = await create_pool(
        connection, config.database, longest_statement=config.collectors.timeout
    )
    log.info("database pool created", extra={"dsn": connection.masked})
    yield
    await close_pool(app[POOL], config.database.connect_timeout)


def _report_unexpected_end(task: asyncio.Task[None]) -> None:
    """Background loops never end on their own: say so loudly if one does."""
    if task.cancelled():
        return
    error = task.exception()
    log.error("background task ended unexpectedly", exc_info=error,
              extra={"task": task.get_name(), "error": str(error)})  # fmt: skip


# Seconds a cancelled background task gets to finish at shutdown.
_TASK_STOP_GRACE = 10.0


@contextlib.asynccontextmanager
async def _task(name: str, coro: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    """Run one background task for the lifetime of the block; cancel and await it at the end."""
    task = asyncio.create_task(coro, name=name)
    task.add_done_callback(_report_unexpected_end)
    try:
        yield
    finally:
        task.cancel()
        # Bounded: a task that does not stop when cancelled must not hold shutdown forever.
        await asyncio.wait({task}, timeout=_TASK_STOP_GRACE)
        if not task.done():
            log.warning("background task did not stop at shutdown; left behind",
                        extra={"task": name, "grace_seconds": _TASK_STOP_GRACE})  # fmt: skip
        elif not task.cancelled() and task.exception() is not None:
            # asyncpg may raise its own error when cancelled mid-query
            log.debug("background task ended with an error at shutdown",
                      exc_info=task.exception(), extra={"task": name})  # fmt: skip


async def _monitor_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG].database
    monitor = DatabaseMonitor(app[POOL], config.health_interval, config.connect_timeout)
    app[DB_MONITOR] = monitor
    Gauge(
        "liquid_abt_db_up",
        "1 when the last ping of the database succeeded.",
        registry=app[REGISTRY],
    ).set_function(lambda: 1.0 if monitor.up else 0.0)
    async with _task("db-monitor", run_forever("db-monitor", monitor.iteration)):
        yield


async def _breakers_ctx(app: web.Application) -> AsyncIterator[None]:
    """The circuit breakers shared through the database; the incident model writes them."""
    app[BREAKERS] = BreakerStore(app[POOL], app[CONFIG], app[REGISTRY])
    yield


async def _probe_ctx(app: web.Application) -> AsyncIterator[None]:
    """Each probed exchange's probe, from its integration (signals/integrations.py): the incident
    loop runs its rounds when the probe is enabled, and verifies recovery with it either way."""
    config, secrets, exchanges = app[CONFIG], app[SECRETS], app[EXCHANGES]
    async with aiohttp.ClientSession() as session:
        app[PROBES] = {
            name: integration.probe(config, secrets, session, app[REGISTRY])
            for name in config.exchanges
            if (integration := exchanges.get(name)) is not None
        }
        yield


async def _verification_ctx(app: web.Application) -> AsyncIterator[None]:
    """Failover's evidence (runbook/verification_watch.py): each secondary's recovery check every
    `verify_interval`, and the primary's last good market, noted from its own probe (wrapped
    here, before the incident loop takes it). Only when a secondary is configured."""
    config, exchanges, probes = app[CONFIG], app[EXCHANGES], app[PROBES]
    targets: list[Target] = []
    for name, role in config.roles().items():
        probe, settings = probes.get(name), exchanges.settings(config, name)
        # Without a secondary nothing reads the rows: no watch, no statements.
        if probe is None or not config.secondaries:
            continue
        if role == "secondary":
            targets.append(Target(
                name, settings.verify_interval, probe.recovery_check, settings.verification_time
            ))  # fmt: skip
        else:
            targets.append(Target(name, settings.verify_interval))
    # Every configured exchange's series, pre-initialised (0: not verified for failover).
    metrics = VerificationMetrics(app[REGISTRY], config.roles())
    watch = VerificationWatch(app[POOL], app[REPLICA], targets, metrics)
    app[VERIFICATION_WATCH] = watch
    for target in targets:
        if target.check is None:
            probes[target.exchange] = ObservedProbe(probes[target.exchange], target.exchange, watch)
    if not targets:
        yield
        return
    async with _task("verification-watch", watch.run()):
        yield


async def _incidents_ctx(app: web.Application) -> AsyncIterator[None]:
    """One incident model, and one incident loop per exchange (probing it when enabled)."""
    config, exchanges = app[CONFIG], app[EXCHANGES]
    app[ACTION_METRICS] = ActionMetrics(app[REGISTRY])
    model = IncidentModel(
        app[POOL], config, app[BREAKERS], app[ACTION_METRICS],
        IncidentMetrics(app[REGISTRY], list(config.exchanges)), replica=app[REPLICA],
        exchanges=exchanges,
    )  # fmt: skip
    app[INCIDENTS] = model
    # In dry run the exporter changes nothing the platform acts on, so nothing is queued.
    app[RETRY_FILLER] = None if config.receiver.dry_run else RetryFiller(app[POOL], config)
    loops = {exchange: _incident_loop(app, model, exchange) for exchange in config.exchanges}
    app[INCIDENT_LOOPS] = loops
    async with contextlib.AsyncExitStack() as stack:
        for exchange, loop in loops.items():
            await stack.enter_async_context(_task(f"incident-{exchange}", loop.run()))
        yield
    # A replica that leaves cleanly takes its vote with it (a killed one's goes stale).
    with contextlib.suppress(*DATABASE_ERRORS):
        await model.withdraw()


def _incident_loop(app: web.Application, model: IncidentModel, exchange: str) -> IncidentLoop:
    config, exchanges = app[CONFIG], app[EXCHANGES]
    probe: Probe | None = app[PROBES].get(exchange)
    filler, monitor = app[RETRY_FILLER], app[DB_MONITOR]

    def on_reading(exchange: str, reading: PlatformReading) -> None:
        monitor.answered()  # the database answered: no ping needed this interval
        if filler is not None:
            filler.notice(exchange, reading.unqueued_failures)

    return IncidentLoop(
        exchange, model, exchanges.settings(config, exchange),
        probe=probe if exchanges.probed(config, exchange) else None,
        verifier=probe.recovery_check if probe is not None else None,
        on_reading=on_reading, read_failures=filler is not None,
        # The filler's promise: each failure queued within retry.fill_interval.
        quiet_interval=config.retry.fill_interval,
    )  # fmt: skip


async def _actions_ctx(app: web.Application) -> AsyncIterator[None]:
    """The runbook actions: the notification worker and reconciliation with Alertmanager."""
    config, metrics, loops = app[CONFIG], app[ACTION_METRICS], app[INCIDENT_LOOPS]

    def wake_incident(exchange: str) -> None:
        if exchange in loops:
            loops[exchange].wake()

    worker = ActionWorker(app[POOL], config, app[INCIDENTS], metrics, wake_incident=wake_incident)
    app[ACTION_WORKER] = worker
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(_task("action-worker", worker.run(poll_interval=60.0)))
        # A state recorded by any replica wakes every worker; the poll above is the fallback.
        await stack.enter_async_context(
            _task("work-listener", listen(app[CONNECTION], WORK_CHANNEL, worker.wake))
        )
        await stack.enter_async_context(_task("retention", run_retention(app[POOL], config)))
        if config.receiver.alertmanager_url:
            session = await stack.enter_async_context(aiohttp.ClientSession())
            reconciler = Reconciler(
                app[POOL], session, config.receiver.alertmanager_url, worker.wake, metrics,
                [*outage_alertnames(config), *rate_alertnames(config)],
                config.receiver.reconcile_interval,
            )  # fmt: skip
            await stack.enter_async_context(_task("reconciler", reconciler.run()))
        yield


async def _retry_filler_ctx(app: web.Application) -> AsyncIterator[None]:
    """Every eligible failed purchase queued once, from the purchases, whatever alert fires
    (the filler is made with the incident loops, whose platform watch wakes it)."""
    filler = app[RETRY_FILLER]
    if filler is None:
        yield
        return
    async with _task("retry-filler", filler.run()):
        yield


async def _notices_ctx(app: web.Application) -> AsyncIterator[None]:
    """Customer notices planned on every replica (exactly once by the outbox's unique key).

    In dry run the exporter changes nothing the platform acts on, so nothing is planned."""
    config = app[CONFIG]
    metrics, webhook_metrics = NoticeMetrics(app[REGISTRY]), WebhookMetrics(app[REGISTRY])
    if config.receiver.dry_run or not config.notices.enabled:
        yield
        return
    # With failover, the notices say purchases continue on the secondary the gate names.
    planner = NoticeLoop(
        app[POOL], config, metrics=metrics, margin=probe_margin(config, app[EXCHANGES]),
        routed_to=route_store.routed_to if config.failover.active else None,
    )  # fmt: skip
    app[NOTICE_LOOP] = planner
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(_task("customer-notices", planner.run()))
        secret = app[SECRETS].notices_webhook_secret
        if config.notices.webhook_url and secret:
            sender = WebhookSender(app[POOL], config.notices, secret, app[REPLICA], webhook_metrics)
            await stack.enter_async_context(_task("customer-notice-webhook", sender.run()))
        yield


def _webhook(app: web.Application) -> WebhookHandler:
    def wake_worker() -> None:
        if ACTION_WORKER in app:
            app[ACTION_WORKER].wake()

    return WebhookHandler(
        lambda: app[POOL], app[SECRETS], ReceiverMetrics(app[REGISTRY]),
        app[CONFIG].receiver.max_body_bytes, wake_worker,
    )  # fmt: skip


async def _runners_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    sources = build_sources(config, app[EXCHANGES])
    metrics = SelfMetrics(app[REGISTRY], [s.name for s in sources])
    collectors = config.collectors
    runners = [
        SnapshotRunner(
            source,
            app[POOL],
            metrics,
            collectors.interval,
            collectors.timeout,
            collectors.snapshot_expiry,
            on_refreshed=app[LIVE_METRICS].changed,  # the collectors' own metrics
        )  # fmt: skip
        for source in sources
    ]
    app[RUNNERS] = runners
    app[EXPOSITION].add(*snapshot_sections(runners))
    async with contextlib.AsyncExitStack() as stack:
        for runner in runners:
            await stack.enter_async_context(_task(f"collector-{runner.name}", runner.run()))
        yield


def _build_info(registry: CollectorRegistry) -> None:
    info = build_info()
    Gauge(
        "liquid_abt_build_info",
        "Always 1; the labels say which build is running.",
        ["version", "revision", "python_version"],
        registry=registry,
    ).labels(info.version, info.revision, info.python_version).set(1)


def _process_metrics(registry: CollectorRegistry) -> None:
    """process_* (CPU, memory, open files) and python_* (version, garbage collection)."""
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)


@dataclass
class WebOptions:
    """What `serve`'s web flags decide; the defaults are those of an app built for tests."""

    telemetry_path: str = "/metrics"
    config_file: Path | None = None
    web_config_file: Path | None = None
    security: WebSecurity = field(default_factory=lambda: WebSecurity(load_web_config(None)))
    # With an admin listener, the admin API, the webhook and /-/reload are served only there.
    admin_listener: bool = False


def _own_credentials(request: web.Request, webhook_path: str) -> bool:
    """The admin API and the webhook check their own credentials (always required) in the same
    Authorization header, so basic auth of the web config does not apply to them."""
    return request.path.startswith("/api/admin/") or request.path == webhook_path


def _admin_only(request: web.Request, webhook_path: str) -> bool:
    return _own_credentials(request, webhook_path) or request.path == "/-/reload"


def _security_middleware(options: WebOptions, webhook_path: str, admin_token: str | None) -> Any:
    @web.middleware
    async def security(request: web.Request, handler: Any) -> web.StreamResponse:
        connection = connection_of(request)
        if options.admin_listener:
            role = connection.role if connection is not None else MAIN
            if _admin_only(request, webhook_path) != (role == ADMIN) and request.path not in (
                "/-/healthy", "/-/ready",
            ):  # fmt: skip
                raise web.HTTPNotFound()
        users = options.security.config.users
        # Nothing else guards /-/reload here: the admin token does (see docs/security.md).
        unguarded_reload = request.path == "/-/reload" and not (users or options.admin_listener)
        if unguarded_reload and not (
            admin_token and bearer_matches(request.headers.get("Authorization"), admin_token)
        ):
            return _reload_refused(admin_token is not None)
        guarded = users and not _own_credentials(request, webhook_path)
        if guarded:
            verdict = await options.security.authenticate(
                request.headers.get("Authorization"),
                queued=connection.set_waiting if connection is not None else None,
            )
            if verdict is Verdict.BUSY:
                return busy()
            if verdict is Verdict.DENIED_AGAIN and connection is not None:
                # A client repeating a refused password waits, on a connection that is the first
                # to go when the limit needs room: a flood of them runs at a second a request.
                connection.set_refusing(True)
                await asyncio.sleep(REPEATED_DENIAL_DELAY)
            if verdict is not Verdict.ALLOWED:
                return unauthorized()
        return await handler(request)

    return security


REPEATED_DENIAL_DELAY = 1.0


def _reload_refused(token_set: bool) -> web.Response:
    if token_set:
        message = "POST /-/reload needs the admin token: Authorization: Bearer $ADMIN_TOKEN"
        return web.json_response({"status": "unauthorized", "message": message}, status=401,
                                 headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
    message = (
        "POST /-/reload is off: set LIQUID_ABT_ADMIN_TOKEN, basic_auth_users in the web config or "
        "--web.admin-listen-address to guard it, or send SIGHUP"
    )
    return web.json_response({"status": "forbidden", "message": message}, status=403)


async def _headers(request: web.Request, response: web.StreamResponse) -> None:
    """http_server_config.headers of the web config, on every response."""
    response.headers.update(request.config_dict[WEB_SECURITY].config.headers)


async def _reload(request: web.Request) -> web.Response:
    result = await request.app[RELOADER].reload()
    if result.ok:
        return web.json_response({"status": "success"})
    return web.json_response({"status": "error", "problems": result.problems}, status=409)


async def warm_up(app: web.Application, timeout: float | None = None) -> None:
    """The first database ping and collector refresh, so the first scrape is complete and right.

    Called after the app started and before it serves; bounded by the configured timeouts.
    """
    config = app[CONFIG]
    limit = timeout or (config.database.connect_timeout + 2 * config.collectors.timeout)
    jobs = [app[DB_MONITOR].check(), *(runner.refresh() for runner in app[RUNNERS])]
    try:
        async with asyncio.timeout(limit):
            await asyncio.gather(*jobs, return_exceptions=True)
    except TimeoutError:
        log.warning("first refresh not done before serving", extra={"timeout": limit})


def admin_route_tables() -> list[web.RouteTableDef]:
    """Every concern's admin routes; each module owns its table."""
    return [
        status_routes, purchases_routes, breaker_routes, audit_routes, incidents_routes,
        notices_routes, route_routes,
    ]  # fmt: skip


@web.middleware
async def _metrics_follow_changes(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A request that may change something (webhook, admin) shows at the next scrape."""
    try:
        return await handler(request)
    finally:
        if request.method not in ("GET", "HEAD"):
            request.config_dict[LIVE_METRICS].changed()


def create_app(
    config: Config,
    connection: Connection,
    secrets: Secrets | None = None,
    replica: str | None = None,
    options: WebOptions | None = None,
    exchanges: Registry | None = None,
) -> web.Application:
    """The exporter; `replica` names this process among the replicas (default: host and a
    random suffix), so that a restart on the same address keeps its vote. `options` are what
    `serve`'s web flags decide (the defaults suit tests). `exchanges` are the integrations that
    probe and verify exchanges (default: every shipped one, signals/integrations.py): this is
    the one place the exporter chooses them."""
    options = options or WebOptions()
    webhook_path = config.receiver.path
    quiet_malformed_requests()  # no client can put a header value (a token) into the log
    app = web.Application(
        client_max_size=1024 * 1024,
        middlewares=[
            track_requests,
            _security_middleware(options, webhook_path, (secrets or Secrets()).admin_token),
            _metrics_follow_changes,
        ],
    )
    app[CONFIG] = config
    app[CONNECTION] = connection
    app[SECRETS] = secrets or Secrets()
    app[EXCHANGES] = exchanges or default_registry()
    app[REGISTRY] = CollectorRegistry(auto_describe=False)
    app[WEB_SECURITY] = options.security
    app[TELEMETRY_PATH] = options.telemetry_path
    app[RELOADER] = Reloader(
        app[REGISTRY], config, options.config_file, options.security, options.web_config_file
    )
    app.on_response_prepare.append(_headers)
    _build_info(app[REGISTRY])
    _process_metrics(app[REGISTRY])
    app[REPLICA] = replica or DEFAULT_REPLICA
    app[LIVE_METRICS] = RegistrySection(app[REGISTRY])
    app[EXPOSITION] = MetricsExposition([app[LIVE_METRICS]])
    # Order matters: each context may use what the previous ones created.
    app.cleanup_ctx.extend(
        [_pool_ctx, _monitor_ctx, _breakers_ctx, _runners_ctx, _probe_ctx, _verification_ctx,
         _incidents_ctx, _actions_ctx, _retry_filler_ctx, _notices_ctx]
    )  # fmt: skip
    app.router.add_get("/", index)
    app.router.add_get(options.telemetry_path, app[EXPOSITION].handle)
    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", ready)
    app.router.add_post("/-/reload", _reload)
    app.router.add_post(config.receiver.path, _webhook(app).handle)
    app.add_subapp("/api/admin/", build_admin_app(app[SECRETS].admin_token, admin_route_tables()))
    return app
