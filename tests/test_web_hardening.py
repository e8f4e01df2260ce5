"""The exporter under attack on a real listener: floods of wrong passwords, TLS connections that
never handshake under a low open-files limit, slow bodies, corrupt gzip bodies, unparsable
requests, and who may POST /-/reload (issue 20). The floods run as a separate process
(`bench/http_floods.py`, which also measures them); the assertions are on the real scraper's
success, not on latency, which a busy machine decides."""

from __future__ import annotations

import base64
import importlib.util
import json
import resource
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import bcrypt
import pytest
import trustme
import yaml
from aiohttp.test_utils import TestClient

from exporter.cli import _fit_open_files
from exporter.config import parse_config
from exporter.database.pool import Connection
from exporter.secrets import Secrets
from exporter.web.app import create_app
from exporter.web.server import Limits
from tests.harness import REPO, ExporterProcess, exporter_config, start_exporter, wait_until

WEBHOOK_TOKEN = "webhook-token-for-tests"
ADMIN_TOKEN = "admin-token-for-tests"


def _load_floods() -> ModuleType:
    spec = importlib.util.spec_from_file_location("http_floods", REPO / "bench/http_floods.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


floods = _load_floods()


@pytest.fixture
def flood_processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(30)


def _port(exporter: ExporterProcess) -> int:
    return int(exporter.url.rsplit(":", 1)[1])


def _scrape_all(scraper: object, count: int) -> list[str]:
    """`count` scrapes kept alive and `count` on new connections; the failures, by mode."""
    failures = []
    for index in range(count):
        for keep_alive in (True, False):
            if scraper.scrape(keep_alive=keep_alive) is None:  # type: ignore[attr-defined]
                why = scraper.errors[-1]  # type: ignore[attr-defined]
                failures.append(f"scrape {index} ({'kept alive' if keep_alive else 'new'}): {why}")
    return failures


def _web_config(folder: Path, password: str, *, rounds: int, tls: bool) -> tuple[Path, object]:
    folder.mkdir(parents=True, exist_ok=True)
    users = {"prom": bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds)).decode()}
    document: dict[str, object] = {"basic_auth_users": users}
    context = None
    if tls:
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1")
        cert.cert_chain_pems[0].write_to_path(str(folder / "tls.crt"))
        cert.private_key_pem.write_to_path(str(folder / "tls.key"))
        document["tls_server_config"] = {"cert_file": "tls.crt", "key_file": "tls.key"}
        context = ssl.create_default_context()
        ca.configure_trust(context)
    path = folder / "web.yml"
    path.write_text(yaml.safe_dump(document))
    return path, context


