"""The exporter as a user runs it: a real process, real HTTP, `promtool check metrics`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import (
    ExporterProcess,
    exporter_config,
    http_request,
    start_exporter,
    start_kraken_server,
)


def http_get(url: str) -> tuple[int, str]:
    return http_request(url, timeout=5)


@pytest.fixture
def kraken_server(tmp_path: Path) -> Iterator[str]:
    """The Kraken-compatible server, started through the CLI as a drill would."""
    with start_kraken_server(tmp_path) as kraken:
        yield kraken.url


@pytest.fixture
def exporter_process(kraken_server: str, tmp_path: Path) -> Iterator[ExporterProcess]:
    """`serve` with no DATABASE_URL: the embedded PostgreSQL path of `make run`."""
    exporter = start_exporter(tmp_path, config_yaml=exporter_config(kraken_server, interval="2s"))
    try:
        yield exporter
    finally:
        code = exporter.stop()
        assert code == 0, exporter.log_text()
        # The embedded server is stopped with the exporter.
        assert not exporter.embedded_db_left_running, exporter.log_text()


@pytest.fixture
def exporter_without_database(exporter_process: ExporterProcess) -> str:
    return exporter_process.url


def test_serve_without_database_serves_metrics(exporter_without_database: str) -> None:
    status, text = http_get(f"{exporter_without_database}/metrics")
    assert status == 200
    assert 'liquid_abt_purchases{exchange="kraken",status="failed",window="15m"} 0.0' in text
    assert "liquid_abt_db_up 1.0" in text
    assert http_get(f"{exporter_without_database}/-/healthy")[0] == 200


def test_promtool_finds_nothing_to_complain_about(exporter_process: ExporterProcess) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: install the Debian package `prometheus`")
    # Once the probe has run, every family of the exporter is in the output.
    text = exporter_process.wait_for_metric('liquid_abt_exchange_up{exchange="kraken"} 1.0')
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0 and output == "", output


def test_every_metric_of_the_rules_and_the_docs_is_served(
    exporter_process: ExporterProcess,
) -> None:
    """The contract both ways: rules and docs/metrics.md name only what /metrics serves, and
    every documented family is there (pre-initialised) before anything has happened."""
    from prometheus_client.parser import text_string_to_metric_families

    from tests.rules.shipped import documented_metrics, used_metrics

    text = exporter_process.wait_for_metric('liquid_abt_exchange_up{exchange="kraken"} 1.0')
    served = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    used_by_rules = set(used_metrics())
    assert used_by_rules - served == set(), "used by alerts/ but not served"
    documented = set(documented_metrics())
    # Counters are documented by their sample name (`_total`), histograms by their family name.
    missing = {
        name for name in documented
        if name not in served and f"{name}_count" not in served
    }  # fmt: skip
    assert missing == set(), "documented in docs/metrics.md but not served"


def test_help_explains_every_flag_and_its_environment_variable() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "serve", "--help"], capture_output=True, text=True
    )
    assert result.returncode == 0
    for flag, env in [
        ("--web.listen-address", "LIQUID_ABT_LISTEN_ADDRESS"),
        ("--config.file", "LIQUID_ABT_CONFIG_FILE"),
        ("--log.level", "LIQUID_ABT_LOG_LEVEL"),
        ("--log.format", "LIQUID_ABT_LOG_FORMAT"),
    ]:
        assert flag in result.stdout and env in result.stdout


def test_bad_listen_address_is_named() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "serve", "--web.listen-address=nope"],
        capture_output=True, text=True, env={**os.environ, "DATABASE_URL": "postgresql://x@127.0.0.1:1/x"},
    )  # fmt: skip
    assert result.returncode == 1
    assert "--web.listen-address 'nope': expected host:port" in result.stderr


def test_a_notice_webhook_without_its_signing_key_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "config.yml"
    config.write_text("notices:\n  webhook_url: https://notifier.example/notices\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIQUID_ABT_NOTICES_")}
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "serve", f"--config.file={config}"],
        capture_output=True, text=True, env={**env, "DATABASE_URL": "postgresql://x@127.0.0.1:1/x"},
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr == (
        "error: notices.webhook_url is set but LIQUID_ABT_NOTICES_WEBHOOK_SECRET (or _FILE) is "
        "not: every notice the webhook sends is signed with it\n"
    )


def test_migrate_without_a_database_says_so() -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "migrate"], capture_output=True, text=True, env=env
    )
    assert result.returncode == 1
    assert "no database: set DATABASE_URL" in result.stderr


def test_migrate_command_is_idempotent(pg_server_dsn: str) -> None:
    env = {**os.environ, "DATABASE_URL": pg_server_dsn}
    cmd = [sys.executable, "-m", "exporter", "migrate", "--with-platform-schema"]
    first = subprocess.run(cmd, capture_output=True, text=True, env=env)
    second = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0 and "already up to date" in second.stdout, second.stderr
