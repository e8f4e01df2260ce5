"""Every receiver's notification text, rendered by Alertmanager's own template engine (`amtool
template render`, Alertmanager 0.25) for each shape a group of the shipped rules can take: none
comes out empty (issue 19, point 2).

`.CommonAnnotations.summary` is empty as soon as two alerts of one group differ; PagerDuty refuses
an event without a summary with a 400 that Alertmanager does not retry, so the page was lost.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.harness import REPO, require_binary
from tests.rules.shipped import ALERTMANAGER_CONFIG, ALERTS, load

TEMPLATE = ALERTS / "liquid-abt.tmpl"
DEPLOY = REPO / "deploy"
RUNBOOK = "https://github.com/liquid-abt/liquid-abt-exporter/blob/main/docs/runbooks/"
SEPARATOR = "\n--8<--\n"
FIRING_SINCE = "2026-12-07T02:00:00Z"
ZERO = "0001-01-01T00:00:00Z"


def _alert(state: str, summary: str | None, runbook: str, **labels: str) -> dict[str, Any]:
    annotations = {"runbook_url": RUNBOOK + runbook}
    if summary is not None:
        annotations["summary"] = summary
    return {
        "status": state,
        "labels": labels,
        "annotations": annotations,
        "startsAt": FIRING_SINCE,
        "endsAt": ZERO if state == "firing" else "2026-12-07T02:10:00Z",
        "generatorURL": "http://prometheus:9090/graph",
        "fingerprint": f"{abs(hash(tuple(sorted(labels.items())))):016x}",
    }


def _group(alerts: list[dict[str, Any]]) -> dict[str, Any]:
    """The data Alertmanager hands a template for one group (template.Data), with the common
    labels and annotations computed as Alertmanager computes them: those equal on every alert."""

    def common(key: str) -> dict[str, str]:
        first, *rest = (a[key] for a in alerts)
        return {k: v for k, v in first.items() if all(other.get(k) == v for other in rest)}

    labels = common("labels")
    return {
        "receiver": "",
        "status": "firing" if any(a["status"] == "firing" for a in alerts) else "resolved",
        "alerts": alerts,
        "groupLabels": {k: labels[k] for k in ("alertname", "exchange") if k in labels},
        "commonLabels": labels,
        "commonAnnotations": common("annotations"),
        "externalURL": "http://alertmanager:9093",
    }


EXCHANGE = "exchange-api-failures.md#"
PURCHASES = "bitcoin-purchase-failures.md#"
RESTRICTED = 'kraken takes no market orders (exchange maintenance: SystemStatus "{}")'
BURN = (
    "Bitcoin purchases on kraken spend their error budget {}x too fast over {} "
    "(objective 98% over 30d)"
)
DOWN = "kraken API is not answering ({})"
# (group, the page's summary): every group shape the shipped rules and routes can make.
SHAPES: dict[str, tuple[list[dict[str, Any]], str]] = {
    "cancel_only resolved, post_only firing": (
        [
            _alert("resolved", RESTRICTED.format("cancel_only"), EXCHANGE + "exchangetradingrestricted",
                   alertname="ExchangeTradingRestricted", exchange="kraken", status="cancel_only",
                   severity="critical"),
            _alert("firing", RESTRICTED.format("post_only"), EXCHANGE + "exchangetradingrestricted",
                   alertname="ExchangeTradingRestricted", exchange="kraken", status="post_only",
                   severity="critical"),
        ],
        RESTRICTED.format("post_only"),
    ),
    "two burn-rate windows": (
        [
            _alert("firing", BURN.format("16.73", "1h"), PURCHASES + "bitcoinpurchaseerrorbudgetburnhigh",
                   alertname="BitcoinPurchaseErrorBudgetBurnHigh", exchange="kraken", window="1h",
                   severity="critical"),
            _alert("firing", BURN.format("8.727", "6h"), PURCHASES + "bitcoinpurchaseerrorbudgetburnhigh",
                   alertname="BitcoinPurchaseErrorBudgetBurnHigh", exchange="kraken", window="6h",
                   severity="critical"),
        ],
        BURN.format("16.73", "1h") + " and 1 more",
    ),
    "API down: probe and platform": (
        [
            _alert("firing", DOWN.format("every exporter replica's probe"), EXCHANGE + "exchangeapidown",
                   alertname="ExchangeApiDown", exchange="kraken", source="probe", severity="critical"),
            _alert("firing", DOWN.format("the platform's calls"), EXCHANGE + "exchangeapidown",
                   alertname="ExchangeApiDown", exchange="kraken", source="platform", severity="critical"),
        ],
        DOWN.format("every exporter replica's probe") + " and 1 more",
    ),
    "one alert": (
        [
            _alert("firing", "Bitcoin purchase failure rate on kraken is 8.148% (critical above 5% "
                   "over 15m)", PURCHASES + "bitcoinpurchasefailureratehigh",
                   alertname="BitcoinPurchaseFailureRateHigh", exchange="kraken", severity="critical"),
        ],
        "Bitcoin purchase failure rate on kraken is 8.148% (critical above 5% over 15m)",
    ),
    "everything resolved": (
        [
            _alert("resolved", DOWN.format("every exporter replica's probe"), EXCHANGE + "exchangeapidown",
                   alertname="ExchangeApiDown", exchange="kraken", source="probe", severity="critical"),
            _alert("resolved", DOWN.format("the platform's calls"), EXCHANGE + "exchangeapidown",
                   alertname="ExchangeApiDown", exchange="kraken", source="platform", severity="critical"),
        ],
        "resolved: " + DOWN.format("every exporter replica's probe") + " and 1 more",
    ),
    "an alert without a summary": (
        [_alert("firing", None, "liquid-abt-exporter.md#liquidabtexporterdown",
                alertname="LiquidAbtExporterDown", severity="critical")],
        "LiquidAbtExporterDown",
    ),
}  # fmt: skip


def _templated_fields(config: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(receiver, field path, template text) of every templated string of every receiver."""
    found: list[tuple[str, str, str]] = []

    def walk(receiver: str, path: str, node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(receiver, f"{path}.{key}", value)
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(receiver, f"{path}[{index}]", value)
        elif isinstance(node, str) and "{{" in node:
            found.append((receiver, path.lstrip("."), node))

    for receiver in config["receivers"]:
        for key, value in receiver.items():
            if key != "name":
                walk(receiver["name"], key, value)
    return found


def _render(texts: list[str], data: dict[str, Any], tmp_path: Path) -> list[str]:
    """The texts rendered in one amtool call, as Alertmanager renders a notification."""
    data_file = tmp_path / "data.json"
    data_file.write_text(json.dumps(data))
    result = subprocess.run(
        [
            require_binary("amtool"), "template", "render", f"--template.glob={TEMPLATE}",
            f"--template.data={data_file}", f"--template.text={SEPARATOR.join(texts)}",
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.split(SEPARATOR)


def test_every_page_and_mail_has_a_template() -> None:
    fields = {(r, f) for r, f, _ in _templated_fields(load(ALERTMANAGER_CONFIG))}
    assert ("oncall-pager", "pagerduty_configs[0].description") in fields
    assert ("oncall-pager", "pagerduty_configs[0].links[0].href") in fields
    for mailbox in ("technical-lead", "engineering-manager", "cto", "ops-email"):
        assert (mailbox, "email_configs[0].headers.Subject") in fields
    assert load(ALERTMANAGER_CONFIG)["templates"] == ["liquid-abt.tmpl"]


@pytest.mark.parametrize("shape", SHAPES, ids=list(SHAPES))
def test_no_receiver_renders_an_empty_text_for_any_group_shape(shape: str, tmp_path: Path) -> None:
    alerts, summary = SHAPES[shape]
    data = _group(alerts)
    fields = _templated_fields(load(ALERTMANAGER_CONFIG))
    rendered = _render([text for _, _, text in fields], data, tmp_path)
    by_field = {(r, f): out for (r, f, _), out in zip(fields, rendered, strict=True)}
    print(f"{shape}: {by_field[('oncall-pager', 'pagerduty_configs[0].description')]!r}")
    assert {k: v for k, v in by_field.items() if not v.strip()} == {}
    assert by_field["oncall-pager", "pagerduty_configs[0].description"] == summary
    first = next((a for a in alerts if a["status"] == "firing"), alerts[0])
    assert (
        by_field["oncall-pager", "pagerduty_configs[0].links[0].href"]
        == (first["annotations"]["runbook_url"])
    )
    status = f"FIRING:{sum(a['status'] == 'firing' for a in alerts)}"
    expected_subject = f"[{status if data['status'] == 'firing' else 'RESOLVED'}] {summary}"
    assert by_field["technical-lead", "email_configs[0].headers.Subject"] == expected_subject


def test_the_shapes_are_those_a_common_annotation_leaves_blank(tmp_path: Path) -> None:
    """The test above would prove nothing if these groups had a common summary: rendered the
    old way, three of them come out empty."""
    blank = [
        shape
        for shape, (alerts, _) in SHAPES.items()
        if not _render(["{{ .CommonAnnotations.summary }}"], _group(alerts), tmp_path)[0].strip()
    ]
    assert blank == [
        "cancel_only resolved, post_only firing",
        "two burn-rate windows",
        "API down: probe and platform",
        "everything resolved",
        "an alert without a summary",
    ]


def test_the_compose_stack_ships_the_same_template() -> None:
    assert (DEPLOY / "liquid-abt.tmpl").read_text() == TEMPLATE.read_text()
    assert load(DEPLOY / "alertmanager.yml")["templates"] == ["liquid-abt.tmpl"]
