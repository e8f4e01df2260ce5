"""The exporter as a user runs it: a real process, real HTTP, `promtool check metrics`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.embedded_pg import free_port
from tests.conftest import writable_tmp_dir


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def wait_for_http(url: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"exporter exited with {process.returncode}")
        try:
            if http_get(url)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {timeout}s")


@pytest.fixture
def kraken_server() -> Iterator[str]:
    """The Kraken-compatible server, started through the CLI as a drill would."""
    port, control = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "exporter", "kraken-server", f"--listen=127.0.0.1:{port}",
         f"--control-listen=127.0.0.1:{control}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_for_http(f"http://127.0.0.1:{control}/_control/mode", process)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.communicate(timeout=30)


@pytest.fixture
def exporter_without_database(kraken_server: str) -> Iterator[str]:
    """`liquid-abt-exporter serve` with no DATABASE_URL: the embedded PostgreSQL path of `make run`."""
    port = free_port()
    data = writable_tmp_dir("liquid-abt-run-")
    config = data / "config.yml"
    config.write_text(f"kraken:\n  base_url: {kraken_server}\n  probe_interval: 2s\n")
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    process = subprocess.Popen(
        [sys.executable, "-m", "exporter", "serve", f"--web.listen-address=127.0.0.1:{port}",
         f"--embedded-db.dir={data / 'pg'}", "--log.format=json", f"--config.file={config}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/-/ready", process)
        yield url
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
        assert process.returncode == 0, output
        # The embedded server is stopped with the exporter.
        assert not (data / "pg" / "data" / "postmaster.pid").exists()
        shutil.rmtree(data, ignore_errors=True)


def wait_for_metric(url: str, line: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = http_get(f"{url}/metrics")[1]
        if line in text:
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"{line!r} not in /metrics within {timeout}s")
        time.sleep(0.2)


def test_serve_without_database_serves_metrics(exporter_without_database: str) -> None:
    status, text = http_get(f"{exporter_without_database}/metrics")
    assert status == 200
    assert 'liquid_abt_purchases{exchange="kraken",status="failed",window="15m"} 0.0' in text
    assert "liquid_abt_db_up 1.0" in text
    assert http_get(f"{exporter_without_database}/-/healthy")[0] == 200


def test_promtool_finds_nothing_to_complain_about(exporter_without_database: str) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: install the Debian package `prometheus`")
    # Once the probe has run, every family of the exporter is in the output.
    text = wait_for_metric(exporter_without_database, 'liquid_abt_exchange_up{exchange="kraken"} 1.0')
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stdout + result.stderr


def test_help_explains_every_flag_and_its_environment_variable() -> None:
    result = subprocess.run([sys.executable, "-m", "exporter", "serve", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for flag, env in [("--web.listen-address", "LIQUID_ABT_LISTEN_ADDRESS"),
                      ("--config.file", "LIQUID_ABT_CONFIG_FILE"),
                      ("--log.level", "LIQUID_ABT_LOG_LEVEL"), ("--log.format", "LIQUID_ABT_LOG_FORMAT")]:  # fmt: skip
        assert flag in result.stdout and env in result.stdout


def test_bad_listen_address_is_named() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "serve", "--web.listen-address=nope"],
        capture_output=True, text=True, env={**os.environ, "DATABASE_URL": "postgresql://x@127.0.0.1:1/x"},
    )  # fmt: skip
    assert result.returncode == 1
    assert "--web.listen-address 'nope': expected host:port" in result.stderr


def test_migrate_without_a_database_says_so() -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    result = subprocess.run([sys.executable, "-m", "exporter", "migrate"], capture_output=True, text=True, env=env)
    assert result.returncode == 1
    assert "no database: set DATABASE_URL" in result.stderr


def test_migrate_command_is_idempotent(pg_server_dsn: str) -> None:
    env = {**os.environ, "DATABASE_URL": pg_server_dsn}
    cmd = [sys.executable, "-m", "exporter", "migrate", "--with-platform-schema"]
    first = subprocess.run(cmd, capture_output=True, text=True, env=env)
    second = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0 and "already up to date" in second.stdout, second.stderr
