"""`liquid-abt-exporter slo-rules`: the committed alerts/slo.rules.yml is what the default
objectives generate, and any valid set of objectives generates rules promtool accepts.

The rules' behaviour (scenarios, timings) is tested by promtool in alerts/tests/slo*.test.yml,
run by tests/rules/test_rules.py; the dashboard in tests/test_slo_dashboard.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.cli import main
from exporter.config import parse_config
from exporter.slo import ALERTS, WINDOWS, generate
from tests.harness import REPO, RULE_FILES, require_binary, shortened_rules

COMMITTED = REPO / "alerts" / "slo.rules.yml"


def _rules(text: str) -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(text)["groups"] for rule in group["rules"]]


def _promtool_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("promtool"), "check", "rules", "--lint=all", "--lint-fatal", str(path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_the_committed_rules_are_what_the_default_objectives_generate() -> None:
    assert COMMITTED.read_text() == generate(parse_config({})), (
        "alerts/slo.rules.yml is out of date: run `make slo-rules` (then `make kubernetes`)"
    )


def test_check_mode_exits_1_when_the_file_differs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["slo-rules", "--check", f"--rules.file={COMMITTED}"]) == 0
    stale = tmp_path / "slo.rules.yml"
    stale.write_text(COMMITTED.read_text().replace("> 14.4", "> 10"))
    assert main(["slo-rules", "--check", f"--rules.file={stale}"]) == 1
    assert f"{stale}: out of date" in capsys.readouterr().err
    assert main(["slo-rules", f"--rules.file={stale}"]) == 0
    assert stale.read_text() == COMMITTED.read_text()


def test_a_missing_file_in_check_mode_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere.yml"
    assert main(["slo-rules", "--check", f"--rules.file={missing}"]) == 1
    assert capsys.readouterr().err == (
        f"error: --rules.file {missing}: cannot read: No such file or directory\n"
    )


def test_help_explains_every_flag() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "slo-rules", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0
    for text in ("--config.file", "--rules.file", "LIQUID_ABT_SLO_RULES_FILE", "--check",
                 "5m, 30m, 1h, 2h, 6h, 1d and 3d", "standard output"):  # fmt: skip
        assert text in " ".join(result.stdout.split()), text


def test_the_committed_rules_pass_promtool_and_hold_every_window_and_alert() -> None:
    result = _promtool_check(COMMITTED)
    assert result.returncode == 0, result.stdout + result.stderr
    rules = _rules(COMMITTED.read_text())
    records = {r["record"] for r in rules if "record" in r}
    for window in WINDOWS:
        for metric in ("settled", "failed", "unhandled_failed", "error_ratio", "burn_rate",
                       "unhandled_burn_rate"):  # fmt: skip
            assert f"exchange:liquid_abt_purchase_slo_{metric}:{window}" in records
    assert "exchange:liquid_abt_purchase_slo_error_budget_remaining:30d" in records
    pages = [a.name + "Escalation" for a in ALERTS if a.severity == "critical"]
    assert {r["alert"] for r in rules if "alert" in r} == {a.name for a in ALERTS} | set(pages)


def test_the_windows_and_factors_are_the_sre_workbooks() -> None:
    pairs = {(b.factor, b.long, b.short, a.severity) for a in ALERTS for b in a.burns}
    assert pairs == {
        (14.4, "1h", "5m", "critical"),
        (6, "6h", "30m", "critical"),
        (3, "1d", "2h", "warning"),
        (1, "3d", "6h", "warning"),
    }


def test_the_burn_page_stays_quiet_where_a_runbook_alert_already_paged() -> None:
    """Each cause pages once (DESIGN.md): every pair of the page leaves out the exchanges where a
    runbook page fired within the pair's long window; the ticket keeps every pair."""
    shipped = {r["alert"]: r for path in RULE_FILES for g in yaml.safe_load(path.read_text())
               ["groups"] for r in g["rules"] if "alert" in r}  # fmt: skip
    generated = {r["alert"]: r["expr"] for r in _rules(COMMITTED.read_text()) if "alert" in r}
    by_name = {a.name: a for a in ALERTS}
    assert by_name["BitcoinPurchaseErrorBudgetBurnHigh"].paged_by == (
        "BitcoinPurchaseFailureRateHigh",
    )
    assert by_name["BitcoinPurchaseErrorBudgetBurnWarning"].paged_by == ()
    assert "unless" not in generated["BitcoinPurchaseErrorBudgetBurnWarning"]
    for alert in ALERTS:
        for paged_by in alert.paged_by:
            assert shipped[paged_by]["labels"]["severity"] == "critical", paged_by
        branches = generated[alert.name].split("\nor\n")
        assert len(branches) == len(alert.burns)
        for burn, branch in zip(alert.burns, branches, strict=True):
            for paged_by in alert.paged_by:
                assert (
                    "unless on (exchange)\n  max_over_time(ALERTS{"
                    f'alertname="{paged_by}", alertstate="firing"}}[{burn.long}])'
                ) in branch, (alert.name, burn.long)


