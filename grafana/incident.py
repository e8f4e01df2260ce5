"""The incident dashboard (liquid-abt-incident.json): per exchange at the top, what an on-call
engineer asks first (are purchases flowing, breaker, pause, incident phase and cause, firing
alerts); then what the automation did; then purchases; then the exchange API as probed."""

from __future__ import annotations

from typing import Any

from panels import (
    BITCOIN,
    EXCHANGE,
    EXCHANGE_API,
    EXPORTER,
    Grid,
    annotation,
    bargauge,
    by_query,
    database_up,
    envelope,
    exporters_up,
    firing_alerts,
    q,
    rule,
    runbook,
    sel,
    stat,
    states,
    steps,
    timeline,
    timeseries,
    variables,
    weighted,
)

# --- States as one number each, shared by the stats at the top and the timelines below ---------

PAUSE = weighted(
    "exchange",
    [
        (1, sel("liquid_abt_purchases_paused", EXCHANGE)),
        (2, sel("liquid_abt_manual_hold", EXCHANGE, 'control="purchases"')),
    ],
)
PAUSE_STATES = states(
    (0, "Running", "green"),
    (1, "Paused", "red"),
    (2, "Running (admin hold)", "purple"),
    (3, "Paused (admin hold)", "purple"),
)
BREAKER = weighted(
    "exchange",
    [
        (1, sel("liquid_abt_circuit_breaker_state", EXCHANGE, 'state="half_open"')),
        (2, sel("liquid_abt_circuit_breaker_state", EXCHANGE, 'state="open"')),
        (4, sel("liquid_abt_manual_hold", EXCHANGE, 'control="circuit_breaker"')),
    ],
)
BREAKER_STATES = states(
    (0, "Closed", "green"),
    (1, "Half-open", "orange"),
    (2, "Open", "red"),
    (4, "Closed (admin hold)", "purple"),
    (5, "Half-open (admin hold)", "purple"),
    (6, "Open (admin hold)", "purple"),
)
PHASE = weighted(
    "exchange",
    [
        (1, sel("liquid_abt_incident_phase", EXCHANGE, 'phase="probation"')),
        (2, sel("liquid_abt_incident_phase", EXCHANGE, 'phase="down"')),
    ],
)
PHASE_STATES = states(
    (0, "Normal", "green"),
    (1, "Probation: verified, resuming", "orange"),
    (2, "Down: purchases stopped", "red"),
)
CAUSE = weighted(
    "exchange",
    [
        (i + 1, sel("liquid_abt_incident_cause", EXCHANGE, f'cause="{cause}"'))
        for i, cause in enumerate(["unavailable", "maintenance", "trading_restricted", "alert"])
    ],
)
CAUSE_STATES = states(
    (0, "None", "green"),
    (1, "API not answering", "red"),
    (2, "Maintenance", "red"),
    (3, "Trading restricted", "red"),
    (4, "Alertmanager alert", "red"),
)
STATUS = weighted(
    "exchange",
    [
        (i + 1, sel("liquid_abt_exchange_status", EXCHANGE, f'status="{status}"'))
        for i, status in enumerate(["online", "cancel_only", "post_only", "maintenance"])
    ],
)
STATUS_STATES = states(
    (0, "unknown", "text"),
    (1, "online", "green"),
    (2, "cancel_only", "orange"),
    (3, "post_only", "orange"),
    (4, "maintenance", "red"),
)
# Both the most and the least answered replica: 2 every replica, 1 some, 0 none.
ANSWERING = (
    f"max by (exchange) ({sel('liquid_abt_exchange_up', EXCHANGE)})\n"
    f"+ min by (exchange) ({sel('liquid_abt_exchange_up', EXCHANGE)})"
)
ANSWERING_STATES = states(
    (0, "Not answering", "red"),
    (1, "Not answering some replicas", "orange"),
    (2, "Answering", "green"),
)
FAILURE_RATIO = steps("green", (0.03, "orange"), (0.05, "red"))  # the runbook's 3 % and 5 %


def _max(metric: str, *matchers: str, by: str = "exchange") -> str:
    """Shared-database gauges are the same on every replica: one value, not one per replica."""
    return f"max by ({by}) ({sel(metric, EXCHANGE, *matchers)})"


# --- Per exchange, at the top ---------------------------------------------------------------------


