"""The alert rules and the Alertmanager example: valid, unit tested, complete, consistent with docs.

Runs promtool, amtool and a real Alertmanager. They are required: a missing binary fails the
test (Debian packages `prometheus` and `prometheus-alertmanager`) instead of skipping it.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import (
    EXPORTER_JOB,
    REPO,
    AlertmanagerProcess,
    require_binary,
    start_alertmanager,
    wait_until,
)
from tests.rules.shipped import (
    ALERTMANAGER_CONFIG,
    ALERTS,
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
RUNBOOK_BASE_DEFAULT = "https://runbooks.liquidtreasury.business"
RUNBOOK_URL_PREFIX = (
    '{{ with $externalLabels.runbook_base_url }}{{ reReplaceAll "/+$" "" . }}'
    "{{ else }}" + RUNBOOK_BASE_DEFAULT + "{{ end }}/"
)
PLATFORM_RUNBOOKS = ("bitcoin-purchase-failures.md", "exchange-api-failures.md")
EXPORTER_RUNBOOK = ALERTS / "runbooks" / "liquid-abt-exporter.md"
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
            "liquid-abt-exporter,oncall-pager,technical-lead,engineering-manager,cto",
            id="exchange-critical-to-webhook-and-escalation-path",
        ),
        pytest.param(
            {
                "alertname": "LiquidAbtExporterDown",
                "severity": "critical",
                "escalation": "5m",
                "job": EXPORTER_JOB,
            },
            "oncall-pager,technical-lead,engineering-manager,cto",
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
            {"alertname": "LiquidAbtCollectorStale", "severity": "warning", "escalation": "none"},
            "team-chat",
            id="warning-to-chat",
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
        ("oncall-pager", [], "10s", True),
        ("technical-lead", ['escalation="2m"'], "2m", True),
        ("technical-lead", ['escalation!="2m"'], "5m", True),
        ("engineering-manager", [], "15m", True),
        ("cto", [], "30m", False),
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


@pytest.fixture(scope="module")
def alertmanager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AlertmanagerProcess]:
    """A real Alertmanager with the example's routes and inhibit rules, and silent receivers."""
    require_binary("prometheus-alertmanager", "alertmanager")
    config = load(ALERTMANAGER_CONFIG)
    # Same receiver names, no integrations: the test must never notify a real pager or exporter.
    config["receivers"] = [{"name": r["name"]} for r in config["receivers"]]
    with start_alertmanager(tmp_path_factory.mktemp("alertmanager"), yaml.safe_dump(config)) as am:
        yield am


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


def test_exchange_down_inhibits_the_failures_it_causes_on_that_exchange(
    alertmanager: AlertmanagerProcess,
) -> None:
    _assert_inhibition(
        alertmanager,
        inhibited=[
            _alert("BitcoinPurchaseFailureRateHigh", "critical", exchange="kraken"),
            _alert("BitcoinPurchaseFailureRateWarning", "warning", exchange="kraken"),
            _alert("BitcoinPurchaseFailuresLowVolume", "warning", exchange="kraken"),
            _alert("ExchangeApiSlow", "warning", exchange="kraken", source="probe"),
            _alert("ExchangeApiSlowResponses", "warning", exchange="kraken"),
        ],
        kept=[
            _alert("ExchangeApiDown", "critical", exchange="kraken", escalation="2m"),
            # Another exchange, and the alerts that name the cause, stay visible.
            _alert("BitcoinPurchaseFailureRateHigh", "critical", exchange="bitstamp"),
            _alert("ExchangeApiRateLimited", "warning", exchange="kraken", source="probe"),
            _alert("ExchangeApiAuthFailures", "warning", exchange="kraken", source="probe"),
        ],
    )


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
    assert labels.get("severity") in {"critical", "warning"}
    # Critical alerts page and escalate (runbooks: 2 or 5 minutes); warnings never page.
    escalations = {"2m", "5m"} if labels["severity"] == "critical" else {"none"}
    assert labels.get("escalation") in escalations
    for name in ("summary", "description", "runbook_url"):
        assert annotations.get(name, "").strip(), f"{rule['alert']} has no {name}"
    assert "for" in rule, f"{rule['alert']} has no `for`"


def test_every_runbook_alert_id_exists_with_its_severity_and_escalation() -> None:
    by_id = {r["labels"]["alert_id"]: r for r in alerts() if "alert_id" in r.get("labels", {})}
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
    names = {r["alert"] for r in alerts()}
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


def test_runbook_urls_point_to_runbook_sections() -> None:
    headings: dict[str, set[str]] = {EXPORTER_RUNBOOK.name: _anchors(EXPORTER_RUNBOOK)}
    for name in PLATFORM_RUNBOOKS:
        found = _find_platform_runbook(name)
        if found is not None:
            headings[name] = _anchors(found)
    for rule in alerts():
        url = rule["annotations"]["runbook_url"]
        assert url.startswith(RUNBOOK_URL_PREFIX), f"{rule['alert']}: {url}"
        page, _, anchor = url.removeprefix(RUNBOOK_URL_PREFIX).partition("#")
        assert page in (*PLATFORM_RUNBOOKS, EXPORTER_RUNBOOK.name), f"{rule['alert']}: {page}"
        assert anchor, f"{rule['alert']}: no section"
        if page in headings:
            assert anchor in headings[page], f"{rule['alert']}: no section #{anchor} in {page}"


def _find_platform_runbook(name: str) -> Path | None:
    # The platform runbooks live beside the design documents, outside this repository.
    for directory in (
        REPO / "docs" / "runbooks",
        REPO / "runbooks",
        REPO.parent / "shared" / "runbooks",
    ):
        if (directory / name).is_file():
            return directory / name
    return None


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    anchors = set()
    for line in path.read_text().splitlines():
        if match := re.match(r"^#{1,6}\s+(.*?)\s*$", line):
            text = re.sub(r"[^\w\- ]", "", match.group(1).lower())
            anchors.add(text.replace(" ", "-"))
    return anchors


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
