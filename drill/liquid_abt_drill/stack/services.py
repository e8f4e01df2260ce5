"""The project's own programs on free ports: PostgreSQL, the Kraken-compatible server, the exporter
and the traffic simulator, each started through the command line as a user would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import yaml

from exporter.database.embedded import EmbeddedPostgres, free_port

from .process import (
    DEFAULT_TIMEOUT,
    ManagedProcess,
    claim_name,
    drill_command,
    exporter_command,
    http_request,
    python_env,
)
from .waiting import wait_until


def searchable_tmp_dir(prefix: str) -> Path:
    """A new temporary folder PostgreSQL's unprivileged user can reach (needed when root)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


# --- PostgreSQL ------------------------------------------------------------------------------


class PostgresServer:
    """An embedded PostgreSQL in `<folder>/postgres/`, logging to `postgres/postgres.log` (a
    folder its own user can write to when started as root).

    Throwaway: its first start begins from an empty database, even when its files live under
    /var/tmp (as root, for a folder the server's user cannot reach), and leaving its `with`
    block leaves nothing there. `stop()` then `start()` is a restart: the data stays.
    """

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.server = EmbeddedPostgres(Path(folder) / "postgres", port)
        self.log_path = self.server.log_file
        self._started = False

    @property
    def dsn(self) -> str:
        return self.server.dsn

    def start(self) -> Self:
        if not self._started:  # a previous run's rows: "backfill skipped", stale pages
            self.server.discard()
            self._started = True
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.server.moved:
            self.server.discard()
        else:
            self.server.stop()  # its log stays in the folder, for whoever looks after a failure


def start_postgres(folder: Path, *, port: int | None = None) -> PostgresServer:
    """A started PostgreSQL (user `postgres`, trust auth on 127.0.0.1). As root, `folder` and
    its parents must be searchable by others (see `searchable_tmp_dir`)."""
    return PostgresServer(folder, port).start()


# --- The Kraken-compatible server ------------------------------------------------------------


class KrakenServerProcess(ManagedProcess):
    control_url = ""

    def set_mode(
        self, mode: str, latency: float | None = None, http_status: int | None = None
    ) -> dict[str, Any]:
        """Switch the failure mode (`healthy`, `down`, `slow`, `maintenance`, `rate_limited`...)."""
        body: dict[str, Any] = {"mode": mode}
        if latency is not None:
            body["latency"] = latency
        if http_status is not None:
            body["http_status"] = http_status
        status, text = http_request(f"{self.control_url}/_control/mode", body)
        if status != 200:
            self.fail(f"set_mode({mode!r}): HTTP {status}: {text}")
        return dict(json.loads(text))

    def mode(self) -> dict[str, Any]:
        return dict(json.loads(http_request(f"{self.control_url}/_control/mode")[1]))


def _keys_file(path: Path, keys: Mapping[str, str]) -> Path:
    """A `KEY SECRET` file only its owner can read."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.writelines(f"{key} {secret}\n" for key, secret in keys.items())
    return path


def start_kraken_server(
    folder: Path,
    *,
    mode: str = "healthy",
    latency: float | None = None,
    api_key: str | None = None,
    api_secret: str | None = None,
    keys: Mapping[str, str] | None = None,
    port: int | None = None,
    control_port: int | None = None,
    ready_timeout: float = DEFAULT_TIMEOUT,
) -> KrakenServerProcess:
    """`liquid-abt-drill kraken-server` with a control port of its own (reachable when down).

    With `api_key` and `api_secret` (base64), or `keys` (key -> secret, one per program, since
    nonces must increase per key), it checks the signature and the nonce of private calls.
    """
    name = claim_name(Path(folder), "kraken-server")
    port, control_port = port or free_port(), control_port or free_port()
    secrets = {"KRAKEN_API_KEY": api_key or "", "KRAKEN_API_SECRET": api_secret or ""}
    keys_flag = (
        [f"--api-keys-file={_keys_file(Path(folder) / f'{name}-api-keys', keys)}"] if keys else []
    )
    process = KrakenServerProcess(name, drill_command(
        "kraken-server", f"--listen=127.0.0.1:{port}",
        f"--control-listen=127.0.0.1:{control_port}", f"--mode={mode}",
        *([f"--latency={latency}"] if latency is not None else []), *keys_flag,
    ), Path(folder) / name, env=python_env(secrets), url=f"http://127.0.0.1:{port}")  # fmt: skip
    process.control_url = f"http://127.0.0.1:{control_port}"
    return process.ready_or_stop(
        lambda: process.wait_http("/_control/mode", timeout=ready_timeout, base=process.control_url)
    )


# --- The fake secondary exchanges (Independent Reserve, BTC Markets) -------------------------

# The fakes' modules (drill/liquid_abt_drill/exchanges/) by exchange name, as config names them.
SECONDARY_EXCHANGES = ("independentreserve", "btcmarkets")


class SecondaryExchangeProcess(KrakenServerProcess):
    """A fake secondary exchange: `set_mode` as Kraken's, and `set_market` for its prices and
    balances (`set_market(balances={"AUD": "100"})` leaves it short of AUD)."""

    exchange = ""

    def set_market(
        self,
        *,
        price: str | None = None,
        spike: str | None = None,
        balances: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"price": price, "spike": spike, "balances": balances}
        body = {key: value for key, value in body.items() if value is not None}
        status, text = http_request(f"{self.control_url}/_control/market", body)
        if status != 200:
            self.fail(f"set_market({body!r}): HTTP {status}: {text}")
        return dict(json.loads(text))

    def config_section(self, interval: str = "1s", **options: Any) -> dict[str, Any]:
        """Its section of the exporter's config: enabled, this URL, a fast probe."""
        return {
            "enabled": True, "base_url": self.url, "probe_interval": interval, "timeout": "2s",
            "verify_interval": interval, "call_spacing": "10ms", **options,
        }  # fmt: skip