def _now(grid: Grid) -> None:
    grid.row("$exchange: right now", repeat="exchange")
    stat_w, stat_h = 4, 4
    grid.add(
        stat(
            "Purchases flowing (5m)",
            "Purchases created in the last 5 minutes that completed, and that failed. None "
            "completed: purchases are paused (next panel), the exchange is down, or the platform "
            "sends none.",
            [
                q(_max("liquid_abt_purchases", 'window="5m"', 'status="completed"'), "completed"),
                q(_max("liquid_abt_purchases", 'window="5m"', 'status="failed"'), "failed"),
            ],
            names=True,
            sparkline=True,
            overrides=[
                by_query("A", thresholds=steps("red", (1, "green"))),
                by_query("B", thresholds=steps("green", (1, "red"))),
            ],
            links=[runbook(BITCOIN, "BitcoinPurchaseFailureRateHigh")],
        ),
        stat_w,
        stat_h,
    )
    grid.add(
        stat(
            "Automatic purchases",
            "Paused by the incident model (exchange down, in maintenance, trading restricted) or "
            "by an admin. An admin hold is never lifted by automation: resume it by hand.",
            [q(PAUSE, "{{exchange}}")],
            mappings=PAUSE_STATES,
            links=[
                runbook(EXCHANGE_API, "LiquidAbtPurchasesStopped"),
                runbook(EXCHANGE_API, "Resume purchases"),
            ],
        ),
        stat_w,
        stat_h,
    )
    grid.add(
        stat(
            "Circuit breaker",
            "Shared by every replica: open stops orders to the exchange, half-open lets a few "
            "through while recovery is verified. An admin hold is never lifted by automation.",
            [q(BREAKER, "{{exchange}}")],
            mappings=BREAKER_STATES,
            links=[runbook(EXCHANGE_API, "Force the breaker")],
        ),
        stat_w,
        stat_h,
    )
    grid.add(
        stat(
            "Incident",
            "The incident model's phase: down (purchases stopped), probation (recovery verified; "
            "purchases resume after a period of health), normal.",
            [q(PHASE, "{{exchange}}")],
            mappings=PHASE_STATES,
            links=[runbook(EXCHANGE_API, "Recovery verification")],
        ),
        stat_w,
        stat_h,
    )
    grid.add(
        firing_alerts(
            "Firing alerts",
            "Alerts firing now in Prometheus for this exchange, and those of the exporter itself "
            "(no exchange label: exporter, database, webhook), before Alertmanager's inhibition. "
            "Each alert's section in the runbooks is named after it (`...Escalation`: a page's "
            "copy for the escalation path).",
            'exchange=~"$exchange|"',
        ),
        8,
        2 * stat_h,
    )
    grid.add(
        stat(
            "Cause",
            "Why the incident model stopped purchases: the API does not answer on every replica, "
            "Kraken's SystemStatus says maintenance, or trading is restricted (cancel_only, "
            "post_only); `alert`: an Alertmanager notification for an exchange nothing probes.",
            [q(CAUSE, "{{exchange}}")],
            mappings=CAUSE_STATES,
            links=[
                runbook(EXCHANGE_API, "ExchangeApiDown"),
                runbook(EXCHANGE_API, "ExchangeMaintenance"),
                runbook(EXCHANGE_API, "ExchangeTradingRestricted"),
            ],
        ),
        stat_w,
        stat_h,
    )
    grid.add(
        stat(
            "Exchange API",
            "Whether the exchange answered the last probe round, on every replica, on some (one "
            "replica's network: LiquidAbtExchangeIsolated) or on none. A rate limit or an auth "
            "error is an answer.",
            [q(ANSWERING, "{{exchange}}")],
            mappings=ANSWERING_STATES,
            no_value="Not probed",
            links=[
                runbook(EXCHANGE_API, "ExchangeApiDown"),
                runbook(EXCHANGE_API, "LiquidAbtExchangeIsolated"),
            ],
        ),
        stat_w,
        stat_h,
    )
    grid.add(
        stat(
            "Exchange status",
            "Kraken's SystemStatus as the probe last read it (kept while the API does not "
            "answer; unknown: never read).",
            [q(STATUS, "{{exchange}}")],
            mappings=STATUS_STATES,
            no_value="Not probed",
            links=[
                runbook(EXCHANGE_API, "ExchangeMaintenance"),
                runbook(EXCHANGE_API, "ExchangeTradingRestricted"),
            ],
        ),
        stat_w,
        stat_h,
    )
    grid.add(
        stat(
            "Failure ratio (15m)",
            "Failed / settled purchases created in the last 15 minutes, every failure counted. "
            "The failure-rate alerts leave out failures inside an outage the exporter handled "
            "(Purchases, below). Runbook: warning above 3 %, critical above 5 %.",
            [q(rule("exchange:liquid_abt_purchase_failure_ratio:15m", EXCHANGE), "{{exchange}}")],
            unit="percentunit",
            decimals=1,
            thresholds=FAILURE_RATIO,
            links=[runbook(BITCOIN, "BitcoinPurchaseFailureRateHigh")],
        ),
        stat_w,
        stat_h,
    )


# --- What the automation did ------------------------------------------------------------------


