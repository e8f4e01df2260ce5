"""`serve` as a process: start-up order, explicit embedded database, signals, connection limits."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import pytest

from exporter.buildinfo import BuildInfo, git_revision, read_build_file
from exporter.database.embedded import EmbeddedPostgres, find_bin_dir, free_port
from exporter.database.pool import Connection
from exporter.web.server import LoopErrors
from tests.harness import REPO, exporter_config, http_request, start_exporter, wait_until


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args],
        capture_output=True, text=True, timeout=60, env={**base, **(env or {})},
    )  # fmt: skip


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


# --- start-up order and clear errors ------------------------------------------------------------


def test_a_taken_port_fails_before_the_embedded_database_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("serve", "--embedded-db", f"--embedded-db.dir={tmp_path / 'pg'}",
                         f"--web.listen-address=127.0.0.1:{port}")  # fmt: skip
    line = one_line_error(result)
    assert f"--web.listen-address '127.0.0.1:{port}': cannot listen: Address already in use" in line
    assert not (tmp_path / "pg").exists(), "PostgreSQL was prepared before the bind failed"
    assert "Future exception was never retrieved" not in result.stderr


def test_an_unresolvable_listen_host_names_the_flag() -> None:
    line = one_line_error(
        run_cli("serve", "--embedded-db", "--web.listen-address=nohost.invalid:1")
    )
    assert "--web.listen-address 'nohost.invalid:1': cannot resolve host 'nohost.invalid'" in line


def test_serve_without_a_database_fails_with_one_line() -> None:
    line = one_line_error(run_cli("serve", f"--web.listen-address=127.0.0.1:{free_port()}"))
    assert "no database: set DATABASE_URL" in line and "--embedded-db" in line


@pytest.mark.parametrize("command", ["migrate", "serve"])
def test_a_database_url_that_is_not_postgresql_is_one_line(command: str) -> None:
    result = run_cli(command, f"--web.listen-address=127.0.0.1:{free_port()}"
                     if command == "serve" else "--log.level=info",
                     env={"DATABASE_URL": "mysql://app@db.example/platform"})  # fmt: skip
    line = one_line_error(result)
    assert "DATABASE_URL: not a PostgreSQL DSN (scheme 'mysql')" in line


@pytest.mark.parametrize("password", ["hunter2", "pass/word", "p@ss", "a/b@c"])
def test_a_password_in_database_url_is_refused_and_never_echoed(password: str) -> None:
    result = run_cli("migrate", env={"DATABASE_URL": f"postgresql://app:{password}@db/platform"})
    line = one_line_error(result)
    assert "DATABASE_URL: the DSN contains a password" in line
    assert password not in result.stderr + result.stdout


def test_embedded_db_and_a_database_url_exclude_each_other() -> None:
    result = run_cli("serve", "--embedded-db", f"--web.listen-address=127.0.0.1:{free_port()}",
                     env={"DATABASE_URL": "postgresql://app@127.0.0.1:1/platform"})  # fmt: skip
    assert "--embedded-db and a database" in one_line_error(result)


def test_the_first_scrape_already_has_every_database_family(
    tmp_path: Path, database: Connection
) -> None:
    """Not one answer before the first ping and refresh: the socket is bound early, served late."""
    exporter = start_exporter(tmp_path, database_url=database.dsn, config_yaml=exporter_config(),
                              wait=None)  # fmt: skip
    try:
        first = wait_until(lambda: http_request(f"{exporter.url}/metrics", timeout=30),
                           what="first /metrics answer", on_timeout=exporter.fail)  # fmt: skip
        status, text = first
        assert status == 200
        assert "liquid_abt_db_up 1.0" in text
        assert 'liquid_abt_purchases{exchange="kraken",status="failed",window="15m"} 0.0' in text
        for family in ("liquid_abt_retry_queue_depth", "liquid_abt_platform_api_calls",
                       "liquid_abt_circuit_breaker_state"):  # fmt: skip
            assert family in text, family
        assert http_request(f"{exporter.url}/-/ready")[0] == 200
    finally:
        assert exporter.stop() == 0, exporter.log_text()


def test_version_names_revision_and_build_date(tmp_path: Path) -> None:
    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    revision = git_revision(REPO)
    assert revision, "the tests run from a git checkout"
    assert f"(revision: {revision})" in result.stdout
    assert "build date:" in result.stdout
    stamped = tmp_path / "BUILD_INFO"
    stamped.write_text('{"revision": "0123abc", "build_date": "2026-01-02T03:04:05Z"}')
    assert read_build_file(stamped) == ("0123abc", "2026-01-02T03:04:05Z")
    assert read_build_file(tmp_path / "missing") is None
    text = BuildInfo("1.2.3", "0123abc", "2026-01-02T03:04:05Z", "3.11.9").describe("x")
    assert "version 1.2.3 (revision: 0123abc)" in text and "2026-01-02T03:04:05Z" in text


# --- signals and the embedded server ------------------------------------------------------------


def _postmaster_running(pg_dir: Path) -> bool:
    return (pg_dir / "data" / "postmaster.pid").exists()


def test_sighup_does_not_kill_and_sigterm_stops_the_embedded_server(tmp_path: Path) -> None:
    exporter = start_exporter(tmp_path, config_yaml=exporter_config())
    assert exporter.embedded_db_dir is not None
    pg_dir = exporter.embedded_db_dir
    try:
        exporter.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "configuration reloaded" in exporter.log_text(100_000),
                   what="the reload logged", on_timeout=exporter.fail)  # fmt: skip
        assert exporter.alive()
        assert http_request(f"{exporter.url}/-/ready")[0] == 200
        assert _postmaster_running(pg_dir)
        exporter.process.send_signal(signal.SIGTERM)
        exporter.process.wait(30)
        assert exporter.process.returncode == 0, exporter.log_text()
        assert not _postmaster_running(pg_dir), exporter.log_text()
    finally:
        exporter.stop()


def test_sigterm_during_start_up_stops_the_embedded_server(tmp_path: Path) -> None:
    """A stop while PostgreSQL starts or migrations run: the server is stopped all the same."""
    exporter = start_exporter(tmp_path, config_yaml=exporter_config(), wait=None)
    assert exporter.embedded_db_dir is not None
    pg_dir = exporter.embedded_db_dir
    try:
        wait_until(lambda: _postmaster_running(pg_dir), what="postmaster.pid",
                   interval=0.02, on_timeout=exporter.fail)  # fmt: skip
        exporter.process.send_signal(signal.SIGHUP)  # ignored this early, not fatal
        exporter.process.send_signal(signal.SIGTERM)
        exporter.process.wait(60)
        assert exporter.process.returncode in (0, 128 + signal.SIGTERM), exporter.log_text()
        assert not _postmaster_running(pg_dir), exporter.log_text()
    finally:
        exporter.stop()


def test_sigkill_of_the_exporter_still_stops_the_embedded_server(tmp_path: Path) -> None:
    """No handler runs on SIGKILL (or a crash): the watchdog sees the process gone."""
    exporter = start_exporter(tmp_path, config_yaml=exporter_config())
    assert exporter.embedded_db_dir is not None
    pg_dir = exporter.embedded_db_dir
    try:
        assert _postmaster_running(pg_dir)
        exporter.process.send_signal(signal.SIGKILL)
        exporter.process.wait(30)
        wait_until(lambda: not _postmaster_running(pg_dir), timeout=60,
                   what="the embedded server stopped", on_timeout=exporter.fail)  # fmt: skip
    finally:
        exporter.stop()


# --- connection limits ------------------------------------------------------------------------


def _open_idle(port: int, count: int) -> list[socket.socket]:
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sockets.append(sock)
    return sockets


def _closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(0.01)
    try:
        return sock.recv(4096) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def test_idle_and_slow_loris_connections_do_not_starve_metrics(
    tmp_path: Path, database: Connection
) -> None:
    exporter = start_exporter(
        tmp_path, database_url=database.dsn, config_yaml=exporter_config(),
        args=["--web.max-connections=30", "--web.read-header-timeout=2s", "--web.idle-timeout=30s"],
    )  # fmt: skip
    port = int(exporter.url.rsplit(":", 1)[1])
    idle: list[socket.socket] = []
    slow: list[socket.socket] = []
    try:
        # 3x the limit in idle connections, and slow-loris clients that never finish headers.
        idle = _open_idle(port, 90)
        slow = _open_idle(port, 10)
        for sock in slow:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        for _ in range(5):
            started = time.monotonic()
            status, text = http_request(f"{exporter.url}/metrics", timeout=5)
            assert status == 200 and "liquid_abt_db_up" in text
            assert time.monotonic() - started < 5
            for sock in slow:  # keep trickling header bytes
                if not _closed_by_server(sock):
                    sock.sendall(b"X-Slow: 1\r\n")
        # Every slow-loris client is cut off within the header timeout (plus scheduling slack).
        wait_until(lambda: all(_closed_by_server(s) for s in slow), timeout=10,
                   what="slow-loris connections closed", on_timeout=exporter.fail)  # fmt: skip
        assert exporter.alive()
        log = exporter.log_text(1_000_000)
        # Once per burst, not once per connection.
        assert log.count('connection limit reached: closing the longest-idle connections"') <= 1, (
            log
        )
    finally:
        for sock in idle + slow:
            sock.close()
        assert exporter.stop() == 0, exporter.log_text()


async def test_accept_errors_are_logged_once_per_burst(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.get_running_loop()
    handler = LoopErrors(quiet=0.2)
    error = OSError(24, "Too many open files")
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        for _ in range(1000):
            handler(loop, {"message": "socket.accept() out of system resource", "exception": error})
        await asyncio.sleep(0.5)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [LoopErrors.MESSAGE, f"{LoopErrors.MESSAGE}: burst over"], messages
    assert caplog.records[1].events == 1000  # type: ignore[attr-defined]


# --- the embedded server as root in a private folder ------------------------------------------


async def test_embedded_server_works_from_a_private_folder() -> None:
    """A clone in root's home or a `mktemp -d` folder: 0700, unreachable for the server's user."""
    private = Path(tempfile.mkdtemp(prefix="liquid-abt-private-"))  # 0700, like `mktemp -d`
    try:
        # The wheel's layout: <package>/<install>/bin, libraries in <package>.libs beside it.
        install = find_bin_dir().parent
        package = install.parent
        shutil.copytree(install, private / package.name / install.name, symlinks=True)
        libs = package.parent / f"{package.name}.libs"
        if libs.is_dir():
            shutil.copytree(libs, private / libs.name, symlinks=True)
        os.environ["PG_BIN_DIR"] = str(private / package.name / install.name / "bin")
        try:
            server = EmbeddedPostgres(private / "pg")
        finally:
            del os.environ["PG_BIN_DIR"]
        server.start()
        try:
            conn = await asyncpg.connect(server.dsn)
            assert await conn.fetchval("SELECT 1") == 1
            await conn.close()
            if os.geteuid() == 0:  # moved where the postgres user can reach them
                assert private not in server.data_dir.parents
                assert private not in server.bin_dir.parents
        finally:
            server.stop()
        assert not (server.data_dir / "postmaster.pid").exists()
        if private not in server.run_dir.parents:
            shutil.rmtree(server.run_dir, ignore_errors=True)
    finally:
        shutil.rmtree(private, ignore_errors=True)
