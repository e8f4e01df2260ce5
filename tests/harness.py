"""Real processes for end-to-end tests: Prometheus, Alertmanager, the exporter, the fake Kraken.

Each `start_*` function returns a started, ready process object with `.url` and `.stop()`; the
objects are context managers, so a fixture is `with start_prometheus(...) as prometheus: yield
prometheus`. Ports are free ports on 127.0.0.1, state lives in the given folder, output goes to a
log file whose tail is part of every assertion message. Waiting is polling with a deadline.

Prometheus and Alertmanager are the Debian packages `prometheus` and `prometheus-alertmanager`;
a missing binary fails the test (it is never skipped).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, Self, TypeVar

import pytest
import yaml

from exporter.database.embedded import free_port

REPO = Path(__file__).resolve().parents[1]
RULE_FILES = sorted((REPO / "alerts").glob("*.rules.yml"))
EXPORTER_JOB = "liquid-abt-exporter"  # the job name the alert rules watch (alerts/README.md)
INSTALL_HINT = (
    "install the Debian packages `prometheus` and `prometheus-alertmanager` "
    "(apt-get install prometheus prometheus-alertmanager)"
)
DEFAULT_TIMEOUT = 60.0  # generous: a loaded 2-core CI machine starts these in seconds, not ms

T = TypeVar("T")


def require_binary(*names: str) -> str:
    """Path of the first of `names` found on PATH (or /usr/bin); fails the test otherwise."""
    for name in names:
        path = shutil.which(name) or (
            f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None
        )
        if path:
            return path
    pytest.fail(f"{' / '.join(names)} not found: {INSTALL_HINT}", pytrace=False)


def http_request(
    url: str,
    body: Any = None,
    *,
    method: str | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10,
) -> tuple[int, str]:
    """(status, body text) of one request; JSON-encodes `body`; HTTP errors are answers too."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def wait_until(
    condition: Callable[[], T],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    interval: float = 0.2,
    what: str = "condition",
    on_timeout: Callable[[str], NoReturn] | None = None,
) -> T:
    """Poll until `condition()` returns something truthy and return it; fail at the deadline.

    `condition` may raise OSError (a port not listening yet): that counts as not yet.
    """
    deadline = time.monotonic() + timeout
    last_error = ""
    while True:
        try:
            result = condition()
        except OSError as exc:
            result, last_error = None, f" (last error: {exc})"  # type: ignore[assignment]
        if result:
            return result
        if time.monotonic() > deadline:
            message = f"{what} not met within {timeout:g}s{last_error}"
            if on_timeout is not None:
                on_timeout(message)
            raise AssertionError(message)
        time.sleep(interval)