def _automation(grid: Grid) -> None:
    grid.row("What the automation did")
    for title, description, expr, mappings in [
        ("Incident over time", "normal / probation / down", PHASE, PHASE_STATES),
        ("Circuit breaker over time", "closed / half-open / open", BREAKER, BREAKER_STATES),
        ("Automatic purchases over time", "running / paused", PAUSE, PAUSE_STATES),
    ]:
        grid.add(
            timeline(title, f"Per exchange: {description}.", [q(expr, "{{exchange}}")], mappings),
            8,
            5,
        )
    actions = sel("liquid_abt_actions_total")
    grid.add(
        timeseries(
            "Runbook actions",
            "Actions the exporter took (incident model, webhook worker, reconciliation) by "
            "result; `failure` fires LiquidAbtRunbookActionsFailing, `dry_run` means dry run is "
            "on. Every action and its cause is in the audit log (`liquid-abt-exporter admin "
            "audit`).",
            [
                q(
                    f"sum by (action, result) (increase({actions}[$__rate_interval])) > 0",
                    "{{action}} {{result}}",
                )
            ],
            bars=True,
            decimals=0,
            links=[runbook(EXPORTER, "LiquidAbtRunbookActionsFailing")],
        ),
        12,
        8,
    )
    grid.add(
        bargauge(
            "Recovery verifications (time range)",
            "Checks of the exchange (price, order book, balance when keys are configured) before "
            "the breaker closes: success let recovery go on, failure kept purchases stopped.",
            [
                q(
                    "sum by (result) (increase("
                    + sel("liquid_abt_actions_total", 'action="verify_recovery"')
                    + "[$__range]))",
                    "{{result}}",
                )
            ],
            links=[runbook(EXCHANGE_API, "Recovery verification")],
        ),
        6,
        8,
    )
    since = sel("liquid_abt_purchases_paused_since_timestamp_seconds", EXCHANGE)
    grid.add(
        stat(
            "Paused for",
            "How long automatic purchases have been paused (BitcoinPurchasesPausedTooLong after "
            "an hour: is the hold still needed?).",
            [q(f"max by (exchange) ((time() - {since}) * ({since} > bool 0))", "{{exchange}}")],
            unit="s",
            mappings=states((0, "Not paused", "green")),
            thresholds=steps("orange", (3600, "red")),
            links=[runbook(BITCOIN, "BitcoinPurchasesPausedTooLong")],
        ),
        6,
        4,
    )
    failed_checks = sel("liquid_abt_recovery_verification_failed", EXCHANGE)
    grid.add(
        stat(
            "Verification failing",
            "Checks the latest recovery verification failed while purchases stay stopped "
            "(system_status, price, order_book, balance): what keeps them stopped after the cause "
            "cleared. ExchangeRecoveryNotVerified pages after 15 minutes.",
            [q(f"sum by (exchange) (max by (exchange, check) ({failed_checks}))", "{{exchange}}")],
            decimals=0,
            mappings=states((0, "None", "green")),
            thresholds=steps("green", (1, "red")),
            links=[runbook(EXCHANGE_API, "ExchangeRecoveryNotVerified")],
        ),
        6,
        4,
    )
    grid.add(
        stat(
            "Alert states waiting / given up",
            "Alert states recorded from Alertmanager whose actions have not run yet, and those "
            "given up after too many attempts in the time range (dead letters: their actions "
            "never ran; read the notification's last error).",
            [
                q(f"max({sel('liquid_abt_webhook_unprocessed_notifications')})", "waiting"),
                q(
                    f"sum(increase({sel('liquid_abt_webhook_dead_letters_total')}[$__range]))",
                    "given up",
                ),
            ],
            names=True,
            decimals=0,
            thresholds=steps("green", (1, "red")),
            links=[runbook(EXPORTER, "LiquidAbtWebhookBacklog")],
        ),
        6,
        4,
    )
    grid.add(
        timeseries(
            "Retry queue",
            "Failed purchases queued for retry (left) and the age of the oldest (right). "
            "Runbook: backlog above 100, oldest above 1 hour (the maximum retry delay).",
            [
                q(_max("liquid_abt_retry_queue_depth"), "{{exchange}} queued"),
                q(_max("liquid_abt_retry_queue_oldest_age_seconds"), "{{exchange}} oldest"),
            ],
            decimals=0,
            overrides=[by_query("B", unit="s", **{"custom.axisPlacement": "right"})],
            links=[
                runbook(BITCOIN, "BitcoinPurchaseRetryQueueBacklog"),
                runbook(BITCOIN, "Retry failed purchases"),
            ],
        ),
        12,
        8,
    )
    grid.add(
        timeseries(
            "API rate multiplier",
            "The multiplier the platform applies to its exchange call rate: 1 normal, 0.5 "
            "lowered while rate limited.",
            [q(_max("liquid_abt_api_rate_multiplier"), "{{exchange}}")],
            links=[runbook(EXCHANGE_API, "ExchangeApiRateLimited")],
        ),
        6,
        8,
    )
    transitions = sel("liquid_abt_circuit_breaker_transitions_total", EXCHANGE)
    grid.add(
        timeseries(
            "Circuit breaker transitions",
            "Transitions made by the exporters (each replica counts those it made).",
            [
                q(
                    "sum by (exchange, from_state, to_state) "
                    f"(increase({transitions}[$__rate_interval])) > 0",
                    "{{exchange}} {{from_state}} → {{to_state}}",
                )
            ],
            bars=True,
            decimals=0,
        ),
        6,
        8,
    )
    waiting = 'state=~"queued|held|claimed|failed"'
    grid.add(
        timeseries(
            "Customer notices",
            "The customer-notice outbox the platform's notifier consumes (docs/customer-notices"
            ".md): notices waiting (queued, held by an operator, claimed) or given up (failed), by "
            "kind (left), how long the oldest ready one has waited (right; "
            "CustomerNoticesNotConsumed after 10 minutes), and the notices planned (left, bars "
            "of each replica's inserts; the optional webhook's deliveries by result). "
            "`liquid-abt-exporter admin notices list` shows them.",
            [
                q(
                    "sum by (kind, state) ("
                    + _max("liquid_abt_customer_notices", waiting, by="exchange, kind, state")
                    + ") > 0",
                    "{{kind}} {{state}}",
                ),
                q(
                    _max("liquid_abt_customer_notices_oldest_ready_age_seconds"),
                    "{{exchange}} oldest ready",
                ),
                q(
                    "sum by (kind) (increase("
                    + sel("liquid_abt_customer_notices_planned_total")
                    + "[$__rate_interval])) > 0",
                    "{{kind}} planned",
                ),
                q(
                    "sum by (result) (increase("
                    + sel("liquid_abt_customer_notice_webhook_deliveries_total")
                    + "[$__rate_interval])) > 0",
                    "webhook {{result}}",
                ),
            ],
            decimals=0,
            overrides=[by_query("B", unit="s", **{"custom.axisPlacement": "right"})],
            links=[runbook(EXPORTER, "CustomerNoticesNotConsumed")],
        ),
        24,
        8,
    )


