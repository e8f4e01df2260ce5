"""`--web.config.file` against the running exporter: TLS with a real client, basic auth with
bcrypt hashes, headers, a second listener, the telemetry path, and reloading it all."""

from __future__ import annotations

import base64
import http.client
import json
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import pytest
import trustme
import yaml

from exporter.database.embedded import free_port
from exporter.database.pool import Connection
from exporter.web.webconfig import WebConfigError, load_web_config
from tests.harness import ExporterProcess, exporter_config, start_exporter, wait_until

ADMIN_TOKEN = "admin-token-for-tests"
WEBHOOK_TOKEN = "webhook-token-for-tests"
ENV = {"LIQUID_ABT_ADMIN_TOKEN": ADMIN_TOKEN, "LIQUID_ABT_WEBHOOK_TOKEN": WEBHOOK_TOKEN}


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def hashed(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: str
    peer_names: list[str]


def request(
    port: int,
    path: str,
    *,
    context: ssl.SSLContext | None,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> Answer:
    """One request over TLS (or plain HTTP without a context); the server certificate's names."""
    if context is None:
        conn: http.client.HTTPConnection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        names: list[str] = []
        if context is not None:
            cert = conn.sock.getpeercert()  # type: ignore[union-attr]
            names = [value for _, value in cert.get("subjectAltName", ())]
        return Answer(response.status, dict(response.getheaders()), response.read().decode(), names)
    finally:
        conn.close()


@dataclass
class TLSExporter:
    process: ExporterProcess
    port: int
    admin_port: int | None
    web_config: Path
    config: Path
    ca: trustme.CA
    folder: Path

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context

    def get(self, path: str, port: int | None = None, **kwargs: object) -> Answer:
        return request(port or self.port, path, context=self.client_context(), **kwargs)  # type: ignore[arg-type]

    def write_web_config(self, name: str, users: dict[str, str], tls: bool = True) -> None:
        """A web config whose certificate carries `name` (besides 127.0.0.1)."""
        cert = self.ca.issue_cert("127.0.0.1", name)
        cert.cert_chain_pems[0].write_to_path(str(self.folder / f"{name}.crt"))
        cert.private_key_pem.write_to_path(str(self.folder / f"{name}.key"))
        document: dict[str, object] = {
            "basic_auth_users": {user: hashed(password) for user, password in users.items()},
            "http_server_config": {"headers": {"X-Frame-Options": "deny"}},
        }
        if tls:
            # Relative paths are relative to the web config file, as in exporter-toolkit.
            document["tls_server_config"] = {"cert_file": f"{name}.crt", "key_file": f"{name}.key"}
        self.web_config.write_text(yaml.safe_dump(document))

    def wait_serving(self) -> None:
        def serving() -> bool:
            if not self.process.alive():
                self.process.fail("exporter exited")
            return self.get("/-/healthy").status in (200, 401)

        wait_until(serving, what="TLS listener answering", on_timeout=self.process.fail)


def _start(
    tmp_path: Path, database: Connection, *, admin_listener: bool = False, args: tuple = ()
) -> TLSExporter:
    folder = tmp_path / "web"
    folder.mkdir()
    config = folder / "config.yml"
    config.write_text(exporter_config())
    admin_port = free_port() if admin_listener else None
    exporter = TLSExporter(None, 0, admin_port, folder / "web.yml", config, trustme.CA(), folder)  # type: ignore[arg-type]
    exporter.write_web_config("first.example", {"alice": "right-password"})
    extra = [f"--web.config.file={exporter.web_config}", *args]
    if admin_port:
        extra.append(f"--web.admin-listen-address=127.0.0.1:{admin_port}")
    exporter.process = start_exporter(
        tmp_path, database_url=database.dsn, config_file=config, env=ENV, args=extra, wait=None
    )
    exporter.port = int(exporter.process.url.rsplit(":", 1)[1])
    exporter.wait_serving()
    return exporter


@pytest.fixture
def tls_exporter(tmp_path: Path, database: Connection) -> Iterator[TLSExporter]:
    exporter = _start(tmp_path, database)
    yield exporter
    assert exporter.process.stop() == 0, exporter.process.log_text()


def test_every_endpoint_needs_the_right_password_over_tls(tls_exporter: TLSExporter) -> None:
    alice = basic("alice", "right-password")
    answer = tls_exporter.get("/metrics", headers=alice)
    assert answer.status == 200, answer.body
    assert "liquid_abt_db_up 1.0" in answer.body
    assert answer.headers["X-Frame-Options"] == "deny"
    assert "first.example" in answer.peer_names
    for path in ("/metrics", "/-/healthy", "/-/ready", "/"):
        for headers in ({}, basic("alice", "wrong"), basic("mallory", "right-password")):
            refused = tls_exporter.get(path, headers=headers)
            assert refused.status == 401, (path, headers, refused.body)
            assert refused.headers["WWW-Authenticate"] == 'Basic realm="liquid-abt-exporter"'
    assert tls_exporter.get("/-/reload", method="POST").status == 401


def test_the_admin_api_and_webhook_keep_their_own_credentials_under_basic_auth(
    tls_exporter: TLSExporter,
) -> None:
    bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert tls_exporter.get("/api/admin/circuit-breaker/status", headers=bearer).status == 200
    # The metrics password is no admin credential.
    alice = basic("alice", "right-password")
    assert tls_exporter.get("/api/admin/circuit-breaker/status", headers=alice).status == 401
    webhook = tls_exporter.get("/webhook/alertmanager", method="POST", headers=alice, body=b"{}")
    assert webhook.status == 401


def test_plain_http_and_untrusted_clients_get_nothing(tls_exporter: TLSExporter) -> None:
    with pytest.raises((OSError, http.client.HTTPException)):
        request(tls_exporter.port, "/metrics", context=None)
    untrusted = ssl.create_default_context()  # does not know the test CA
    with pytest.raises(ssl.SSLCertVerificationError):
        request(tls_exporter.port, "/metrics", context=untrusted)


def test_healthcheck_command_follows_tls_and_the_listen_address(tls_exporter: TLSExporter) -> None:
    def healthcheck(address: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "exporter", "healthcheck",
             f"--web.listen-address={address}", f"--web.config.file={tls_exporter.web_config}"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip

    assert healthcheck(f"127.0.0.1:{tls_exporter.port}").returncode == 0
    # ":port" (every interface) is checked on the loopback address.
    assert healthcheck(f":{tls_exporter.port}").returncode == 0
    dead = healthcheck(f"127.0.0.1:{free_port()}")
    assert dead.returncode == 1 and "unhealthy" in dead.stderr


def test_operator_cli_trusts_a_private_ca_only_when_told(tls_exporter: TLSExporter) -> None:
    def admin(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "exporter", "admin", "status", "--json",
             f"--exporter.url=https://127.0.0.1:{tls_exporter.port}", *args],
            capture_output=True, text=True, timeout=60,
            env={"PATH": "/usr/bin:/bin", "LIQUID_ABT_ADMIN_TOKEN": ADMIN_TOKEN},
        )  # fmt: skip

    untrusted = admin()
    assert untrusted.returncode == 1
    assert "does not trust" in untrusted.stderr and "--exporter.ca-file" in untrusted.stderr
    assert len(untrusted.stderr.strip().splitlines()) == 1, untrusted.stderr

    ca_file = tls_exporter.folder / "ca.pem"
    tls_exporter.ca.cert_pem.write_to_path(str(ca_file))
    trusted = admin(f"--exporter.ca-file={ca_file}")
    assert trusted.returncode == 0, trusted.stderr
    assert json.loads(trusted.stdout)["exchanges"], trusted.stdout

    missing = admin(f"--exporter.ca-file={tls_exporter.folder / 'nowhere.pem'}")
    assert missing.returncode == 1 and "nowhere.pem" in missing.stderr, missing.stderr


def _metric(exporter: TLSExporter, name: str, user: tuple[str, str]) -> float:
    text = exporter.get("/metrics", headers=basic(*user)).body
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_sighup_reloads_certificates_and_users(tls_exporter: TLSExporter) -> None:
    tls_exporter.write_web_config("second.example", {"bob": "new-password"})
    tls_exporter.process.process.send_signal(signal.SIGHUP)
    wait_until(
        lambda: "second.example" in tls_exporter.get("/-/healthy").peer_names,
        what="the new certificate served", on_timeout=tls_exporter.process.fail,
    )  # fmt: skip
    assert tls_exporter.process.alive()
    assert tls_exporter.get("/metrics", headers=basic("alice", "right-password")).status == 401
    assert tls_exporter.get("/metrics", headers=basic("bob", "new-password")).status == 200
    bob = ("bob", "new-password")
    assert _metric(tls_exporter, "liquid_abt_config_last_reload_successful", bob) == 1.0


def test_post_reload_refuses_what_needs_a_restart_and_keeps_serving(
    tls_exporter: TLSExporter,
) -> None:
    alice = basic("alice", "right-password")
    # A main-config change: named, refused, the running values kept.
    tls_exporter.config.write_text(exporter_config(interval="7s"))
    answer = tls_exporter.get("/-/reload", method="POST", headers=alice)
    assert answer.status == 409, answer.body
    problems = json.loads(answer.body)["problems"]
    assert any("collectors.interval" in p and "restart" in p for p in problems), problems
    assert (
        _metric(
            tls_exporter, "liquid_abt_config_last_reload_successful", ("alice", "right-password")
        )
        == 0.0
    )
    assert "configuration change needs a restart" in tls_exporter.process.log_text(100_000)
    # Switching TLS off: refused, TLS stays; the new users apply all the same.
    tls_exporter.config.write_text(exporter_config())
    tls_exporter.write_web_config("third.example", {"carol": "pw3"}, tls=False)
    answer = tls_exporter.get("/-/reload", method="POST", headers=alice)
    assert answer.status == 409 and "switching TLS off needs a restart" in answer.body, answer.body
    assert tls_exporter.get("/metrics", headers=basic("carol", "pw3")).status == 200
    # A broken file: refused whole, the running users kept.
    tls_exporter.web_config.write_text("basic_auth_users: {dave: not-a-hash}\n")
    answer = tls_exporter.get("/-/reload", method="POST", headers=basic("carol", "pw3"))
    assert answer.status == 409 and "not a bcrypt hash" in answer.body, answer.body
    assert tls_exporter.get("/metrics", headers=basic("carol", "pw3")).status == 200
    # Fixed again: success.
    tls_exporter.write_web_config("first.example", {"alice": "right-password"})
    assert tls_exporter.get("/-/reload", method="POST", headers=basic("carol", "pw3")).status == 200
    assert (
        _metric(
            tls_exporter, "liquid_abt_config_last_reload_successful", ("alice", "right-password")
        )
        == 1.0
    )
    assert tls_exporter.process.alive()


def test_admin_listener_and_telemetry_path(tmp_path: Path, database: Connection) -> None:
    exporter = _start(
        tmp_path, database, admin_listener=True, args=("--web.telemetry-path=/stats",)
    )
    try:
        alice = basic("alice", "right-password")
        bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        admin = exporter.admin_port
        stats = exporter.get("/stats", headers=alice)
        assert stats.status == 200
        for family in ("process_cpu_seconds_total", "process_open_fds", "python_info",
                       "python_gc_collections_total", "liquid_abt_build_info"):  # fmt: skip
            assert family in stats.body, family
        assert exporter.get("/metrics", headers=alice).status == 404
        # The admin API, the webhook and reload only on the admin listener (TLS there too).
        assert exporter.get("/api/admin/circuit-breaker/status", headers=bearer).status == 404
        answer = exporter.get("/api/admin/circuit-breaker/status", port=admin, headers=bearer)
        assert answer.status == 200, answer.body
        assert exporter.get("/-/reload", method="POST", headers=alice).status == 404
        assert exporter.get("/-/reload", port=admin, method="POST", headers=alice).status == 200
        assert exporter.get("/stats", port=admin, headers=alice).status == 404
        assert exporter.get("/-/healthy", port=admin, headers=alice).status == 200
    finally:
        assert exporter.process.stop() == 0, exporter.process.log_text()


# --- files that cannot be used: exact errors, one line, and a reload that says so ------------

TESTDATA = Path(__file__).parent / "testdata"
WEB_ERRORS = {
    "web-invalid-bcrypt.yml": (
        "invalid web config: basic_auth_users: the password of 'prom' is not a bcrypt hash: "
        "expected $2a$, $2b$ or $2y$, a two-digit cost from 04 to 31, $ and 53 characters of "
        "salt and hash (./A-Za-z0-9), 60 characters in all (got 10)"
    ),
    "web-invalid-not-utf8.yml": (
        "not UTF-8: byte 0xe9 at position 24 (line 2, column 4); save the file as UTF-8"
    ),
}


@pytest.mark.parametrize(("name", "expected"), sorted(WEB_ERRORS.items()))
def test_an_unusable_web_config_is_named_by_check_config_and_serve(
    name: str, expected: str
) -> None:
    path = TESTDATA / name
    with pytest.raises(WebConfigError) as error:
        load_web_config(path)
    assert str(error.value) == f"{path}: {expected}"
    for command in (["check-config"], ["serve", f"--web.listen-address=127.0.0.1:{free_port()}"]):
        result = subprocess.run(
            [sys.executable, "-m", "exporter", *command, f"--web.config.file={path}"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 1, result.stderr
        assert result.stderr == f"error: --web.config.file: {path}: {expected}\n", result.stderr


def test_a_secret_file_that_is_not_utf8_is_named_by_its_variable() -> None:
    path = TESTDATA / "secret-not-utf8.txt"
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "serve", f"--web.listen-address=127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "DATABASE_URL": f"postgresql://app@127.0.0.1:{free_port()}/x",
             "LIQUID_ABT_WEBHOOK_TOKEN_FILE": str(path)},
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    expected = f"LIQUID_ABT_WEBHOOK_TOKEN_FILE={path}: not UTF-8: byte 0xe9 at position 6"
    assert result.stderr.splitlines()[-1] == f"error: {expected}", result.stderr
    assert "Traceback" not in result.stderr


def test_reload_of_a_file_that_is_not_utf8_is_refused_cleanly(tls_exporter: TLSExporter) -> None:
    alice = basic("alice", "right-password")
    tls_exporter.config.write_bytes((TESTDATA / "invalid-not-utf8.yml").read_bytes())
    answer = tls_exporter.get("/-/reload", method="POST", headers=alice)
    assert answer.status == 409, answer.body
    assert json.loads(answer.body)["problems"] == [
        f"{tls_exporter.config}: not UTF-8: byte 0xe9 at position 25 (line 2, column 6); save "
        "the file as UTF-8"
    ]
    assert _metric(tls_exporter, "liquid_abt_config_last_reload_successful",
                   ("alice", "right-password")) == 0.0  # fmt: skip
    # SIGHUP: one error line, no task exception, the gauge stays 0 (a success would set 1).
    tls_exporter.config.write_text(exporter_config())
    assert tls_exporter.get("/-/reload", method="POST", headers=alice).status == 200
    tls_exporter.web_config.write_bytes((TESTDATA / "web-invalid-not-utf8.yml").read_bytes())
    tls_exporter.process.process.send_signal(signal.SIGHUP)
    wait_until(
        lambda: _metric(tls_exporter, "liquid_abt_config_last_reload_successful",
                        ("alice", "right-password")) == 0.0,
        what="the SIGHUP reload refused", on_timeout=tls_exporter.process.fail,
    )  # fmt: skip
    log = tls_exporter.process.log_text(1_000_000)
    assert "Traceback" not in log and "never retrieved" not in log, log
    refused = [line for line in log.splitlines() if "reload refused: invalid web config" in line]
    assert len(refused) == 1 and "not UTF-8: byte 0xe9 at position 24" in refused[0], log
    assert tls_exporter.process.alive()


def test_reload_with_a_malformed_bcrypt_hash_is_refused(tls_exporter: TLSExporter) -> None:
    tls_exporter.web_config.write_text((TESTDATA / "web-invalid-bcrypt.yml").read_text())
    answer = tls_exporter.get("/-/reload", method="POST", headers=basic("alice", "right-password"))
    assert answer.status == 409, answer.body
    assert f"{tls_exporter.web_config}: {WEB_ERRORS['web-invalid-bcrypt.yml']}" in answer.body
    assert tls_exporter.get("/metrics", headers=basic("alice", "right-password")).status == 200