def _auth(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _clean_log(exporter: ExporterProcess) -> str:
    log = exporter.log_text(5_000_000)
    assert "Traceback" not in log and "Unhandled exception" not in log, log[-5000:]
    return log


# --- 1: wrong passwords -----------------------------------------------------------------------


def test_a_wrong_password_flood_does_not_starve_the_real_scraper(
    tmp_path: Path, database: Connection, flood_processes: list[subprocess.Popen[str]]
) -> None:
    """Refused attempts are remembered (no bcrypt per request), and a refused connection makes
    room before the scraper's: 250 looping clients, room for 100 connections."""
    web_config, _ = _web_config(tmp_path / "web", "right", rounds=10, tls=False)
    exporter = start_exporter(
        tmp_path, database_url=database.dsn, config_yaml=exporter_config(), wait=None,
        args=[f"--web.config.file={web_config}", "--web.max-connections=100"],
    )  # fmt: skip
    try:
        scraper = floods.Scraper(_port(exporter), _auth("prom", "right"), None)
        wait_until(lambda: scraper.scrape(keep_alive=True) is not None, what="first scrape",
                   on_timeout=exporter.fail)  # fmt: skip
        flood = floods.start_flood("wrong-password", _port(exporter), 250, user="prom",
                                   password="wrong")  # fmt: skip
        flood_processes.append(flood)
        # The scrapes start once the flood holds every connection: on a busy machine the
        # exporter may take longer to accept 250 clients than the scrapes take.
        wait_until(lambda: "connection limit reached" in exporter.log_text(5_000_000),
                   what="the flood to reach the connection limit", on_timeout=exporter.fail)  # fmt: skip
        assert _scrape_all(scraper, 15) == []
        tally = floods.stop_flood(flood)
        # The flood did flood: more clients than room, refused (503) or answered 401.
        assert tally["connections"] >= 250 and tally.get("503", 0) + tally.get("401", 0), tally
        _clean_log(exporter)
    finally:
        assert exporter.stop() == 0, exporter.log_text()


# --- 2: TLS connections that never handshake --------------------------------------------------


def test_tls_connections_that_never_handshake_are_bounded(
    tmp_path: Path, database: Connection
) -> None:
    """300 TCP connections that never send a ClientHello, with 256 open files allowed: they
    count against --web.max-connections from the accept, and /metrics over TLS answers."""
    web_config, context = _web_config(tmp_path / "web", "right", rounds=4, tls=True)
    exporter = start_exporter(
        tmp_path, database_url=database.dsn, config_yaml=exporter_config(), wait=None,
        args=[f"--web.config.file={web_config}", "--web.max-connections=150",
              "--web.read-header-timeout=60s"],  # only the limit can save the scraper here
    )  # fmt: skip
    idle: list[socket.socket] = []
    try:
        resource.prlimit(exporter.process.pid, resource.RLIMIT_NOFILE, (256, 256))
        scraper = floods.Scraper(_port(exporter), _auth("prom", "right"), context)
        wait_until(lambda: scraper.scrape(keep_alive=True) is not None, what="first TLS scrape",
                   on_timeout=exporter.fail)  # fmt: skip
        assert resource.prlimit(exporter.process.pid, resource.RLIMIT_NOFILE) == (256, 256)
        for _ in range(300):
            idle.append(socket.create_connection(("127.0.0.1", _port(exporter)), timeout=10))
        assert _scrape_all(scraper, 10) == []
        open_fds = len(list(Path(f"/proc/{exporter.process.pid}/fd").iterdir()))
        assert open_fds < 256, open_fds
        log = _clean_log(exporter)
        assert "cannot accept connections" not in log
    finally:
        for sock in idle:
            sock.close()
        assert exporter.stop() == 0, exporter.log_text()


def test_the_connection_limit_fits_the_open_files_limit() -> None:
    assert _fit_open_files(Limits(max_connections=512), 1024).max_connections == 512
    assert _fit_open_files(Limits(max_connections=512), 256).max_connections == 128


# --- 6: slow bodies ---------------------------------------------------------------------------


def test_slow_bodies_do_not_hold_every_connection(
    tmp_path: Path, database: Connection, flood_processes: list[subprocess.Popen[str]]
) -> None:
    """80 webhook requests (right token) whose 1 MB body arrives a byte a second, room for 40
    connections, a body timeout too long to help: a body still arriving makes room."""
    exporter = start_exporter(
        tmp_path, database_url=database.dsn, config_yaml=exporter_config(),
        env={"LIQUID_ABT_WEBHOOK_TOKEN": WEBHOOK_TOKEN},
        args=["--web.max-connections=40", "--web.read-body-timeout=120s"],
    )  # fmt: skip
    try:
        scraper = floods.Scraper(_port(exporter), {}, None)
        flood = floods.start_flood("slow-body", _port(exporter), 80, token=WEBHOOK_TOKEN)
        flood_processes.append(flood)
        wait_until(lambda: "connection limit reached" in exporter.log_text(1_000_000),
                   what="the slow bodies filling every slot", on_timeout=exporter.fail)  # fmt: skip
        assert _scrape_all(scraper, 10) == []
        floods.stop_flood(flood)
        _clean_log(exporter)
    finally:
        assert exporter.stop() == 0, exporter.log_text()


def test_a_body_that_does_not_arrive_in_time_is_cut_off(
    tmp_path: Path, database: Connection
) -> None:
    exporter = start_exporter(
        tmp_path, database_url=database.dsn, config_yaml=exporter_config(),
        env={"LIQUID_ABT_WEBHOOK_TOKEN": WEBHOOK_TOKEN}, args=["--web.read-body-timeout=1s"],
    )  # fmt: skip
    try:
        with socket.create_connection(("127.0.0.1", _port(exporter)), timeout=30) as sock:
            sock.sendall(
                b"POST /webhook/alertmanager HTTP/1.1\r\nHost: x\r\n"
                b"Authorization: Bearer " + WEBHOOK_TOKEN.encode() + b"\r\n"
                b"Content-Length: 1000\r\n\r\n{"
            )
            assert _read_until_closed(sock) == b""  # closed, nothing answered
        log = _clean_log(exporter)
        assert "closing connections that sent no complete request body in time" in log
    finally:
        assert exporter.stop() == 0, exporter.log_text()


# --- 3 and 7: corrupt bodies, unparsable requests, /-/reload ----------------------------------


def _read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


GARBAGE_GZIP = b"\x1f\x8b\x08\x00garbage" + b"x" * 49


def test_a_corrupt_gzip_body_gets_400_and_a_closed_connection(
    tmp_path: Path, database: Connection
) -> None:
    exporter = start_exporter(
        tmp_path, database_url=database.dsn, config_yaml=exporter_config(),
        env={"LIQUID_ABT_WEBHOOK_TOKEN": WEBHOOK_TOKEN},
    )  # fmt: skip
    try:
        for method, path, auth in [("GET", "/metrics", b""), ("POST", "/webhook/alertmanager",
                                   b"Authorization: Bearer " + WEBHOOK_TOKEN.encode() + b"\r\n")]:  # fmt: skip
            with socket.create_connection(("127.0.0.1", _port(exporter)), timeout=30) as sock:
                sock.sendall(
                    f"{method} {path} HTTP/1.1\r\nHost: x\r\n".encode() + auth
                    + b"Content-Encoding: gzip\r\nContent-Length: 60\r\n\r\n" + GARBAGE_GZIP
                )  # fmt: skip
                answer = _read_until_closed(sock)
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 400 "), answer
            assert b"\r\nConnection: close\r\n" in head + b"\r\n", answer
            assert json.loads(body)["status"] == "invalid", answer
            # The client's next request goes on a new connection, and is answered.
            assert floods.Scraper(_port(exporter), {}, None).scrape(keep_alive=False) is not None
        log = _clean_log(exporter)
        warnings = [line for line in log.splitlines() if "cannot be decoded" in line]
        assert len(warnings) == 1, warnings  # once per burst, not once per request
    finally:
        assert exporter.stop() == 0, exporter.log_text()


def test_an_unparsable_request_is_not_echoed_back(tmp_path: Path, database: Connection) -> None:
    exporter = start_exporter(tmp_path, database_url=database.dsn, config_yaml=exporter_config())
    try:
        secret = b"Bearer tok-SECRET-123"
        for request in [
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: " + secret + b"\x00\r\n\r\n",
            b"GET /metrics?" + secret + b" \x01HTTP/1.1\r\nHost: x\r\n\r\n",
        ]:
            with socket.create_connection(("127.0.0.1", _port(exporter)), timeout=30) as sock:
                sock.sendall(request)
                answer = _read_until_closed(sock)
            assert answer.startswith((b"HTTP/1.0 400 ", b"HTTP/1.1 400 ")), answer
            assert b"SECRET" not in answer, answer
            assert answer.endswith(b"\r\n\r\n400 Bad Request\n"), answer
        assert "SECRET" not in exporter.log_text(1_000_000)
    finally:
        assert exporter.stop() == 0, exporter.log_text()


RELOAD_CONFIG = parse_config({"kraken": {"enabled": False}})


@pytest.mark.parametrize(
    ("token", "headers", "status"),
    [
        (ADMIN_TOKEN, {}, 401),
        (ADMIN_TOKEN, {"Authorization": "Bearer wrong"}, 401),
        (ADMIN_TOKEN, {"Authorization": f"Bearer {ADMIN_TOKEN}"}, 200),
        (None, {}, 403),
        (None, {"Authorization": "Bearer anything"}, 403),
    ],
)
async def test_reload_without_basic_auth_needs_the_admin_token(
    aiohttp_client: object, database: Connection, token: str | None, headers: dict, status: int
) -> None:
    app = create_app(RELOAD_CONFIG, database, Secrets(admin_token=token))
    client: TestClient = await aiohttp_client(app)  # type: ignore[operator]
    response = await client.post("/-/reload", headers=headers)
    assert response.status == status, await response.text()
    if status == 403:
        assert "LIQUID_ABT_ADMIN_TOKEN" in (await response.json())["message"]