# --- Failover -----------------------------------------------------------------------------------


def _failover(grid: Grid) -> None:
    """Where purchases go while the primary's incident stops them (docs/failover.md)."""
    grid.row("Failover: purchases routed to a secondary exchange")
    route = sel("liquid_abt_purchase_route", EXCHANGE)
    grid.add(
        timeline(
            "Purchase route over time",
            "Where the exchange's purchases go, as the platform's gate answers (buy_on): the "
            "primary itself, a verified secondary while its incident stops them, or none (they "
            "wait). One lane per possible route.",
            [q(f"max by (exchange, route) ({route})", "{{exchange}} → {{route}}")],
            states((0, "—", "transparent"), (1, "current", "orange")),
            links=[runbook(EXCHANGE_API, "PurchasesRoutedToSecondary")],
        ),
        12,
        6,
    )
    routed = _max("liquid_abt_purchase_routed_seconds")
    grid.add(
        stat(
            "Routed for",
            "How long purchases have been routed to a secondary (PurchasesRoutedToSecondary, a "
            "warning to chat, says where and why).",
            [q(routed, "{{exchange}}")],
            unit="s",
            mappings=states((0, "Not routed", "green")),
            thresholds=steps("orange"),
            links=[runbook(EXCHANGE_API, "PurchasesRoutedToSecondary")],
        ),
        4,
        6,
    )
    failovers = sel("liquid_abt_purchase_failovers_total", EXCHANGE)
    grid.add(
        stat(
            "Failovers (time range)",
            "Times purchases were routed to a secondary in the time range.",
            [q(f"max by (exchange) (increase({failovers}[$__range]))", "{{exchange}}")],
            decimals=0,
            thresholds=steps("green", (1, "orange")),
        ),
        4,
        6,
    )
    blocked = sel("liquid_abt_purchase_route_blocked", EXCHANGE)
    grid.add(
        bargauge(
            "Route blocked by",
            "The guard that keeps purchases from being routed while the primary's incident stops "
            "them: unverified, secondary_stopped, balance, price, depth, no_reference (the "
            "secondary's evidence), admin_forbids, admin_hold (an admin's).",
            [q(f"max by (guard) ({blocked})", "{{guard}}")],
            links=[runbook(EXCHANGE_API, "PurchasesRoutedToSecondary")],
        ),
        4,
        6,
    )


# --- Purchases ----------------------------------------------------------------------------------


