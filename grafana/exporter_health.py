"""The exporter's own dashboard (liquid-abt-exporter.json): is it up and current, its collectors
and database, the webhook receiver and the worker behind it, the process, build and reload."""

from __future__ import annotations

from typing import Any

from panels import (
    EXPORTER,
    Grid,
    bargauge,
    by_query,
    database_up,
    envelope,
    exporters_up,
    firing_alerts,
    q,
    runbook,
    sel,
    stat,
    states,
    steps,
    table,
    timeline,
    timeseries,
    variables,
)

COLLECTOR_STALE = steps("green", (60, "orange"), (120, "red"))  # LiquidAbtCollectorStale: 120 s
# What LiquidAbtWebhookNotificationsRejected and LiquidAbtRunbookActionsFailing count.
REJECTED = 'result=~"unauthorized|invalid|partial|too_large|error"'
FAILED = 'result="failure"'


def _increase(metric: str, window: str, *matchers: str) -> str:
    return f"increase({sel(metric, *matchers)}[{window}])"


def _health(grid: Grid) -> None:
    grid.row("Health")
    grid.add(exporters_up(), 4, 4)
    grid.add(database_up(), 4, 4)
    grid.add(
        stat(
            "Oldest collector refresh",
            "Time since the stalest collector last refreshed (LiquidAbtCollectorStale above "
            "120 s, then the purchase and control metrics expire).",
            [
                q(
                    "max(time() - "
                    + sel("liquid_abt_collector_last_success_timestamp_seconds")
                    + ")",
                    "oldest",
                )
            ],
            unit="s",
            thresholds=COLLECTOR_STALE,
            links=[runbook(EXPORTER, "LiquidAbtCollectorStale")],
        ),
        4,
        4,
    )
    grid.add(
        stat(
            "Config reload",
            "Whether the last reload (SIGHUP, POST /-/reload) applied the files as they are on "
            "disk, on every selected replica. Failed: a file is invalid or a change needs a "
            "restart; the exporter runs on with what it had (see its log); "
            "LiquidAbtExporterConfigReloadFailed after 10 minutes.",
            [q(f"min({sel('liquid_abt_config_last_reload_successful')})", "reload")],
            mappings=states((0, "Failed", "red"), (1, "Applied", "green")),
            links=[runbook(EXPORTER, "LiquidAbtExporterConfigReloadFailed")],
        ),
        4,
        4,
    )
    grid.add(
        firing_alerts(
            "Firing alerts (exporter)",
            "Alerts about the exporter itself firing now (no exchange label): exporter or "
            "database down, stale collectors, webhook notifications rejected or backlogged, "
            "actions failing. The exchanges' alerts are on the incident dashboard.",
            'exchange=""',
        ),
        8,
        8,
    )
    for title, description, expr, thresholds, links in [
        (
            "Alert states waiting",
            "Recorded alert states whose actions have not run yet; growing: the worker is stuck "
            "(LiquidAbtWebhookBacklog).",
            f"max({sel('liquid_abt_webhook_unprocessed_notifications')})",
            steps("green", (1, "orange")),
            [runbook(EXPORTER, "LiquidAbtWebhookBacklog")],
        ),
        (
            "Dead letters (time range)",
            "Alert states given up after too many failed attempts: their actions never ran.",
            f"sum({_increase('liquid_abt_webhook_dead_letters_total', '$__range')})",
            steps("green", (1, "red")),
            [runbook(EXPORTER, "LiquidAbtWebhookBacklog")],
        ),
        (
            "Failed actions (time range)",
            "Runbook actions that failed (LiquidAbtRunbookActionsFailing).",
            f"sum({_increase('liquid_abt_actions_total', '$__range', FAILED)})",
            steps("green", (1, "red")),
            [runbook(EXPORTER, "LiquidAbtRunbookActionsFailing")],
        ),
        (
            "Rejected notifications (time range)",
            "Alertmanager notifications answered unauthorized, invalid, partial, too large or "
            "with an error (LiquidAbtWebhookNotificationsRejected).",
            f"sum({_increase('liquid_abt_webhook_notifications_total', '$__range', REJECTED)})",
            steps("green", (1, "red")),
            [runbook(EXPORTER, "LiquidAbtWebhookNotificationsRejected")],
        ),
    ]:
        grid.add(
            stat(title, description, [q(expr)], decimals=0, thresholds=thresholds, links=links),
            4,
            4,
        )


