"""Pytest fixtures over `liquid_abt_drill.stack`, the programs the demo also runs.

`stack` starts real programs in the test's folder and stops them after the test, newest first
(see `liquid_abt_drill.stack` for the API and an end-to-end example). Prometheus and Alertmanager
are the Debian packages `prometheus` and `prometheus-alertmanager`; a missing binary fails the
test, it is never skipped. Waiting is `wait_until`: a condition and a deadline.

The names of `liquid_abt_drill.stack` are importable from here too, so a test needs one import.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from liquid_abt_drill.stack import (
    DEFAULT_TIMEOUT,
    EXPORTER_JOB,
    INSTALL_HINT,
    AlertmanagerProcess,
    DeadlinePassed,
    ExporterProcess,
    KrakenServerProcess,
    ManagedProcess,
    MissingBinary,
    PostgresServer,
    PrometheusProcess,
    PrometheusQueryError,
    Stack,
    StackError,
    exporter_config,
    find_binary,
    http_request,
    prometheus_config,
    rule_files,
    searchable_tmp_dir,
    shortened_rules,
    source_root,
    start_alertmanager,
    start_exporter,
    start_kraken_server,
    start_postgres,
    start_prometheus,
    start_simulator,
    wait_until,
    webhook_alertmanager_config,
)

REPO = source_root()
RULE_FILES = rule_files()

__all__ = [
    "DEFAULT_TIMEOUT", "EXPORTER_JOB", "INSTALL_HINT", "REPO", "RULE_FILES",
    "AlertmanagerProcess", "DeadlinePassed", "ExporterProcess", "KrakenServerProcess",
    "ManagedProcess", "PostgresServer", "PrometheusProcess", "PrometheusQueryError", "Stack",
    "StackError", "exporter_config", "http_request", "prometheus_config", "require_binary",
    "removed_unless_failed", "searchable_tmp_dir", "searchable_tmp_path", "shortened_rules", "start_alertmanager", "start_exporter",
    "start_kraken_server", "start_postgres", "start_prometheus", "start_simulator", "stack",
    "wait_until", "webhook_alertmanager_config",
]  # fmt: skip


def require_binary(*names: str) -> str:
    """Path of the first of `names` installed; fails the test (never skips) otherwise."""
    try:
        return find_binary(*names)
    except MissingBinary as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """Programs started for this test, in `tmp_path`, all stopped when it ends."""
    with Stack(tmp_path) as started:
        yield started


@pytest.fixture
def searchable_tmp_path(request: pytest.FixtureRequest) -> Iterator[Path]:
    """Like `tmp_path`, but reachable by PostgreSQL's own user when the tests run as root (a
    demo or an embedded server lives in it). Removed after a passing test, kept after a failing
    one for its logs."""
    with removed_unless_failed(request, searchable_tmp_dir("liquid-abt-test-")) as path:
        yield path


@contextlib.contextmanager
def removed_unless_failed(request: pytest.FixtureRequest, path: Path) -> Iterator[Path]:
    """`path`, deleted at the end unless a test failed meanwhile (its logs are the evidence)."""
    failed_before = request.session.testsfailed
    yield path
    if request.session.testsfailed == failed_before:
        shutil.rmtree(path, ignore_errors=True)