def _purchase_stats(grid: Grid) -> None:
    for title, description, expr, unit, w, links in [
        (
            "Settled purchases (15m)",
            "Completed + failed + refunded in the last 15 minutes. Below 10 the failure-rate "
            "alerts stand down and BitcoinPurchaseFailuresLowVolume counts failures instead.",
            rule("exchange:liquid_abt_purchases_settled:15m", EXCHANGE),
            "short",
            4,
            [runbook(BITCOIN, "BitcoinPurchaseFailuresLowVolume")],
        ),
        (
            "Failed amount (1h)",
            "Sum of amount_aud of the purchases that failed in the last hour.",
            _max("liquid_abt_purchase_failed_amount_aud", 'window="1h"'),
            "currencyAUD",
            5,
            [runbook(BITCOIN, "Manual refund")],
        ),
        (
            "Affected tenants (1h)",
            "Distinct tenants with a failed purchase in the last hour: who to notify.",
            _max("liquid_abt_purchase_affected_tenants", 'window="1h"'),
            "short",
            5,
            [],
        ),
        (
            "Retry-eligible failures",
            "Failed in the last hour, reason not insufficient_funds / invalid_amount, "
            "retry_count < 3: what the runbook's retry step picks up.",
            _max("liquid_abt_purchase_retry_eligible"),
            "short",
            5,
            [runbook(BITCOIN, "Retry failed purchases")],
        ),
        (
            "Handled failures (1h)",
            "Failures inside an outage the exporter handled (purchases stopped, retries "
            "queued): already paged as their cause, so the failure-rate alerts leave them out.",
            _max("liquid_abt_purchase_handled_failures", 'window="1h"'),
            "short",
            5,
            [runbook(BITCOIN, "BitcoinPurchaseFailureRateHigh")],
        ),
    ]:
        grid.add(stat(title, description, [q(expr, "{{exchange}}")], unit=unit, links=links), w, 4)


def _purchases(grid: Grid) -> None:
    grid.row("Purchases: runbook Bitcoin purchase failures")
    _purchase_stats(grid)
    grid.add(
        timeseries(
            "Failure ratio by window",
            "Failed / settled purchases over 5 minutes, 15 minutes (the alerts' window) and an "
            "hour, and over 15 minutes without the failures of handled outages: what "
            "BitcoinPurchaseFailureRateHigh / Warning read. Bands: 3 % warning, 5 % critical.",
            [
                q(_max("liquid_abt_purchase_failure_ratio", 'window="5m"'), "{{exchange}} 5m"),
                q(
                    rule("exchange:liquid_abt_purchase_failure_ratio:15m", EXCHANGE),
                    "{{exchange}} 15m",
                ),
                q(_max("liquid_abt_purchase_failure_ratio", 'window="1h"'), "{{exchange}} 1h"),
                q(
                    rule("exchange:liquid_abt_purchase_unhandled_failure_ratio:15m", EXCHANGE),
                    "{{exchange}} 15m outside handled outages (alerts)",
                ),
            ],
            unit="percentunit",
            decimals=1,
            thresholds=FAILURE_RATIO,
            threshold_style="line+area",
            soft_max=0.06,
            links=[
                runbook(BITCOIN, "BitcoinPurchaseFailureRateHigh"),
                runbook(BITCOIN, "BitcoinPurchaseFailureRateWarning"),
            ],
        ),
        12,
        8,
    )
    grid.add(
        timeseries(
            "Failures by reason (15m)",
            "Failed purchases of the last 15 minutes by reason class: exchange_unavailable "
            "(ExchangeApiDown), rate_limited, auth, network_timeout, insufficient_funds, "
            "invalid_amount, maintenance, other.",
            [
                q(
                    _max("liquid_abt_purchase_failures", 'window="15m"', by="exchange, reason")
                    + " > 0",
                    "{{exchange}} {{reason}}",
                )
            ],
            decimals=0,
            links=[runbook(BITCOIN, "BitcoinPurchaseFailureRateHigh")],
        ),
        12,
        8,
    )
    grid.add(
        timeseries(
            "Purchases by status (15m)",
            "Purchases created in the last 15 minutes, by status.",
            [
                q(
                    _max("liquid_abt_purchases", 'window="15m"', by="exchange, status"),
                    "{{exchange}} {{status}}",
                )
            ],
            decimals=0,
        ),
        6,
        8,
    )
    grid.add(
        timeseries(
            "Customer impact (15m)",
            "AUD amount of the purchases that failed in the last 15 minutes (left) and the "
            "distinct tenants affected (right).",
            [
                q(
                    _max("liquid_abt_purchase_failed_amount_aud", 'window="15m"'),
                    "{{exchange}} AUD",
                ),
                q(
                    _max("liquid_abt_purchase_affected_tenants", 'window="15m"'),
                    "{{exchange}} tenants",
                ),
            ],
            unit="currencyAUD",
            overrides=[by_query("B", unit="short", **{"custom.axisPlacement": "right"})],
            links=[runbook(EXCHANGE_API, "Post-incident review")],
        ),
        6,
        8,
    )
    grid.add(
        timeseries(
            "Handled and unhandled failures (15m)",
            "Failures of the last 15 minutes inside an outage the exporter handled, and the rest: "
            "only the rest counts towards the failure-rate alerts.",
            [
                q(
                    rule("exchange:liquid_abt_purchases_handled_failed:15m", EXCHANGE),
                    "{{exchange}} handled",
                ),
                q(
                    rule("exchange:liquid_abt_purchases_unhandled_failed:15m", EXCHANGE),
                    "{{exchange}} unhandled",
                ),
            ],
            decimals=0,
        ),
        6,
        8,
    )
    grid.add(
        bargauge(
            "Failures by reason (1h)",
            'The runbook\'s "group failures by reason" over the last hour.',
            [
                q(
                    "sum by (reason) ("
                    + _max("liquid_abt_purchase_failures", 'window="1h"', by="exchange, reason")
                    + ")",
                    "{{reason}}",
                )
            ],
        ),
        6,
        8,
    )


