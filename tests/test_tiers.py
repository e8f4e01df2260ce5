"""The suite's tiers: every test is in exactly one, decided from what it uses (tests/conftest.py)."""

from __future__ import annotations

import subprocess
import tomllib

import pytest

from tests.conftest import LONG_RUNNING_FIRST, TIERS, _starts_a_program
from tests.harness import REPO, start_exporter


def _runs_a_program() -> None:
    subprocess.run(["true"], check=True)


def _through_a_helper() -> None:
    _runs_a_program()


def _starts_the_exporter() -> None:
    with start_exporter(REPO):  # never called: only its names are read
        pass


def _pure() -> int:
    return sum(range(3))


def test_a_program_is_seen_through_the_suite_s_own_helpers() -> None:
    assert _starts_a_program(_runs_a_program, set())
    assert _starts_a_program(_through_a_helper, set())
    assert _starts_a_program(_starts_the_exporter, set())
    assert not _starts_a_program(_pure, set())


def test_every_collected_test_has_exactly_one_registered_tier(
    request: pytest.FixtureRequest,
) -> None:
    registered = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"][
        "ini_options"
    ]["markers"]
    assert {line.split(":")[0] for line in registered} >= set(TIERS)
    items = request.session.items
    assert items
    for item in items:
        tiers = [name for name in TIERS if item.get_closest_marker(name)]
        assert len(tiers) == 1, (item.nodeid, tiers)


def test_the_long_running_modules_started_first_exist() -> None:
    """A renamed module would silently lose its early start."""
    assert [path for path in LONG_RUNNING_FIRST if not (REPO / path).is_file()] == []