def _collectors(grid: Grid) -> None:
    grid.row("Collectors and database")
    grid.add(
        timeseries(
            "Refresh duration",
            "Duration of each collector's last refresh: one read-only transaction on the "
            "database (purchases, api_calls, controls), bounded by the collector's timeout.",
            [
                q(
                    f"max by (instance, collector) ({sel('liquid_abt_collector_duration_seconds')})",
                    "{{instance}} {{collector}}",
                )
            ],
            unit="s",
        ),
        6,
        8,
    )
    grid.add(
        timeseries(
            "Failed refreshes",
            "Refreshes that failed or timed out (database errors, statement timeouts); the last "
            "snapshot is served meanwhile, until it expires.",
            [
                q(
                    "sum by (instance, collector) ("
                    + _increase("liquid_abt_collector_errors_total", "$__rate_interval")
                    + ")",
                    "{{instance}} {{collector}}",
                )
            ],
            bars=True,
            decimals=0,
            links=[runbook(EXPORTER, "LiquidAbtDatabaseDown")],
        ),
        6,
        8,
    )
    grid.add(
        timeseries(
            "Staleness",
            "Time since each collector's last success, and the age of the snapshot served; "
            "LiquidAbtCollectorStale above 120 s.",
            [
                q(
                    "time() - max by (instance, collector) ("
                    + sel("liquid_abt_collector_last_success_timestamp_seconds")
                    + ")",
                    "{{instance}} {{collector}} last success",
                ),
                q(
                    "max by (instance, collector) ("
                    + sel("liquid_abt_collector_snapshot_age_seconds")
                    + ")",
                    "{{instance}} {{collector}} snapshot age",
                ),
            ],
            unit="s",
            thresholds=steps("transparent", (120, "red")),
            threshold_style="dashed",
            links=[runbook(EXPORTER, "LiquidAbtCollectorStale")],
        ),
        6,
        8,
    )
    grid.add(
        timeline(
            "Database reachable",
            "The last ping of the database per replica (liquid_abt_db_up); /-/ready follows it. "
            "The exporter exports no pool metrics: its pool size is database.pool in the config.",
            [q(f"min by (instance) ({sel('liquid_abt_db_up')})", "{{instance}}")],
            states((0, "down", "red"), (1, "up", "green")),
            links=[runbook(EXPORTER, "LiquidAbtDatabaseDown")],
        ),
        6,
        8,
    )


def _webhook(grid: Grid) -> None:
    grid.row("Webhook receiver and worker")
    grid.add(
        timeseries(
            "Notifications by answer",
            "Alertmanager notifications received, by the answer given: accepted and duplicate "
            "(200), partial (200, some alerts refused), invalid (400), unauthorized (401), "
            "too_large (413), error (503: database unavailable, Alertmanager retries).",
            [
                q(
                    "sum by (result) ("
                    + _increase("liquid_abt_webhook_notifications_total", "$__rate_interval")
                    + ")",
                    "{{result}}",
                )
            ],
            bars=True,
            decimals=0,
            links=[runbook(EXPORTER, "LiquidAbtWebhookNotificationsRejected")],
        ),
        8,
        8,
    )
    grid.add(
        timeseries(
            "Worker queue",
            "Recorded alert states waiting for their actions (left), alerts refused inside "
            "otherwise recorded notifications and states given up (dead letters; right).",
            [
                q(f"max({sel('liquid_abt_webhook_unprocessed_notifications')})", "waiting"),
                q(
                    f"sum({_increase('liquid_abt_webhook_refused_alerts_total', '$__rate_interval')})",
                    "refused alerts",
                ),
                q(
                    f"sum({_increase('liquid_abt_webhook_dead_letters_total', '$__rate_interval')})",
                    "dead letters",
                ),
            ],
            decimals=0,
            overrides=[
                by_query(ref, **{"custom.axisPlacement": "right", "custom.drawStyle": "bars"})
                for ref in ("B", "C")
            ],
            links=[runbook(EXPORTER, "LiquidAbtWebhookBacklog")],
        ),
        8,
        8,
    )
    grid.add(
        timeseries(
            "Worker drained",
            "Actions the worker and the incident model ran, by result: the queue being worked "
            "off. dry_run: dry run is on, nothing changed.",
            [
                q(
                    "sum by (result) ("
                    + _increase("liquid_abt_actions_total", "$__rate_interval")
                    + ")",
                    "{{result}}",
                )
            ],
            bars=True,
            decimals=0,
            links=[runbook(EXPORTER, "LiquidAbtRunbookActionsFailing")],
        ),
        8,
        8,
    )