# --- The exchange API -----------------------------------------------------------------------------


def _duration_quantile(quantile: float, by: str) -> str:
    buckets = sel("liquid_abt_exchange_request_duration_seconds_bucket", EXCHANGE)
    return f"histogram_quantile({quantile}, sum by ({by}, le) (rate({buckets}[$__rate_interval])))"


def _exchange_stats(grid: Grid) -> None:
    for title, description, expr, unit, links in [
        (
            "Consecutive failed rounds",
            "Probe rounds in a row without an answer (the best replica). ExchangeApiDown needs "
            "2 on every replica.",
            f"min by (exchange) ({sel('liquid_abt_exchange_consecutive_failures', EXCHANGE)})",
            "short",
            [runbook(EXCHANGE_API, "ExchangeApiDown")],
        ),
        (
            "Last successful probe",
            "Time since the last fully successful probe round (the most recent replica).",
            "time() - max by (exchange) ("
            + sel("liquid_abt_exchange_last_success_timestamp_seconds", EXCHANGE)
            + " > 0)",
            "s",
            [],
        ),
        (
            "Mean response (5m)",
            "Mean probe response time over 5 minutes: ExchangeApiSlow above 3 s.",
            rule("exchange:liquid_abt_exchange_request_duration_seconds:mean5m", EXCHANGE),
            "s",
            [runbook(EXCHANGE_API, "ExchangeApiSlow")],
        ),
        (
            "Probe error ratio (5m)",
            "Share of probe calls that did not succeed over 5 minutes (any outcome but success).",
            rule("exchange:liquid_abt_exchange_requests:error_ratio_rate5m", EXCHANGE),
            "percentunit",
            [],
        ),
        (
            "Replicas probing",
            "Replicas whose probe rounds are recent enough to vote on the exchange being down.",
            _max("liquid_abt_exchange_probing_replicas"),
            "short",
            [],
        ),
        (
            "Replicas failing",
            "Of those, replicas that saw the API not answer the failure threshold of rounds in a "
            "row. Down is down for every replica; one alone is its own network.",
            _max("liquid_abt_exchange_failing_replicas"),
            "short",
            [runbook(EXCHANGE_API, "LiquidAbtExchangeIsolated")],
        ),
    ]:
        grid.add(stat(title, description, [q(expr, "{{exchange}}")], unit=unit, links=links), 4, 4)


