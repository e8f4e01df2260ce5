"""The alert rules and the Alertmanager example: valid, unit tested, complete, consistent with docs.

Runs promtool, amtool and a real Alertmanager. They are required: a missing binary fails the
test (Debian packages `prometheus` and `prometheus-alertmanager`) instead of skipping it.
"""

from __future__ import annotations

import http.server
import json
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import (
    EXPORTER_JOB,
    REPO,
    AlertmanagerProcess,
    Stack,
    require_binary,
    start_alertmanager,
    wait_until,
)
from tests.rules.shipped import (
    ALERTMANAGER_CONFIG,
    METRICS_DOC,
    RULE_FILES,
    TEST_FILES,
    alerts,
    documented_metrics,
    load,
    rules,
    unit_tests,
    used_metrics,
)

RUNBOOK_ALERT_IDS = {
    # alert_id: (alertname, severity, escalation) as the runbooks define them
    "bitcoin_purchase_failure_rate_high": ("BitcoinPurchaseFailureRateHigh", "critical", "5m"),
    "bitcoin_purchase_failure_rate_warning": (
        "BitcoinPurchaseFailureRateWarning",
        "warning",
        "none",
    ),
    "exchange_api_down": ("ExchangeApiDown", "critical", "2m"),
    "exchange_api_slow": ("ExchangeApiSlow", "warning", "none"),
}
# The exporter's own state: what the automation did. Evidence for an info alert, never a page.
CONTROL_METRICS = (
    "liquid_abt_circuit_breaker_state",
    "liquid_abt_circuit_breaker_failures",
    "liquid_abt_incident_phase",
    "liquid_abt_incident_cause",
    "liquid_abt_purchases_paused",
    "liquid_abt_manual_hold",
    "liquid_abt_api_rate_multiplier",
    "liquid_abt_actions_total",
    "liquid_abt_purchase_route",
    "liquid_abt_purchase_route_blocked",
    "liquid_abt_purchase_routed_seconds",
    "liquid_abt_purchase_failovers_total",
)
# Alerts that name a cause on an exchange (with the labels that make them one), and those they
# explain (alertmanager.yml).
CAUSE_ALERTS = (
    ("ExchangeApiDown", "critical", {"source": "probe"}),
    ("ExchangeApiFlapping", "critical", {}),
    ("ExchangeMaintenance", "critical", {"status": "maintenance"}),
    ("ExchangeTradingRestricted", "critical", {"status": "cancel_only"}),
    ("ExchangeApiAuthFailures", "critical", {}),
    # Rate-limited purchases explain failed purchases; rate-limited probe calls do not.
    ("ExchangeApiRateLimited", "warning", {"source": "purchases"}),
    ("ExchangeApiRateLimitedSustained", "critical", {}),
)
EFFECT_ALERTS = (
    ("BitcoinPurchaseFailureRateHigh", "critical"),
    ("BitcoinPurchaseFailureRateWarning", "warning"),
    ("BitcoinPurchaseFailuresLowVolume", "warning"),
    # Issue 15: the error budget burns of an outage page as the outage, once.
    ("BitcoinPurchaseErrorBudgetBurnHigh", "critical"),
    ("BitcoinPurchaseErrorBudgetBurnWarning", "warning"),
    # Their escalation twins (issue 19, point 3): an inhibited page escalates to nobody.
    ("BitcoinPurchaseFailureRateHighEscalation", "critical"),
    ("BitcoinPurchaseErrorBudgetBurnHighEscalation", "critical"),
    ("ExchangeApiSlow", "warning"),
    ("ExchangeApiSlowResponses", "warning"),
)
# A restart of every exporter for under 2 minutes resolves no page (exchange.rules.yml).
KEEP_FIRING_FOR_SECONDS = 180
WEBHOOK_URL = "http://127.0.0.1:9898/webhook/alertmanager"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=REPO)


# --- promtool ---------------------------------------------------------------------------------


def test_rule_files_exist() -> None:
    names = {path.name for path in RULE_FILES}
    assert {"recording.rules.yml", "purchases.rules.yml", "exchange.rules.yml"} <= names
    assert TEST_FILES, "no promtool unit tests in alerts/tests/"


