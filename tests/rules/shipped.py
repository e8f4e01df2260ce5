"""The shipped alert rules and the metrics documentation, read for the tests that check them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from tests.harness import REPO, RULE_FILES

ALERTS = REPO / "alerts"
TEST_FILES = sorted((ALERTS / "tests").glob("*.yml"))
ALERTMANAGER_CONFIG = ALERTS / "alertmanager.yml"
METRICS_DOC = REPO / "docs" / "metrics.md"

__all__ = [
    "ALERTMANAGER_CONFIG", "ALERTS", "METRICS_DOC", "RULE_FILES", "TEST_FILES", "alerts",
    "documented_metrics", "load", "rules", "unit_tests", "used_metrics",
]  # fmt: skip


# libyaml's safe loader when built with it: the rule tests parse the rule files at collection,
# once per xdist worker, and the pure-Python parser took seconds of each worker's start.
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load(path: Path) -> Any:
    return yaml.load(path.read_text(), Loader=_SAFE_LOADER)


def rules() -> list[dict[str, Any]]:
    return [rule for path in RULE_FILES for g in load(path)["groups"] for rule in g["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


def unit_tests() -> list[dict[str, Any]]:
    return [case for path in TEST_FILES for case in load(path)["tests"]]


def documented_metrics() -> dict[str, str]:
    """{metric name: type} from the tables of docs/metrics.md."""
    metrics = {}
    for line in METRICS_DOC.read_text().splitlines():
        if match := re.match(r"^\|\s*`(liquid_abt_[a-z0-9_]+)`\s*\|\s*([a-z]+)", line):
            metrics[match.group(1)] = match.group(2)
    return metrics


def used_metrics() -> dict[str, set[str]]:
    """{metric name: rules using it} over expressions and annotation queries.

    Recording-rule names (level:metric:ops) contain colons and are not exporter metrics.
    """
    used: dict[str, set[str]] = {}
    for rule in rules():
        texts = [rule["expr"], *rule.get("annotations", {}).values()]
        for text in texts:
            for token in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
                if token.startswith("liquid_abt_") and ":" not in token:
                    used.setdefault(token, set()).add(rule.get("alert") or rule["record"])
    return used
