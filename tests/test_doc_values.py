"""Numbers in the documentation that are configuration defaults come from one place, the defaults
of exporter/config.py: a test fails when the two drift apart.

Three checks: the configuration table of docs/configuration.md, row by row; every "`section.key`
(30 s)" or "`section.key`, 30 s" mention anywhere in the docs; and the phrases of the runbooks and
alerts/README.md that give a default in words. The Grafana README's list of panels that need the
recording rules is checked against the dashboard's queries the same way.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml

from exporter.config import Config, parse_duration
from tests.harness import REPO

DEFAULTS = Config()
DOCS = sorted([REPO / "README.md", REPO / "alerts" / "README.md", REPO / "grafana" / "README.md",
               *(REPO / "docs").rglob("*.md")])  # fmt: skip
UNITS = {"ms": 0.001, "s": 1, "seconds": 1, "m": 60, "minute": 60, "minutes": 60, "h": 3600,
         "hour": 3600, "hours": 3600, "d": 86400, "days": 86400}  # fmt: skip
QUANTITY = r"(\d+(?:\.\d+)?)\s?(ms|seconds|s|minutes|minute|m|hours|hour|h|days|d)\b"


def default(key: str) -> Any:
    value: Any = DEFAULTS
    for part in key.split("."):
        value = getattr(value, part)
    return value


def seconds(number: str, unit: str) -> float:
    return float(number) * UNITS[unit]


# ---- the configuration table ----


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def configuration_rows() -> list[tuple[str, str]]:
    """(key, documented default) for each key of docs/configuration.md's table; a row of
    `a.x` / `y` / `z` shares a's section."""
    rows = []
    for line in (REPO / "docs" / "configuration.md").read_text().splitlines():
        if not line.startswith("| `"):
            continue
        keys, documented = _cells(line)[:2]
        names = re.findall(r"`([^`]+)`", keys)
        values = [v.strip() for v in documented.split(" / ")]
        if not names or "." not in names[0] or len(values) != len(names):
            continue
        section = names[0].rsplit(".", 1)[0]
        if section.split(".")[0] not in Config.model_fields:  # the flags' table
            continue
        for name, value in zip(names, values, strict=True):
            key = name if "." in name else f"{section}.{name}"
            if key not in DESCRIBED:
                rows.append((key, value))
    return rows


# Defaults too long for a table cell, described in words there (and shown by the example file).
DESCRIBED = {"purchases.failure_reasons", "receiver.actions", "slo.purchases", "notices.templates"}


def _documented(text: str) -> Any:
    """A table cell's default as a value: `15s`, `20`, `[5m, 15m]`, `none`, `false`."""
    raw = text.strip("`")
    if raw in ("none", "null"):
        return None
    if raw in ("true", "false"):
        return raw == "true"
    try:
        loaded = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    if isinstance(loaded, list):
        return [_scalar(str(item)) for item in loaded]
    return _scalar(raw)


def _scalar(raw: str) -> Any:
    try:
        return parse_duration(raw) if re.search(r"[a-z]$", raw) else yaml.safe_load(raw)
    except ValueError:
        return raw


CONFIG_ROWS = configuration_rows()


def test_the_configuration_table_is_read() -> None:
    keys = [key for key, _ in CONFIG_ROWS]
    assert "incident.rate_restore_after" in keys and "kraken.probe_interval" in keys
    assert len(keys) > 40


@pytest.mark.parametrize(("key", "documented"), CONFIG_ROWS, ids=[k for k, _ in CONFIG_ROWS])
def test_the_configuration_table_gives_the_defaults(key: str, documented: str) -> None:
    if not documented.startswith("`") and documented != "none":
        pytest.fail(f"{key}: write the default as code (`...`) or `none`: {documented!r}")
    assert _documented(documented) == default(key), f"{key}: documented {documented}"


# ---- `key` (30 s) mentions ----

MENTION = re.compile(r"`((?:[a-z_]+\.)+[a-z_]+)`(?:\s\(|,\s)" + QUANTITY)


def mentions() -> list[tuple[str, str, float]]:
    found = []
    for path in DOCS:
        for match in MENTION.finditer(" ".join(path.read_text().split())):
            key, number, unit = match.groups()
            if key.split(".")[0] in Config.model_fields:
                found.append((str(path.relative_to(REPO)), key, seconds(number, unit)))
    return found


MENTIONS = mentions()


def test_mentions_are_found() -> None:
    assert ("docs/incidents.md", "incident.replica_stale_after", 60.0) in MENTIONS


@pytest.mark.parametrize(("file", "key", "value"), MENTIONS,
                         ids=[f"{f}:{k}" for f, k, _ in MENTIONS])  # fmt: skip
def test_each_mention_of_a_key_gives_its_default(file: str, key: str, value: float) -> None:
    assert value == default(key), f"{file}: `{key}` given as {value:g} s"


# ---- phrases in words ----