class ManagedProcess:
    """A subprocess whose output goes to a log file; stopping it is idempotent."""

    name = "process"
    stop_timeout = 15.0

    def __init__(
        self,
        args: Sequence[str],
        workdir: Path,
        *,
        env: Mapping[str, str] | None = None,
        url: str = "",
    ) -> None:
        self.args = list(args)
        self.workdir = workdir
        self.url = url
        self.log_path = workdir / f"{self.name}.log"
        self.returncode: int | None = None
        self._log = self.log_path.open("wb")
        try:
            self.process = subprocess.Popen(
                self.args,
                cwd=workdir,
                env=dict(env) if env is not None else None,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
            )
        except BaseException:
            self._log.close()
            raise

    def log_text(self, tail: int = 6000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return text if len(text) <= tail else "...\n" + text[-tail:]

    def fail(self, message: str) -> NoReturn:
        """Raise an AssertionError that carries the tail of this process's log."""
        raise AssertionError(
            f"{message}\n--- {self.name} log ({self.log_path}) ---\n{self.log_text()}"
        )

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_http(
        self, path: str, *, timeout: float = DEFAULT_TIMEOUT, status: int = 200, base: str = ""
    ) -> None:
        """Poll `(base or url) + path` until it answers `status`; fail early if the process dies."""
        url = (base or self.url) + path

        def answered() -> bool:
            if not self.alive():
                self.fail(
                    f"{self.name} exited with {self.process.returncode} before {url} answered"
                )
            return http_request(url, timeout=5)[0] == status

        wait_until(
            answered, timeout=timeout, what=f"{url} answering {status}", on_timeout=self.fail
        )

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after `stop_timeout`; returns the exit code."""
        if self.returncode is None:
            if self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(self.stop_timeout)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(10)
            self.returncode = self.process.returncode
            self._log.close()
        return self.returncode

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _workdir(tmp_dir: Path, name: str) -> Path:
    tmp_dir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=tmp_dir))


# --- Prometheus ------------------------------------------------------------------------------


class PrometheusQueryError(AssertionError):
    """Prometheus rejected a query (parse error, bad data) or did not answer."""


class PrometheusProcess(ManagedProcess):
    name = "prometheus"

    def wait_ready(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.wait_http("/-/ready", timeout=timeout)

    def api(self, path: str, **params: str) -> Any:
        """`data` of a successful /api/v1 answer; PrometheusQueryError otherwise."""
        query = urllib.parse.urlencode(params)
        status, text = http_request(f"{self.url}/api/v1/{path}" + (f"?{query}" if query else ""))
        try:
            body = json.loads(text)
        except ValueError:
            raise PrometheusQueryError(
                f"/api/v1/{path} {params}: HTTP {status}: {text[:500]}"
            ) from None
        if body.get("status") != "success":
            raise PrometheusQueryError(
                f"/api/v1/{path} {params}: {body.get('errorType')}: {body.get('error')}"
            )
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """Instant query: the result list (`metric` and `value` of each series).

        A scalar or string result comes back as one entry without labels.
        """
        params = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
        data = self.api("query", **params)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def wait_for(
        self,
        expr: str,
        condition: Callable[[list[dict[str, Any]]], bool] = bool,
        *,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> list[dict[str, Any]]:
        """Poll `expr` until its result satisfies `condition` (default: at least one series)."""
        results: list[dict[str, Any]] = []

        def check() -> bool:
            nonlocal results
            results = self.query(expr)
            return condition(results)

        wait_until(
            check,
            timeout=timeout,
            what=f"query {expr!r} (last result {results})",
            on_timeout=self.fail,
        )
        return results

    def targets(self) -> list[dict[str, Any]]:
        return list(self.api("targets")["activeTargets"])

    def alerts(self) -> list[dict[str, Any]]:
        return list(self.api("alerts")["alerts"])


def prometheus_config(
    scrape_targets: Sequence[str],
    rule_files: Sequence[Path] = (),
    alertmanager_urls: Sequence[str] = (),
    scrape_interval: str = "1s",
    evaluation_interval: str = "1s",
    external_labels: Mapping[str, str] | None = None,
    job_name: str = EXPORTER_JOB,
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "global": {
            "scrape_interval": scrape_interval,
            # Must not exceed the interval (the default 10s would, at 1s).
            "scrape_timeout": scrape_interval,
            "evaluation_interval": evaluation_interval,
        },
        "rule_files": [str(Path(p).resolve()) for p in rule_files],
        "scrape_configs": [
            {"job_name": job_name, "static_configs": [{"targets": list(scrape_targets)}]}
        ],
    }
    if external_labels:
        config["global"]["external_labels"] = dict(external_labels)
    if alertmanager_urls:
        config["alerting"] = {"alertmanagers": [_alertmanager_target(u) for u in alertmanager_urls]}
    return config


def _alertmanager_target(url: str) -> dict[str, Any]:
    parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    target: dict[str, Any] = {
        "scheme": parts.scheme,
        "static_configs": [{"targets": [parts.netloc]}],
    }
    if parts.path.strip("/"):
        target["path_prefix"] = parts.path
    return target


def start_prometheus(
    tmp_dir: Path,
    scrape_targets: Sequence[str],
    rule_files: Sequence[Path] = (),
    alertmanager_urls: Sequence[str] = (),
    scrape_interval: str = "1s",
    evaluation_interval: str = "1s",
    external_labels: Mapping[str, str] | None = None,
    *,
    job_name: str = EXPORTER_JOB,
    ready_timeout: float = DEFAULT_TIMEOUT,
) -> PrometheusProcess:
    """A Prometheus scraping `scrape_targets` ("host:port") as `job_name`, ready to query.

    `rule_files` are loaded as they are (for example `RULE_FILES`, the shipped alerts/);
    `alertmanager_urls` ("http://127.0.0.1:9093") receive its alerts.
    """
    binary = require_binary("prometheus")
    workdir = _workdir(Path(tmp_dir), "prometheus")
    config = prometheus_config(
        scrape_targets,
        rule_files,
        alertmanager_urls,
        scrape_interval,
        evaluation_interval,
        external_labels,
        job_name,
    )
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    process = PrometheusProcess(
        [
            binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-lifecycle",  # POST /-/reload for tests that change the rules
            "--log.level=info",
        ],
        workdir,
        url=f"http://127.0.0.1:{port}",
    )
    try:
        process.wait_ready(ready_timeout)
    except BaseException:
        process.stop()
        raise
    return process


# --- Alertmanager ----------------------------------------------------------------------------


class AlertmanagerProcess(ManagedProcess):
    name = "alertmanager"

    def __init__(self, *args: Any, cluster_address: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cluster_address = cluster_address  # host:port peers use to reach this instance

    def wait_ready(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.wait_http("/-/ready", timeout=timeout)

    def _json(self, path: str, body: Any = None) -> Any:
        status, text = http_request(f"{self.url}{path}", body)
        if status >= 300:
            self.fail(f"{path}: HTTP {status}: {text[:500]}")
        return json.loads(text) if text.strip() else None

    def alerts(self) -> list[dict[str, Any]]:
        """The alerts Alertmanager holds (API v2)."""
        return list(self._json("/api/v2/alerts"))

    def post_alerts(self, alerts: list[dict[str, Any]]) -> None:
        """Send alerts as Prometheus would (`labels`, `annotations`, `startsAt`, `endsAt`)."""
        self._json("/api/v2/alerts", alerts)

    def status(self) -> dict[str, Any]:
        return dict(self._json("/api/v2/status"))


def start_alertmanager(
    tmp_dir: Path,
    config_yaml: str,
    peers: Sequence[str] = (),
    cluster_listen: str | None = None,
    *,
    ready_timeout: float = DEFAULT_TIMEOUT,
    extra_args: Sequence[str] = (),
) -> AlertmanagerProcess:
    """An Alertmanager with `config_yaml`, ready to receive alerts.

    Without `cluster_listen` clustering is off (a single instance); for an HA pair pass
    `cluster_listen="127.0.0.1:<free port>"` to each and the other's address in `peers`.
    """
    binary = require_binary("prometheus-alertmanager", "alertmanager")
    workdir = _workdir(Path(tmp_dir), "alertmanager")
    (workdir / "alertmanager.yml").write_text(config_yaml)
    port = free_port()
    args = [
        binary,
        f"--config.file={workdir / 'alertmanager.yml'}",
        f"--storage.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        f"--cluster.listen-address={cluster_listen or ''}",  # empty: no clustering
        *(f"--cluster.peer={peer}" for peer in peers),
        *extra_args,
    ]
    process = AlertmanagerProcess(
        args, workdir, url=f"http://127.0.0.1:{port}", cluster_address=cluster_listen
    )
    process.stop_timeout = 10.0  # a clustered instance may wait for its departed peers
    try:
        process.wait_ready(ready_timeout)
    except BaseException:
        process.stop()
        raise
    return process


# --- The exporter and the Kraken-compatible server ------------------------------------------


def _python_env(extra: Mapping[str, str] | None = None, drop: Sequence[str] = ()) -> dict[str, str]:
    """This interpreter's environment with the repository importable, whatever the cwd."""
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


class KrakenServerProcess(ManagedProcess):
    name = "kraken-server"

    def __init__(self, *args: Any, control_url: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.control_url = control_url

    def set_mode(
        self, mode: str, latency: float | None = None, http_status: int | None = None
    ) -> dict:
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


def start_kraken_server(
    tmp_dir: Path,
    *,
    mode: str = "healthy",
    latency: float | None = None,
    api_key: str | None = None,
    api_secret: str | None = None,
    ready_timeout: float = DEFAULT_TIMEOUT,
) -> KrakenServerProcess:
    """`liquid-abt-exporter kraken-server` with a control port of its own (reachable when down)."""
    workdir = _workdir(Path(tmp_dir), "kraken-server")
    port, control = free_port(), free_port()
    secrets = {"KRAKEN_API_KEY": api_key or "", "KRAKEN_API_SECRET": api_secret or ""}
    args = [
        sys.executable,
        "-m",
        "exporter",
        "kraken-server",
        f"--listen=127.0.0.1:{port}",
        f"--control-listen=127.0.0.1:{control}",
        f"--mode={mode}",
        *([f"--latency={latency}"] if latency is not None else []),
    ]
    process = KrakenServerProcess(
        args,
        workdir,
        env=_python_env(secrets),
        url=f"http://127.0.0.1:{port}",
        control_url=f"http://127.0.0.1:{control}",
    )
    try:
        process.wait_http("/_control/mode", timeout=ready_timeout, base=process.control_url)
    except BaseException:
        process.stop()
        raise
    return process


class ExporterProcess(ManagedProcess):
    name = "exporter"

    def __init__(self, *args: Any, embedded_db_dir: Path | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.embedded_db_dir = embedded_db_dir
        # Set by stop(): the embedded PostgreSQL outlived the exporter (a shutdown bug).
        self.embedded_db_left_running = False

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
            pid_file = self.embedded_db_dir / "data" / "postmaster.pid"
            self.embedded_db_left_running = pid_file.exists()
            if self.embedded_db_left_running:  # do not leak a server into the next tests
                from exporter.database.embedded import EmbeddedPostgres

                EmbeddedPostgres(self.embedded_db_dir).stop()
            shutil.rmtree(self.embedded_db_dir.parent, ignore_errors=True)
            self.embedded_db_dir = None
        return code


def start_exporter(
    tmp_dir: Path,
    *,
    database_url: str | None = None,
    config_yaml: str | None = None,
    config_file: Path | None = None,
    env: Mapping[str, str] | None = None,
    args: Sequence[str] = (),
    migrate: bool = False,
    wait: str | None = "/-/ready",
    ready_timeout: float = DEFAULT_TIMEOUT,
) -> ExporterProcess:
    """`liquid-abt-exporter serve` on a free port.

    With `database_url` it uses that database (`migrate=True` adds `--migrate
    --with-platform-schema`); without one it starts its embedded PostgreSQL in a folder of its
    own. The config is `config_yaml` (written to a file) or `config_file`. `env` adds variables
    (secrets such as LIQUID_ABT_WEBHOOK_TOKEN). Waits until `wait` answers 200 (None: no wait).
    """
    workdir = _workdir(Path(tmp_dir), "exporter")
    if config_yaml is not None:
        config_file = workdir / "config.yml"
        config_file.write_text(config_yaml)
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "exporter",
        "serve",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.format=json",
    ]
    if config_file is not None:
        command.append(f"--config.file={config_file}")
    embedded: Path | None = None
    if database_url is None:
        # PostgreSQL refuses root, so as root it runs as another user: it needs a folder that
        # user can reach, which pytest's private tmp_path is not.
        base = Path(tempfile.mkdtemp(prefix="liquid-abt-exporter-pg-"))
        base.chmod(0o755)
        embedded = base / "pg"
        command.append(f"--embedded-db.dir={embedded}")
    elif migrate:
        command += ["--migrate", "--with-platform-schema"]
    extra = dict(env or {})
    if database_url is not None:
        extra["DATABASE_URL"] = database_url
    process = ExporterProcess(
        [*command, *args],
        workdir,
        url=f"http://127.0.0.1:{port}",
        embedded_db_dir=embedded,
        env=_python_env(extra, drop=() if database_url else ("DATABASE_URL",)),
    )
    try:
        if wait is not None:
            process.wait_http(wait, timeout=ready_timeout)
    except BaseException:
        process.stop()
        raise
    return process


def exporter_config(kraken_url: str | None = None, *, interval: str = "1s", **sections: Any) -> str:
    """A config file for tests: fast collectors, and a fast probe of `kraken_url` (or none).

    `sections` merges whole top-level sections, e.g. `breaker={"failure_threshold": 3}`.
    """
    config: dict[str, Any] = {"collectors": {"interval": interval, "timeout": interval}}
    if kraken_url is None:
        config["kraken"] = {"enabled": False}
    else:
        config["kraken"] = {"base_url": kraken_url, "probe_interval": interval, "timeout": "2s"}
    for name, section in sections.items():
        config[name] = {**config.get(name, {}), **section}
    return yaml.safe_dump(config, sort_keys=False)