def test_rule_files_pass_promtool_check() -> None:
    result = _run(
        require_binary("promtool"),
        "check",
        "rules",
        "--lint=all",
        "--lint-fatal",
        *map(str, RULE_FILES),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(RULE_FILES), result.stdout


@pytest.mark.parametrize("test_file", TEST_FILES, ids=lambda p: p.name)
def test_promtool_unit_tests_pass(test_file: Path) -> None:
    result = _run(require_binary("promtool"), "test", "rules", str(test_file))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


# --- amtool and Alertmanager ------------------------------------------------------------------


def test_alertmanager_config_passes_amtool_check() -> None:
    result = _run(require_binary("amtool"), "check-config", str(ALERTMANAGER_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@pytest.mark.parametrize(
    ("labels", "receivers"),
    [
        pytest.param(
            {
                "alertname": "ExchangeApiDown",
                "severity": "critical",
                "escalation": "2m",
                "exchange": "kraken",
                "alert_id": "exchange_api_down",
            },
            "liquid-abt-exporter,oncall-pager",
            id="exchange-critical-to-webhook-and-pager",
        ),
        pytest.param(
            {
                "alertname": "ExchangeApiDownEscalation",
                "severity": "critical",
                "escalation": "2m",
                "exchange": "kraken",
                "alert_id": "exchange_api_down",
                "escalate": "true",
            },
            "technical-lead,engineering-manager,cto",
            id="escalation-twin-up-the-escalation-path-only",
        ),
        pytest.param(
            {
                "alertname": "LiquidAbtExporterDown",
                "severity": "critical",
                "escalation": "5m",
                "job": EXPORTER_JOB,
            },
            "oncall-pager",
            id="critical-without-exchange-pages-only",
        ),
        pytest.param(
            {
                "alertname": "ExchangeApiSlow",
                "severity": "warning",
                "escalation": "none",
                "exchange": "kraken",
                "source": "probe",
            },
            "liquid-abt-exporter,team-chat",
            id="exchange-warning-to-webhook-and-chat",
        ),
        pytest.param(
            {
                "alertname": "SecondaryExchangeUnavailable",
                "severity": "warning",
                "escalation": "none",
                "exchange": "independentreserve",
            },
            "liquid-abt-exporter,team-chat",
            id="secondary-unavailable-to-chat-never-pager",
        ),
        pytest.param(
            {"alertname": "LiquidAbtCollectorStale", "severity": "warning", "escalation": "none"},
            "team-chat",
            id="warning-to-chat",
        ),
        pytest.param(
            {
                "alertname": "ExchangeMaintenance",
                "severity": "critical",
                "escalation": "5m",
                "exchange": "kraken",
                "status": "maintenance",
            },
            "liquid-abt-exporter,oncall-pager",
            id="exchange-maintenance-pages",
        ),
        pytest.param(
            {
                "alertname": "LiquidAbtPurchasesStopped",
                "severity": "info",
                "escalation": "none",
                "exchange": "kraken",
            },
            "team-chat",
            id="info-to-chat-never-pager-nor-webhook",
        ),
        pytest.param({"alertname": "Unknown"}, "ops-email", id="default-to-mailbox"),
    ],
)
def test_alertmanager_routes_by_severity(labels: dict[str, str], receivers: str) -> None:
    args = [f"{k}={v}" for k, v in labels.items()]
    result = _run(
        require_binary("amtool"),
        "config",
        "routes",
        "test",
        f"--config.file={ALERTMANAGER_CONFIG}",
        *args,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receivers


def _critical_levels() -> list[dict[str, Any]]:
    routes = load(ALERTMANAGER_CONFIG)["route"]["routes"]
    (critical,) = [r for r in routes if r.get("matchers") == ['severity="critical"']]
    return critical["routes"]


def test_escalation_path_follows_the_runbooks() -> None:
    levels = [
        (r["receiver"], r.get("matchers", []), r["group_wait"], r.get("continue", False))
        for r in _critical_levels()
    ]
    assert levels == [
        ("oncall-pager", ['escalate!="true"'], "10s", True),
        ("technical-lead", ['escalate="true"', 'escalation="2m"'], "2m", True),
        ("technical-lead", ['escalate="true"', 'escalation!="2m"'], "5m", True),
        ("engineering-manager", ['escalate="true"'], "15m", True),
        ("cto", ['escalate="true"'], "30m", False),
    ]


def test_webhook_receiver_uses_bearer_credentials_file_and_sends_resolved() -> None:
    config = load(ALERTMANAGER_CONFIG)
    (receiver,) = [r for r in config["receivers"] if r["name"] == "liquid-abt-exporter"]
    (webhook,) = receiver["webhook_configs"]
    assert webhook["url"] == WEBHOOK_URL
    assert webhook["send_resolved"] is True
    authorization = webhook["http_config"]["authorization"]
    assert authorization["type"] == "Bearer"
    assert authorization["credentials_file"].startswith("/")
    assert "credentials" not in authorization
    assert config["route"]["group_by"] == ["alertname", "exchange"]


def _silent_receivers(config: dict[str, Any]) -> dict[str, Any]:
    # Same receiver names, no integrations: a test must never notify a real pager or exporter.
    return {**config, "receivers": [{"name": r["name"]} for r in config["receivers"]]}


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AlertmanagerProcess]:
    """A real Alertmanager with the example's routes and inhibit rules, and silent receivers."""
    require_binary("prometheus-alertmanager", "alertmanager")
    config = _silent_receivers(load(ALERTMANAGER_CONFIG))
    with start_alertmanager(tmp_path_factory.mktemp("alertmanager"), yaml.safe_dump(config)) as am:
        yield am


class _WebhookSink:
    """A local HTTP endpoint that records when each Alertmanager notification arrived."""

    def __init__(self) -> None:
        self.received: list[tuple[float, dict[str, Any]]] = []
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's spelling)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                sink.received.append((time.monotonic(), json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhook/alertmanager"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def arrived(self, status: str, starts_at: str, since: float) -> float | None:
        """Seconds from `since` to the notification carrying the alert with this status."""
        for at, body in list(self.received):
            alerts = body["alerts"]
            if at >= since and any(
                a["status"] == status and a["startsAt"][:19] == starts_at[:19] for a in alerts
            ):
                return at - since
        return None

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def test_automation_route_delivers_every_firing_and_resolved_within_15_seconds(
    stack: Stack,
) -> None:
    """Issue 10, point 9, with the shipped route: a new alert, its resolution, and the same
    alert firing again into its existing group each reach the webhook within 15 s of the change
    reaching Alertmanager (Prometheus sends a change at once)."""
    require_binary("prometheus-alertmanager", "alertmanager")
    sink = _WebhookSink()
    try:
        config = _silent_receivers(load(ALERTMANAGER_CONFIG))
        webhook = {"url": sink.url, "send_resolved": True}
        config["receivers"] = [
            {**r, "webhook_configs": [webhook]} if r["name"] == "liquid-abt-exporter" else r
            for r in config["receivers"]
        ]
        am = stack.alertmanager(yaml.safe_dump(config))
        labels = _alert("ExchangeApiDown", "critical", exchange="kraken", escalation="2m")

        def change(status: str, starts_at: str, **times: str) -> float:
            since = time.monotonic()
            am.post_alerts([{"labels": labels, "startsAt": starts_at, **times}])
            return wait_until(
                lambda: sink.arrived(status, starts_at, since),
                timeout=30,
                what=f"a {status} notification (received: {sink.received})",
            )

        started = _utc_now()
        delays = {"firing": change("firing", started)}
        delays["resolved"] = change("resolved", started, endsAt=_utc_now())
        delays["firing again"] = change("firing", _utc_now())
        print(f"webhook delivery delays (s): {delays}")
        assert all(delay < 15 for delay in delays.values()), delays
    finally:
        sink.close()


def _key(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _assert_inhibition(
    am: AlertmanagerProcess, inhibited: list[dict[str, str]], kept: list[dict[str, str]]
) -> None:
    """Post the alerts, then wait until Alertmanager's view matches (its inhibitor is async)."""
    am.post_alerts([{"labels": labels} for labels in inhibited + kept])
    expected = {**{_key(a): True for a in inhibited}, **{_key(a): False for a in kept}}
    actual: dict[str, bool | None] = {}

    def matches() -> bool:
        nonlocal actual
        seen = {_key(a["labels"]): bool(a["status"]["inhibitedBy"]) for a in am.alerts()}
        actual = {k: seen.get(k) for k in expected}
        return actual == expected

    wait_until(matches, timeout=10, what=f"inhibitions {expected} (last seen {actual})")


def _alert(name: str, severity: str, **labels: str) -> dict[str, str]:
    return {"alertname": name, "severity": severity, **labels}


@pytest.mark.parametrize(
    ("cause", "severity", "labels"), CAUSE_ALERTS, ids=[c for c, _, _ in CAUSE_ALERTS]
)
def test_each_cause_inhibits_the_failures_it_explains_on_that_exchange(
    alertmanager: AlertmanagerProcess, cause: str, severity: str, labels: dict[str, str]
) -> None:
    # One exchange per cause: the alerts of one test must not inhibit those of another.
    exchange = f"exchange-{cause.lower()}"
    _assert_inhibition(
        alertmanager,
        inhibited=[_alert(name, sev, exchange=exchange) for name, sev in EFFECT_ALERTS],
        kept=[
            _alert(cause, severity, exchange=exchange, **labels),
            # Another exchange's failures are not explained by this one's cause.
            _alert("BitcoinPurchaseFailureRateHigh", "critical", exchange=f"other-{exchange}"),
        ],
    )


def test_rate_limited_probe_calls_alone_leave_the_failure_rate_page_alone(
    alertmanager: AlertmanagerProcess,
) -> None:
    """The exporter's own probe being rate limited explains no failed purchase: whatever fails
    them still pages."""
    exchange = "probe-rate-limited"
    _assert_inhibition(
        alertmanager,
        inhibited=[],
        kept=[
            _alert("ExchangeApiRateLimited", "warning", exchange=exchange, source="probe"),
            _alert("BitcoinPurchaseFailureRateHigh", "critical", exchange=exchange),
        ],
    )


def test_exchange_api_down_is_never_inhibited_by_its_effects(
    alertmanager: AlertmanagerProcess,
) -> None:
    """Every other alert of the exchange fires at once; ExchangeApiDown still reaches receivers.
    Auth and rate limiting stay visible beside it too: each cause pages as itself."""
    exchange = "everything-at-once"
    others = [
        _alert(name, severity, exchange=exchange, **labels)
        for name, severity, labels in CAUSE_ALERTS
        if name not in ("ExchangeApiDown", "ExchangeApiRateLimited")
    ]
    _assert_inhibition(
        alertmanager,
        inhibited=[
            *(_alert(name, sev, exchange=exchange) for name, sev in EFFECT_ALERTS),
            # The sustained page says it; the warning beside it says nothing new.
            _alert("ExchangeApiRateLimited", "warning", exchange=exchange, source="purchases"),
        ],
        kept=[
            _alert("ExchangeApiDown", "critical", exchange=exchange, escalation="2m"),
            _alert("LiquidAbtPurchasesStopped", "info", exchange=exchange),
            _alert("LiquidAbtExchangeIsolated", "warning", exchange=exchange, instance="a:9898"),
            *others,
        ],
    )


def test_no_inhibit_rule_can_silence_a_cause_alert() -> None:
    """Statically, for every inhibit rule: its targets never match a cause alert, except the
    rate-limit warning under its own sustained page."""
    for rule in load(ALERTMANAGER_CONFIG)["inhibit_rules"]:
        for matcher in rule["target_matchers"]:
            match = re.fullmatch(r'alertname(=~|=)"(.*)"', matcher)
            assert match, f"inhibit targets must name alerts: {matcher}"
            pattern = match.group(2) if match.group(1) == "=~" else re.escape(match.group(2))
            for cause, _, _ in CAUSE_ALERTS:
                if re.fullmatch(pattern, cause):
                    assert (cause, rule["source_matchers"]) == (
                        "ExchangeApiRateLimited",
                        ['alertname="ExchangeApiRateLimitedSustained"'],
                    ), f"{cause} is inhibited by {rule['source_matchers']}"


def test_critical_failure_rate_inhibits_the_warning_for_the_same_exchange(
    alertmanager: AlertmanagerProcess,
) -> None:
    _assert_inhibition(
        alertmanager,
        inhibited=[_alert("BitcoinPurchaseFailureRateWarning", "warning", exchange="coinjar")],
        kept=[
            _alert("BitcoinPurchaseFailureRateHigh", "critical", exchange="coinjar"),
            _alert("BitcoinPurchaseFailureRateWarning", "warning", exchange="independent"),
        ],
    )


def test_the_error_budget_page_inhibits_the_ticket_for_the_same_exchange(
    alertmanager: AlertmanagerProcess,
) -> None:
    _assert_inhibition(
        alertmanager,
        inhibited=[
            _alert(
                "BitcoinPurchaseErrorBudgetBurnWarning", "warning", exchange="bleed", window="3d"
            )
        ],
        kept=[
            _alert("BitcoinPurchaseErrorBudgetBurnHigh", "critical", exchange="bleed", window="1h"),
            _alert(
                "BitcoinPurchaseErrorBudgetBurnWarning", "warning", exchange="calm", window="3d"
            ),
            # Both ship: the runbook page and the budget page answer different questions.
            _alert("BitcoinPurchaseFailureRateHigh", "critical", exchange="bleed"),
        ],
    )


def test_meta_alerts_inhibit_their_consequences(alertmanager: AlertmanagerProcess) -> None:
    job = {"job": EXPORTER_JOB}
    _assert_inhibition(
        alertmanager,
        inhibited=[
            _alert(
                "LiquidAbtCollectorStale",
                "warning",
                instance="a:9898",
                collector="purchases",
                **job,
            ),
            _alert("LiquidAbtPurchaseMetricsMissing", "warning", window="15m"),
            _alert("LiquidAbtExporterInstanceDown", "warning", instance="c:9898", **job),
        ],
        kept=[
            _alert("LiquidAbtDatabaseDown", "critical", instance="a:9898", **job),
            # Another replica's collector is not explained by this replica's database.
            _alert(
                "LiquidAbtCollectorStale",
                "warning",
                instance="b:9898",
                collector="purchases",
                **job,
            ),
            _alert("LiquidAbtExporterDown", "critical", **job),
        ],
    )


# --- Rule contents ----------------------------------------------------------------------------


@pytest.mark.parametrize("rule", alerts(), ids=lambda r: r["alert"])
def test_every_alert_has_severity_escalation_and_annotations(rule: dict[str, Any]) -> None:
    labels, annotations = rule.get("labels", {}), rule.get("annotations", {})
    assert labels.get("severity") in {"critical", "warning", "info"}
    # Critical alerts page and escalate (runbooks: 2 or 5 minutes); warnings and info never page.
    escalations = {"2m", "5m"} if labels["severity"] == "critical" else {"none"}
    assert labels.get("escalation") in escalations
    for name in ("summary", "description", "runbook_url"):
        assert annotations.get(name, "").strip(), f"{rule['alert']} has no {name}"
    assert "for" in rule, f"{rule['alert']} has no `for`"


def _seconds(duration: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([smh])", duration))


def _is_twin(rule: dict[str, Any]) -> bool:
    return rule["labels"].get("escalate") == "true"


def _pages() -> list[dict[str, Any]]:
    return [r for r in alerts() if r["labels"]["severity"] == "critical" and not _is_twin(r)]


@pytest.mark.parametrize("rule", _pages(), ids=lambda r: r["alert"])
def test_every_page_has_an_escalation_twin_that_resolves_with_its_evidence(
    rule: dict[str, Any],
) -> None:
    """Issue 19, point 3: the escalation path gets `<page>Escalation`, the page itself but for
    keep_firing_for (so a cleared cause resolves its escalations at once) and its label."""
    (twin,) = [r for r in alerts() if r["alert"] == rule["alert"] + "Escalation"]
    assert _seconds(twin.get("keep_firing_for", "0s")) == 0
    assert twin["labels"] == {**rule["labels"], "escalate": "true"}
    for key in ("expr", "for", "annotations"):
        assert twin.get(key) == rule.get(key), key
    twins = [r["alert"] for r in alerts() if _is_twin(r)]
    assert len(twins) == len(_pages())


@pytest.mark.parametrize(
    "rule",
    # LiquidAbtExporterDown fires on the gap itself (absent); nothing to keep firing.
    [r for r in _pages() if r["alert"] != "LiquidAbtExporterDown"],
    ids=lambda r: r["alert"],
)
def test_every_page_keeps_firing_through_a_restart_of_every_exporter(rule: dict[str, Any]) -> None:
    assert _seconds(rule.get("keep_firing_for", "0s")) >= KEEP_FIRING_FOR_SECONDS


@pytest.mark.parametrize("rule", _pages(), ids=lambda r: r["alert"])
def test_no_page_reads_the_exporters_own_actions(rule: dict[str, Any]) -> None:
    """A page that fires because the exporter opened its breaker feeds back into itself and
    names the wrong cause (issue 10, case 5): pages read evidence about the world."""
    read = set(re.findall(r"liquid_abt_[a-z0-9_]+", rule["expr"]))
    assert read & set(CONTROL_METRICS) == set(), rule["alert"]


def test_the_state_of_the_automation_has_an_alert_that_never_pages() -> None:
    (rule,) = [r for r in alerts() if r["alert"] == "LiquidAbtPurchasesStopped"]
    assert rule["labels"]["severity"] == "info"
    assert {"liquid_abt_incident_phase", "liquid_abt_circuit_breaker_state"} <= set(
        re.findall(r"liquid_abt_[a-z0-9_]+", rule["expr"])
    )


def test_failover_is_a_warning_to_chat_never_a_page() -> None:
    """Failover pages nobody beyond the cause's page (docs/failover.md)."""
    (rule,) = [r for r in alerts() if r["alert"] == "PurchasesRoutedToSecondary"]
    assert (rule["labels"]["severity"], rule["labels"]["escalation"]) == ("warning", "none")
    routes = set(re.findall(r"liquid_abt_purchase_route\w*", " ".join(r["expr"] for r in _pages())))
    assert routes == set()


def test_no_exchange_page_fires_for_a_secondary() -> None:
    """Issue 22: a secondary's trouble stops no purchase, so no more pages than the same outage
    without a secondary: every exchange page ends with the same `unless` (its behaviour:
    alerts/tests/secondary.test.yml); the warning to chat is SecondaryExchangeUnavailable."""
    secondary = [
        "unless on (exchange)",
        'max by (exchange) (last_over_time(liquid_abt_exchange_role{role="secondary"}[5m])) == 1',
    ]
    exchange_pages = [r for r in _pages() if r["alert"].startswith("Exchange")]
    assert len(exchange_pages) == 7
    for rule in exchange_pages:
        lines = [line.strip() for line in rule["expr"].strip().splitlines()]
        assert lines[-2:] == secondary, rule["alert"]
    (warning,) = [r for r in alerts() if r["alert"] == "SecondaryExchangeUnavailable"]
    assert (warning["labels"]["severity"], warning["labels"]["escalation"]) == ("warning", "none")


def test_every_runbook_alert_id_exists_with_its_severity_and_escalation() -> None:
    by_id = {
        r["labels"]["alert_id"]: r
        for r in alerts()
        if "alert_id" in r.get("labels", {}) and not _is_twin(r)
    }
    assert set(by_id) == set(RUNBOOK_ALERT_IDS)
    for alert_id, (name, severity, escalation) in RUNBOOK_ALERT_IDS.items():
        rule = by_id[alert_id]
        assert (rule["alert"], rule["labels"]["severity"], rule["labels"]["escalation"]) == (
            name,
            severity,
            escalation,
        )


def test_exporter_is_watched_under_the_documented_job_name() -> None:
    selectors = [m for r in rules() for m in re.findall(r"\bup\{[^}]*\}", r["expr"])]
    assert selectors, "no rule watches `up`"
    assert all(f'job="{EXPORTER_JOB}"' in s for s in selectors), selectors


def test_every_alert_has_firing_and_quietunit_tests() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in unit_tests():
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    # The escalation twins are their pages but for keep_firing_for (checked above); their own
    # behaviour, resolving with the evidence, is escalation.test.yml's.
    names = {r["alert"] for r in alerts() if not _is_twin(r)}
    assert names - firing == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested quiet"


def test_purchase_and_exchange_alerts_carry_the_exchange_label() -> None:
    # Checked on the alerts the unit tests see firing: the label survives every aggregation.
    for case in unit_tests():
        for check in case.get("alert_rule_test", []):
            if check["alertname"].startswith(("Bitcoin", "Exchange")):
                for alert in check.get("exp_alerts") or []:
                    assert "exchange" in alert["exp_labels"], check["alertname"]


def test_every_recording_rule_has_a_unit_test() -> None:
    exprs = " ".join(
        check["expr"] for case in unit_tests() for check in case.get("promql_expr_test", [])
    )
    records = {r["record"] for r in rules() if "record" in r}
    assert {r for r in records if r not in exprs} == set()


# --- Metric names -----------------------------------------------------------------------------

_HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def test_metrics_doc_parses() -> None:
    documented = documented_metrics()
    assert len(documented) > 20
    assert documented["liquid_abt_exchange_request_duration_seconds"] == "histogram"


def test_every_metric_used_by_the_rules_is_documented() -> None:
    documented = documented_metrics()
    undocumented = {}
    for name, users in used_metrics().items():
        base = name
        for suffix in _HISTOGRAM_SUFFIXES:
            if name.endswith(suffix) and documented.get(name.removesuffix(suffix)) == "histogram":
                base = name.removesuffix(suffix)
        if base not in documented:
            undocumented[name] = sorted(users)
    assert undocumented == {}, f"not in {METRICS_DOC.relative_to(REPO)}: {undocumented}"