PHRASES = [
    # (file, the phrase with the number as a group, the key)
    ("docs/runbooks/exchange-api-failures.md",
     r"restores it " + QUANTITY + r" after the last rate-limited call", "incident.rate_restore_after"),
    ("docs/runbooks/exchange-api-failures.md",
     r"a row older than " + QUANTITY + r" no longer votes", "incident.replica_stale_after"),
    ("docs/runbooks/exchange-api-failures.md",
     r"once nothing was rate limited for " + QUANTITY, "incident.rate_restore_after"),
    ("docs/runbooks/exchange-api-failures.md",
     r"within the probation \(" + QUANTITY + r" of health\)", "incident.probation"),
    ("docs/runbooks/exchange-api-failures.md",
     r"lowers the API rate multiplier to (\d(?:\.\d+)?)()", "receiver.lowered_rate_multiplier"),
    ("docs/incidents.md",
     r"probation needs " + QUANTITY + r" of health", "incident.probation"),
    ("docs/incidents.md",
     r"every `kraken.probe_interval` \(" + QUANTITY, "kraken.probe_interval"),
    ("docs/incidents.md",
     r"costs one `kraken.timeout` \(" + QUANTITY, "kraken.timeout"),
]  # fmt: skip


@pytest.mark.parametrize(("file", "phrase", "key"), PHRASES,
                         ids=[f"{f}:{k}" for f, _, k in PHRASES])  # fmt: skip
def test_phrases_give_the_defaults(file: str, phrase: str, key: str) -> None:
    text = " ".join((REPO / file).read_text().split())
    found = re.findall(phrase, text)
    assert found, f"{file}: the phrase {phrase!r} is gone: update this test with the text"
    for number, unit in found:
        value = seconds(number, unit) if unit else float(number)
        assert value == default(key), f"{file}: {phrase!r} says {number} {unit}"


# ---- the Grafana README's panels that read recording rules ----


def _recorded() -> set[str]:
    names = set()
    for path in (REPO / "alerts").glob("*.rules.yml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            names |= {rule["record"] for rule in group["rules"] if "record" in rule}
    return names


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [p for panel in panels for p in [panel, *_panels(panel.get("panels", []))]]


def test_the_grafana_readme_lists_the_panels_that_need_the_recording_rules() -> None:
    recorded = _recorded()
    uses = re.compile("|".join(rf"(?<![\w:]){re.escape(r)}(?![\w:])" for r in recorded))
    dashboard = json.loads((REPO / "grafana/dashboards/liquid-abt-incident.json").read_text())
    needing = {
        panel["title"]
        for panel in _panels(dashboard["panels"])
        if any(uses.search(t.get("expr", "")) for t in panel.get("targets", []))
    }
    readme = (REPO / "grafana" / "README.md").read_text()
    block = re.search(r"<!-- recorded-panels: liquid-abt-incident.json -->\n(.*?)<!-- end", readme,
                      re.S)  # fmt: skip
    assert block, "grafana/README.md: the recorded-panels list is gone"
    listed = {line.removeprefix("- ") for line in block[1].splitlines() if line.startswith("- ")}
    assert listed == needing
    slo = json.loads((REPO / "grafana/dashboards/liquid-abt-slo.json").read_text())
    exprs = [t["expr"] for p in _panels(slo["panels"]) for t in p.get("targets", [])]
    assert exprs and all(uses.search(e) for e in exprs), "README: every SLO query is recorded"


def test_dashboard_links_name_dashboards_that_exist() -> None:
    """A `dashboards` link lists the dashboards with its tags; its title must not promise one
    that is not shipped (it once read "LIQUID ABT overview")."""
    shipped = [json.loads(p.read_text()) for p in (REPO / "grafana/dashboards").glob("*.json")]
    titles = {d["title"] for d in shipped} | {"LIQUID ABT"}  # the folder
    for dashboard in shipped:
        for link in dashboard.get("links", []):
            if link["type"] != "dashboards":
                continue
            assert link["title"] in titles, (dashboard["title"], link["title"])
            tagged = [d for d in shipped if set(link["tags"]) <= set(d.get("tags", []))]
            assert len(tagged) > 1, (dashboard["title"], link["tags"])


def test_the_makefile_names_files_that_exist() -> None:
    makefile = (REPO / "Makefile").read_text()
    named = set(re.findall(r"\b((?:deploy|alerts|grafana|docs|bench)/[\w./-]+\.(?:py|yml|yaml|md))",
                           makefile))  # fmt: skip
    assert named and [n for n in sorted(named) if not (REPO / n).exists()] == []


# The documents moved out of the README; the others are checked by their owners' tests.
MOVED = ["README.md", "configuration.md", "incidents.md", "admin.md", "deployment.md", "drills.md",
         "measurements.md", "architecture.md"]  # fmt: skip


def test_a_path_in_a_sentence_exists() -> None:
    """The documents name files of the repository in code spans: each exists."""
    missing = []
    for path in [REPO / "README.md", REPO / "grafana" / "README.md",
                 *(REPO / "docs" / name for name in MOVED[1:])]:  # fmt: skip
        for name in re.findall(r"`((?:deploy|alerts|grafana|exporter|tests|bench)/[\w./-]+)`",
                               path.read_text()):  # fmt: skip
            if not (REPO / name.rstrip("/")).exists() and "*" not in name:
                missing.append(f"{path.name}: {name}")
    assert missing == []