def _exchange_api(grid: Grid) -> None:
    grid.row("Exchange API (live probe): runbook Exchange API failures")
    _exchange_stats(grid)
    grid.add(
        timeseries(
            "Probe latency",
            "Percentiles of the probe's call durations, and the 5-minute mean of ExchangeApiSlow. "
            "Lines: 3 s (slow mean), 5 s (slow response).",
            [
                q(_duration_quantile(0.5, "exchange"), "{{exchange}} p50"),
                q(_duration_quantile(0.95, "exchange"), "{{exchange}} p95"),
                q(_duration_quantile(0.99, "exchange"), "{{exchange}} p99"),
                q(
                    rule("exchange:liquid_abt_exchange_request_duration_seconds:mean5m", EXCHANGE),
                    "{{exchange}} mean (5m)",
                ),
            ],
            unit="s",
            thresholds=steps("transparent", (3, "orange"), (5, "red")),
            threshold_style="dashed",
            links=[runbook(EXCHANGE_API, "ExchangeApiSlow")],
        ),
        12,
        8,
    )
    grid.add(
        timeseries(
            "Probe p95 latency by endpoint",
            "95th percentile per endpoint: SystemStatus, Ticker (price), Depth (order book), "
            "Time, Balance (only with API keys).",
            [q(_duration_quantile(0.95, "exchange, endpoint"), "{{exchange}} {{endpoint}}")],
            unit="s",
            links=[runbook(EXCHANGE_API, "ExchangeApiSlowResponses")],
        ),
        12,
        8,
    )
    requests = sel("liquid_abt_exchange_requests_total", EXCHANGE)
    grid.add(
        timeseries(
            "Probe outcomes",
            "Probe calls per second by outcome: timeout / network_error / service_unavailable / "
            "server_error (API down), rate_limited, auth_error (our keys), invalid_nonce "
            "(replicas share a key or the clock went back: configuration), api_error.",
            [
                q(
                    f"sum by (exchange, outcome) (rate({requests}[$__rate_interval])) > 0",
                    "{{exchange}} {{outcome}}",
                )
            ],
            unit="reqps",
            links=[
                runbook(EXCHANGE_API, "ExchangeApiRateLimited"),
                runbook(EXCHANGE_API, "ExchangeApiAuthFailures"),
            ],
        ),
        12,
        8,
    )
    grid.add(
        timeline(
            "Exchange status over time",
            "SystemStatus over time: online, cancel_only, post_only, maintenance.",
            [q(STATUS, "{{exchange}}")],
            STATUS_STATES,
            links=[runbook(EXCHANGE_API, "ExchangeMaintenance")],
        ),
        12,
        4,
    )
    grid.add(
        timeseries(
            "Probe responses slower than 5 s (5m)",
            "Probe calls in the last 5 minutes that took longer than 5 s (ExchangeApiSlowResponses).",
            [
                q(
                    rule(
                        "exchange:liquid_abt_exchange_requests_slower_than_5s:increase5m", EXCHANGE
                    ),
                    "{{exchange}}",
                )
            ],
            decimals=0,
            links=[runbook(EXCHANGE_API, "ExchangeApiSlowResponses")],
        ),
        12,
        4,
    )
    grid.add(
        timeline(
            "Probe per replica",
            "Whether each replica's last probe round was answered, and whether a replica sees "
            "the API not answer while another sees it answer: isolated, its own network "
            "(LiquidAbtExchangeIsolated); not answered on every replica is the exchange. "
            "Nonce refused: the exchange refuses the replica's nonces, so replicas share a key "
            "or its clock went back (configuration; give each replica its own key).",
            [
                q(
                    f"min by (instance, exchange) ({sel('liquid_abt_exchange_up', EXCHANGE)})",
                    "{{instance}} {{exchange}} answered",
                ),
                q(
                    "max by (instance, exchange) ("
                    + sel("liquid_abt_exchange_isolated", EXCHANGE)
                    + ")",
                    "{{instance}} {{exchange}} isolated",
                ),
                q(
                    "max by (instance, exchange) ("
                    + sel("liquid_abt_exchange_invalid_nonce", EXCHANGE)
                    + ")",
                    "{{instance}} {{exchange}} nonces",
                ),
            ],
            states((0, "not answered", "red"), (1, "answered", "green")),
            overrides=[
                by_query(
                    "B",
                    mappings=states((0, "not isolated", "green"), (1, "isolated", "orange")),
                ),
                by_query(
                    "C",
                    mappings=states((0, "accepted", "green"), (1, "nonce refused", "orange")),
                ),
            ],
            links=[runbook(EXCHANGE_API, "LiquidAbtExchangeIsolated")],
        ),
        24,
        5,
    )
    _failover_evidence(grid)


def _failover_evidence(grid: Grid) -> None:
    """The secondaries' verification (docs/exchanges.md): what failover may route to."""
    grid.add(
        timeline(
            "Verified for failover",
            "Whether each exchange's newest verification passed (liquid_abt.exchange_verifications, "
            "every verify_interval): a secondary may take purchases only while verified. The "
            "primary's row is its last good market (the reference price). Not verified on every "
            "exchange when no secondary is configured.",
            [q(f"max by (exchange) ({sel('liquid_abt_exchange_verification_ok', EXCHANGE)})"
               f" * on (exchange) group_left (role) max by (exchange, role) "
               f"({sel('liquid_abt_exchange_role', EXCHANGE)} == 1)",
               "{{exchange}} ({{role}})")],
            states((0, "not verified", "red"), (1, "verified", "green")),
        ),
        12,
        4,
    )  # fmt: skip
    verified = sel("liquid_abt_exchange_verified_timestamp_seconds", EXCHANGE)
    grid.add(
        timeseries(
            "Age of the newest verification",
            "Seconds since each exchange last passed its verification (the primary: since its "
            "last good market, which ages through its outage). Empty without a secondary.",
            [q(f"time() - max by (exchange) ({verified} > 0)", "{{exchange}}")],
            unit="s",
        ),
        12,
        4,
    )


# --- The exporter, briefly; the platform's own calls ----------------------------------------------


def _exporter(grid: Grid) -> None:
    grid.row("The exporter (details: the LIQUID ABT exporter dashboard)")
    grid.add(exporters_up(), 6, 4)
    grid.add(database_up(), 6, 4)
    grid.add(
        stat(
            "Oldest collector refresh",
            "Time since the stalest collector last refreshed (LiquidAbtCollectorStale above "
            "120 s): older purchase and control numbers above.",
            [
                q(
                    "max(time() - "
                    + sel("liquid_abt_collector_last_success_timestamp_seconds")
                    + ")",
                    "oldest",
                )
            ],
            unit="s",
            thresholds=steps("green", (60, "orange"), (120, "red")),
            links=[runbook(EXPORTER, "LiquidAbtCollectorStale")],
        ),
        6,
        4,
    )
    grid.add(
        stat(
            "Version",
            "Builds running (liquid_abt_build_info), and how many replicas run each.",
            [q(f"count by (version) ({sel('liquid_abt_build_info')})", "{{version}}")],
            names=True,
        ),
        6,
        4,
    )


