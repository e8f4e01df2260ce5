"""The demo's copy of the rules: every `for:` and `keep_firing_for:` cut so that a walkthrough
takes minutes, and each alert's texts saying so, so that "sustained for 10 minutes" paging after
half a minute does not mislead whoever reads it."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.harness import RULE_FILES, require_binary, shortened_rules


def alerts(files: list[Path]) -> dict[str, dict[str, Any]]:
    return {
        rule["alert"]: rule
        for path in files
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


def test_the_demo_rules_say_what_was_cut_and_pass_promtool(tmp_path: Path) -> None:
    shipped = alerts([p for p in RULE_FILES if p.name != "slo.rules.yml"])
    demo = alerts(shortened_rules(tmp_path / "demo", "15s", keep_firing_for="15s", say_so=True))
    sustained = demo["ExchangeApiRateLimitedSustained"]
    assert (sustained["for"], sustained["keep_firing_for"]) == ("15s", "15s")
    assert sustained["annotations"]["summary"].endswith(
        "for 10 minutes (demo: for 15s instead of 10m, keep_firing_for 15s instead of 3m)"
    )
    for name, rule in demo.items():
        original = shipped[name]
        changed = [key for key in ("for", "keep_firing_for")
                   if key in original and str(original[key]) not in ("15s", "0s")]  # fmt: skip
        if str(original.get("keep_firing_for")) == "0s":  # an escalation twin stays a twin
            assert rule["keep_firing_for"] == "0s", name
        for text in ("summary", "description"):
            noted = "(demo: " in rule["annotations"][text]
            assert noted == bool(changed), (name, text)
            assert all(f"{key} 15s instead of {original[key]}" in rule["annotations"][text]
                       for key in changed), (name, text)  # fmt: skip
    result = subprocess.run(
        [require_binary("promtool"), "check", "rules", *map(str, sorted((tmp_path / "demo").glob("*.yml")))],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_without_say_so_the_texts_are_the_shipped_ones(tmp_path: Path) -> None:
    plain = alerts(shortened_rules(tmp_path, "2s"))
    assert all("(demo: " not in rule["annotations"]["summary"] for rule in plain.values())
    assert plain["ExchangeApiDown"]["keep_firing_for"] == "3m"