def start_secondary_exchange(
    folder: Path,
    exchange: str = "independentreserve",
    *,
    mode: str = "healthy",
    api_key: str | None = None,
    api_secret: str | None = None,
    keys: Mapping[str, str] | None = None,
    port: int | None = None,
    control_port: int | None = None,
    ready_timeout: float = DEFAULT_TIMEOUT,
) -> SecondaryExchangeProcess:
    """`python -m liquid_abt_drill.exchanges.EXCHANGE` with a control port of its own (reachable
    when down). With `api_key` and `api_secret`, or `keys` (key -> secret, one per replica), it
    checks the signatures of private calls; give each exporter its pair (EXCHANGE_API_KEY /
    _SECRET, upper case)."""
    if exchange not in SECONDARY_EXCHANGES:
        raise ValueError(f"no fake of {exchange!r}: use one of {', '.join(SECONDARY_EXCHANGES)}")
    name = claim_name(Path(folder), exchange)
    port, control_port = port or free_port(), control_port or free_port()
    env = exchange.upper()
    secrets = {f"{env}_API_KEY": api_key or "", f"{env}_API_SECRET": api_secret or ""}
    command = [
        sys.executable, "-m", f"liquid_abt_drill.exchanges.{exchange}",
        f"--listen=127.0.0.1:{port}", f"--control-listen=127.0.0.1:{control_port}",
        f"--mode={mode}",
    ]  # fmt: skip
    if keys:
        command.append(f"--api-keys-file={_keys_file(Path(folder) / f'{name}-api-keys', keys)}")
    process = SecondaryExchangeProcess(
        name, command, Path(folder) / name, env=python_env(secrets),
        url=f"http://127.0.0.1:{port}",
    )  # fmt: skip
    process.exchange = exchange
    process.control_url = f"http://127.0.0.1:{control_port}"
    return process.ready_or_stop(
        lambda: process.wait_http("/_control/mode", timeout=ready_timeout, base=process.control_url)
    )


def failover_exchanges(
    primary: str = "kraken", secondaries: Sequence[str] = ("independentreserve",)
) -> dict[str, Any]:
    """The `exchanges` mapping of a failover config: one primary, its secondaries."""
    return {primary: {"role": "primary"}, **{name: {"role": "secondary"} for name in secondaries}}


# --- The exporter ----------------------------------------------------------------------------