def _platform_calls(grid: Grid) -> None:
    grid.row("Platform API calls (api_call_logs)", collapsed=True)
    grid.add(
        timeseries(
            "Platform API response time (5m)",
            "What the platform measured calling the exchange (api_call_logs): the mean over all "
            "calls (ExchangeApiSlow with source=platform), and p95 and mean per endpoint.",
            [
                q(
                    rule(
                        "exchange:liquid_abt_platform_api_mean_response_time_seconds:5m", EXCHANGE
                    ),
                    "{{exchange}} mean (all endpoints)",
                ),
                q(
                    _max(
                        "liquid_abt_platform_api_p95_response_time_seconds",
                        'window="5m"',
                        by="exchange, endpoint",
                    ),
                    "{{exchange}} {{endpoint}} p95",
                ),
                q(
                    _max(
                        "liquid_abt_platform_api_mean_response_time_seconds",
                        'window="5m"',
                        by="exchange, endpoint",
                    ),
                    "{{exchange}} {{endpoint}} mean",
                ),
            ],
            unit="s",
            links=[runbook(EXCHANGE_API, "ExchangeApiSlow")],
        ),
        12,
        8,
    )
    grid.add(
        timeseries(
            "Platform API calls (5m)",
            "Calls logged in the last 5 minutes by endpoint and success, and the share that "
            "failed (right axis; ExchangeApiDown with source=platform at 90 %).",
            [
                q(
                    _max(
                        "liquid_abt_platform_api_calls",
                        'window="5m"',
                        by="exchange, endpoint, success",
                    )
                    + " > 0",
                    "{{exchange}} {{endpoint}} success={{success}}",
                ),
                q(
                    rule("exchange:liquid_abt_platform_api_error_ratio:5m", EXCHANGE),
                    "{{exchange}} error ratio",
                ),
            ],
            decimals=0,
            overrides=[
                by_query("B", unit="percentunit", decimals=1, **{"custom.axisPlacement": "right"})
            ],
            links=[runbook(EXCHANGE_API, "ExchangeApiDown")],
        ),
        12,
        8,
    )


def _annotations() -> list[dict[str, Any]]:
    actions = sel("liquid_abt_actions_total")
    down = sel("liquid_abt_incident_phase", EXCHANGE, 'phase="down"')
    transitions = sel("liquid_abt_circuit_breaker_transitions_total", EXCHANGE)
    return [
        annotation(
            "Runbook actions",
            f"sum by (action, result) (increase({actions}[1m])) > 0",
            "purple",
            "{{action}}",
            "result: {{result}}",
            "action,result",
        ),
        annotation(
            "Circuit breaker transitions",
            f"sum by (exchange, from_state, to_state) (increase({transitions}[1m])) > 0",
            "red",
            "{{exchange}} circuit breaker {{from_state}} → {{to_state}}",
            "",
            "exchange,from_state,to_state",
        ),
        annotation(
            "Critical alerts",
            'max by (alertname, exchange) (ALERTS{alertstate="firing", severity="critical"})',
            "orange",
            "{{alertname}}",
            "{{exchange}}",
            "alertname,exchange",
        ),
        annotation(
            "Incident down",
            f"max by (exchange) ({down}) == 1",
            "yellow",
            "{{exchange}}: purchases stopped by the incident model",
            "",
            "exchange",
        ),
    ]


def dashboard() -> dict[str, Any]:
    grid = Grid()
    _now(grid)
    _automation(grid)
    _failover(grid)
    _purchases(grid)
    _exchange_api(grid)
    _exporter(grid)
    _platform_calls(grid)
    return envelope(
        uid="liquid-abt-incident",
        title="LIQUID ABT — incident",
        description=(
            "For an incident, per exchange: are purchases flowing, breaker, pause, incident phase "
            "and cause, firing alerts; then what the automation did, purchases, the exchange API. "
            "Generated by grafana/generate.py; the runbooks are docs/runbooks."
        ),
        tags=["bitcoin", "kraken", "incident"],
        grid=grid,
        templating=variables(exchange=True),
        annotations=_annotations(),
        links=[
            runbook(EXCHANGE_API, title="Runbook: Exchange API failures"),
            runbook(BITCOIN, title="Runbook: Bitcoin purchase failures"),
            runbook(EXPORTER, title="Runbook: liquid-abt-exporter"),
        ],
    )