def test_no_window_costs_sql_every_one_is_derived_from_the_5m_counts() -> None:
    for rule in _rules(COMMITTED.read_text()):
        for window in re.findall(r'window="([^"]+)"', rule["expr"]):
            assert window == "5m", (rule.get("record") or rule["alert"], window)


def test_objectives_per_exchange_generate_disjoint_rules(tmp_path: Path) -> None:
    config = parse_config({
        "exchanges": ["kraken", "coinjar", "btcmarkets"],
        "slo": {"purchases": [
            {"exchanges": ["kraken"], "objective": 99.5, "period": "28d", "min_settled": 50},
            {"objective": 97},
        ]},
    })  # fmt: skip
    text = generate(config)
    path = tmp_path / "slo.rules.yml"
    path.write_text(text)
    result = _promtool_check(path)
    assert result.returncode == 0, result.stdout + result.stderr
    [group] = yaml.safe_load(text)["groups"]
    records = [r for r in group["rules"] if "record" in r]
    assert len({r["record"] for r in records}) == len(records), "one rule per recorded series"
    # Each objective's part of a rule names its exchanges: the parts never overlap.
    selectors = ('exchange=~"kraken"', 'exchange!~"other|kraken"')
    for rule in records:
        parts = re.split(r"\n(?:or)\n(?=\S)", rule["expr"])
        if rule["record"].endswith(("28d", "30d")):  # one objective each: the periods differ
            continue
        for part in parts:
            for series in re.findall(r"(?:exchange:|liquid_abt_)[\w:]+(\{[^}]*\})", part):
                assert any(s in series for s in selectors), (rule["record"], part)
    budgets = {r["record"]: r["expr"] for r in records if "error_budget_remaining" in r["record"]}
    assert budgets == {
        "exchange:liquid_abt_purchase_slo_error_budget_remaining:28d": (
            '1 - exchange:liquid_abt_purchase_slo_error_ratio:28d{exchange=~"kraken"} / 0.005'
        ),
        "exchange:liquid_abt_purchase_slo_error_budget_remaining:30d": (
            '1 - exchange:liquid_abt_purchase_slo_error_ratio:30d{exchange!~"other|kraken"} / 0.03'
        ),
    }
    [objective] = [r for r in records if r["record"].endswith("objective:ratio")]
    assert objective["expr"] == (
        '0 * exchange:liquid_abt_purchase_slo_settled:5m{exchange=~"kraken"} + 0.995\n'
        "or\n"
        '0 * exchange:liquid_abt_purchase_slo_settled:5m{exchange!~"other|kraken"} + 0.97\n'
    )
    alerts = [r for r in group["rules"] if "alert" in r]
    names = [
        n
        for a in ALERTS
        for n in (a.name, a.name + "Escalation")[: 2 if a.severity == "critical" else 1]
    ]
    assert [a["alert"] for a in alerts] == names * 2
    assert ">= 50" in alerts[0]["expr"] and ">= 10" in alerts[len(names)]["expr"]
    assert "(objective 99.5% over 28d)" in alerts[0]["annotations"]["summary"]


def test_a_period_of_3_days_records_each_series_once(tmp_path: Path) -> None:
    text = generate(parse_config({"slo": {"purchases": [{"period": "3d"}]}}))
    records = [r["record"] for r in _rules(text) if "record" in r]
    assert len(records) == len(set(records))
    assert "exchange:liquid_abt_purchase_slo_error_budget_remaining:3d" in records
    path = tmp_path / "slo.rules.yml"
    path.write_text(text)
    assert _promtool_check(path).returncode == 0


def test_no_objectives_generate_an_empty_file(tmp_path: Path) -> None:
    text = generate(parse_config({"slo": {"purchases": []}}))
    assert yaml.safe_load(text) == {"groups": []}
    path = tmp_path / "slo.rules.yml"
    path.write_text(text)
    assert _promtool_check(path).returncode == 0


def test_runs_of_minutes_leave_the_slo_rules_out(tmp_path: Path) -> None:
    """The demo, the drills and the end-to-end tests shorten or scale the timers: windows of days
    read through unscaled 5-minute counts would only add noise there."""
    assert COMMITTED in RULE_FILES
    shortened = {p.name for p in shortened_rules(tmp_path, "15s")}
    assert "slo.rules.yml" not in shortened
    assert shortened == {p.name for p in RULE_FILES} - {"slo.rules.yml"}