def _process(grid: Grid) -> None:
    grid.row("Process")
    grid.add(
        timeseries(
            "CPU",
            "CPU time per second of each exporter process (1 = one core).",
            [
                q(
                    f"rate({sel('process_cpu_seconds_total')}[$__rate_interval])",
                    "{{instance}}",
                )
            ],
            unit="percentunit",
        ),
        6,
        8,
    )
    grid.add(
        timeseries(
            "Memory",
            "Resident memory of each exporter process.",
            [q(sel("process_resident_memory_bytes"), "{{instance}} resident")],
            unit="bytes",
        ),
        6,
        8,
    )
    grid.add(
        timeseries(
            "File descriptors",
            "Open file descriptors (connections included) against the process limit.",
            [
                q(sel("process_open_fds"), "{{instance}} open"),
                q(sel("process_max_fds"), "{{instance}} limit"),
            ],
            decimals=0,
        ),
        6,
        8,
    )
    grid.add(
        timeseries(
            "Python garbage collection",
            "Collections per second by generation; uncollectable objects point at a leak.",
            [
                q(
                    "sum by (instance, generation) "
                    f"(rate({sel('python_gc_collections_total')}[$__rate_interval]))",
                    "{{instance}} gen {{generation}}",
                ),
                q(
                    f"sum by (instance) ({sel('python_gc_objects_uncollectable_total')})",
                    "{{instance}} uncollectable",
                ),
            ],
            overrides=[by_query("B", **{"custom.axisPlacement": "right"})],
        ),
        6,
        8,
    )


def _build(grid: Grid) -> None:
    grid.row("Build and configuration")
    grid.add(
        table(
            "Running builds",
            "Each replica's build (liquid_abt_build_info) and uptime: after a deploy every "
            "replica should show the new version.",
            q(
                "max by (instance, version, revision, python_version) (\n"
                f"  (time() - {sel('process_start_time_seconds')})\n"
                "  * on (instance) group_left (version, revision, python_version)\n"
                f"  {sel('liquid_abt_build_info')}\n"
                ")",
                instant=True,
            ),
            columns=["instance", "version", "revision", "python_version"],
            value="Up for",
            unit="s",
        ),
        12,
        6,
    )
    grid.add(
        timeline(
            "Config reload per replica",
            "liquid_abt_config_last_reload_successful per replica.",
            [
                q(
                    f"min by (instance) ({sel('liquid_abt_config_last_reload_successful')})",
                    "{{instance}}",
                )
            ],
            states((0, "failed", "red"), (1, "applied", "green")),
            links=[runbook(EXPORTER, "LiquidAbtExporterConfigReloadFailed")],
        ),
        6,
        6,
    )
    grid.add(
        bargauge(
            "Since the last successful reload",
            "Time since each replica last applied its configuration (or started).",
            [
                q(
                    "time() - " + sel("liquid_abt_config_last_reload_success_timestamp_seconds"),
                    "{{instance}}",
                )
            ],
            unit="s",
        ),
        6,
        6,
    )


def dashboard() -> dict[str, Any]:
    grid = Grid()
    _health(grid)
    _collectors(grid)
    _webhook(grid)
    _process(grid)
    _build(grid)
    return envelope(
        uid="liquid-abt-exporter",
        title="LIQUID ABT — exporter",
        description=(
            "liquid-abt-exporter itself: up and current, collectors and database, the webhook "
            "receiver and its worker, the process, build and reload. Generated by "
            "grafana/generate.py; the runbook is docs/runbooks/liquid-abt-exporter.md."
        ),
        tags=["exporter"],
        grid=grid,
        templating=variables(exchange=False),
        annotations=[],
        links=[runbook(EXPORTER, title="Runbook: liquid-abt-exporter")],
    )