class ExporterProcess(ManagedProcess):
    # Its own embedded PostgreSQL, when started without a database URL.
    embedded_db_dir: Path | None = None
    # Set by stop(): the embedded PostgreSQL outlived the exporter (a shutdown bug).
    embedded_db_left_running = False

    @property
    def target(self) -> str:
        """host:port, as a Prometheus scrape target."""
        return self.url.removeprefix("http://")

    def get(self, path: str, **kwargs: Any) -> tuple[int, str]:
        return http_request(f"{self.url}{path}", **kwargs)

    def metrics(self) -> str:
        status, text = self.get("/metrics")
        if status != 200:
            self.fail(f"/metrics answered {status}")
        return text

    def wait_for_metric(self, line: str, timeout: float = DEFAULT_TIMEOUT) -> str:
        """Poll /metrics until it contains `line`; returns that exposition."""
        text = ""

        def check() -> bool:
            nonlocal text
            text = self.metrics()
            return line in text

        wait_until(check, timeout=timeout, what=f"{line!r} in /metrics", on_timeout=self.fail)
        return text

    def stop(self) -> int:
        code = super().stop()
        if self.embedded_db_dir is not None and self.embedded_db_dir.exists():
            self.embedded_db_left_running = (self.embedded_db_dir / "data/postmaster.pid").exists()
            if self.embedded_db_left_running:  # do not leak a server into the next tests
                EmbeddedPostgres(self.embedded_db_dir).stop()
            shutil.rmtree(self.embedded_db_dir.parent, ignore_errors=True)
            self.embedded_db_dir = None
        return code


def start_exporter(
    folder: Path,
    *,
    database_url: str | None = None,
    config_yaml: str | None = None,
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    args: Sequence[str] = (),
    migrate: bool = False,
    port: int | None = None,
    wait: str | None = "/-/ready",
    ready_timeout: float = DEFAULT_TIMEOUT,
) -> ExporterProcess:
    """`liquid-abt-exporter serve` on a free port (or `port`), logging JSON.

    With `database_url` it uses that database (`migrate=True` adds `--migrate
    --with-platform-schema`); without one it starts its embedded PostgreSQL in a folder of its
    own. The config is `config_yaml` (written to `<workdir>/config.yml`) or `config_file`. `env` adds variables (secrets such as LIQUID_ABT_WEBHOOK_TOKEN). Waits
    until `wait` answers 200 (None: no wait).
    """
    name = claim_name(Path(folder), "exporter")
    workdir = Path(folder) / name
    if config_yaml is not None:
        config_file = workdir / "config.yml"
        config_file.write_text(config_yaml)
    port = port or free_port()
    command = exporter_command(
        "serve", f"--web.listen-address=127.0.0.1:{port}", "--log.format=json"
    )
    if config_file is not None:
        command.append(f"--config.file={config_file}")
    embedded: Path | None = None
    if database_url is None:
        embedded = searchable_tmp_dir("liquid-abt-exporter-pg-") / "pg"
        command += ["--embedded-db", f"--embedded-db.dir={embedded}"]
    elif migrate:
        command += ["--migrate", "--with-platform-schema"]
    extra = dict(env or {}) | ({"DATABASE_URL": database_url} if database_url else {})
    process = ExporterProcess(name, [*command, *args], workdir, url=f"http://127.0.0.1:{port}",
                              env=python_env(extra, drop=() if database_url else ("DATABASE_URL",)))  # fmt: skip
    process.embedded_db_dir = embedded
    if wait is None:
        return process
    return process.ready_or_stop(lambda: process.wait_http(wait, timeout=ready_timeout))


def exporter_config(kraken_url: str | None = None, *, interval: str = "1s", **sections: Any) -> str:
    """A config file for tests and the demo: fast collectors, a fast probe of `kraken_url` (or
    none). `sections` merges into top-level sections, e.g. `breaker={"failure_threshold": 3}`.
    """
    config: dict[str, Any] = {"collectors": {"interval": interval, "timeout": interval}}
    if kraken_url is None:
        config["kraken"] = {"enabled": False}
    else:
        config["kraken"] = {"base_url": kraken_url, "probe_interval": interval, "timeout": "2s"}
    for name, section in sections.items():
        config[name] = {**config.get(name, {}), **section}
    return yaml.safe_dump(config, sort_keys=False)


# --- The traffic simulator -------------------------------------------------------------------


def start_simulator(
    folder: Path, *, database_url: str, config_file: Path | None = None, args: Sequence[str] = ()
) -> ManagedProcess:
    """`liquid-abt-drill simulate ARGS` against `database_url`, running (not waited on)."""
    name = claim_name(Path(folder), "simulator")
    command = drill_command("simulate", *args)
    if config_file is not None:
        command.append(f"--config.file={config_file}")
    process = ManagedProcess(
        name, command, Path(folder) / name, env=python_env({"DATABASE_URL": database_url})
    )
    return process.ready_or_stop(lambda: _still_running(process))


def _still_running(process: ManagedProcess) -> None:
    # A bad flag or an unreachable database ends it at once: say so now, not at the first query.
    try:
        code = process.process.wait(0.5)
    except subprocess.TimeoutExpired:
        return  # running, as it should
    process.fail(f"{process.name} exited with {code}")
