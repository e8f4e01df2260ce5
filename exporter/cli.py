"""Command line: `serve`, `migrate`, `check-config`, `slo-rules`, `healthcheck`, in the style of the Prometheus
exporters.

Every flag can also be set by the environment variable named in its help. Secrets are read from
the environment or files only (DATABASE_URL, DATABASE_PASSWORD[_FILE]); no flag takes a secret.
`serve` binds its listen addresses before anything else starts, then the embedded PostgreSQL (only
with --embedded-db), migrations and the app; SIGTERM, SIGINT and SIGQUIT stop it (and the embedded
server) at any stage; SIGHUP reloads the configuration files.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType

import asyncpg
from prometheus_client import disable_created_metrics

from exporter.buildinfo import build_info
from exporter.config import Config, ConfigError, format_duration, load_config, parse_duration
from exporter.database.embedded import EmbeddedPostgres, EmbeddedPostgresError
from exporter.database.migrate import migrate
from exporter.database.pool import Connection, database_connection, mask_dsn
from exporter.logs import FORMATS, LEVELS, setup_logging
from exporter.secrets import SecretError, Secrets
from exporter.web.server import ADMIN, Limits, Listener, bind, raise_fd_limit, split_host_port
from exporter.web.webconfig import WebConfigError, load_web_config

log = logging.getLogger("exporter")

DEFAULT_LISTEN = ":9898"


def _env_flag(
    parser: argparse.ArgumentParser,
    flag: str,
    env: str,
    default: str | None,
    help: str,
    **kw: object,
) -> None:
    parser.add_argument(
        flag,
        default=os.environ.get(env, default),
        help=f"{help} (env {env}; default: {default if default is not None else 'none'})",
        **kw,  # type: ignore[arg-type]
    )


def _common(parser: argparse.ArgumentParser) -> None:
    _env_flag(
        parser,
        "--config.file",
        "LIQUID_ABT_CONFIG_FILE",
        None,
        "YAML configuration file; without one, the runbook defaults apply",
        dest="config_file",
    )
    _env_flag(
        parser,
        "--log.level",
        "LIQUID_ABT_LOG_LEVEL",
        "info",
        f"log level: {', '.join(LEVELS)}",
        dest="log_level",
    )
    _env_flag(parser, "--log.format", "LIQUID_ABT_LOG_FORMAT", "logfmt",
              f"log format: {', '.join(FORMATS)}", dest="log_format")  # fmt: skip


def _web_flags(serve: argparse.ArgumentParser) -> None:
    _env_flag(serve, "--web.listen-address", "LIQUID_ABT_LISTEN_ADDRESS", DEFAULT_LISTEN,
              "address to listen on, host:port (an empty host: every interface)",
              dest="listen_address")  # fmt: skip
    _env_flag(serve, "--web.admin-listen-address", "LIQUID_ABT_ADMIN_LISTEN_ADDRESS", None,
              "a second address for the admin API, the webhook and /-/reload, which then leave "
              "--web.listen-address to /metrics and the health checks", dest="admin_listen_address")  # fmt: skip
    _env_flag(serve, "--web.config.file", "LIQUID_ABT_WEB_CONFIG_FILE", None,
              "exporter-toolkit web config (tls_server_config, basic_auth_users with bcrypt "
              "hashes, http_server_config) for every listener; reloaded on SIGHUP",
              dest="web_config_file")  # fmt: skip
    _env_flag(serve, "--web.telemetry-path", "LIQUID_ABT_TELEMETRY_PATH", "/metrics",
              "path under which to expose metrics", dest="telemetry_path")  # fmt: skip
    defaults = Limits()
    _env_flag(serve, "--web.max-connections", "LIQUID_ABT_MAX_CONNECTIONS",
              str(defaults.max_connections), "open connections at most, TLS handshakes included; "
              "at the limit an idle, unauthenticated or slow one is closed, or the new one "
              "answered 503 when all are busy", dest="max_connections")  # fmt: skip
    _env_flag(serve, "--web.read-header-timeout", "LIQUID_ABT_READ_HEADER_TIMEOUT",
              format_duration(defaults.read_header_timeout),
              "time a client has from the accept to finish its TLS handshake and send a "
              "request's headers", dest="read_header_timeout")  # fmt: skip
    _env_flag(serve, "--web.read-body-timeout", "LIQUID_ABT_READ_BODY_TIMEOUT",
              format_duration(defaults.read_body_timeout),
              "time a client has to send a request's body once its headers are in",
              dest="read_body_timeout")  # fmt: skip
    _env_flag(serve, "--web.idle-timeout", "LIQUID_ABT_IDLE_TIMEOUT",
              format_duration(defaults.idle_timeout),
              "keep-alive connections idle this long are closed", dest="idle_timeout")  # fmt: skip


class _Version(argparse.Action):
    """`--version` with revision and build date on lines of their own (argparse would rewrap)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)  # type: ignore[arg-type]

    def __call__(self, parser: argparse.ArgumentParser, *_args: object) -> None:
        print(build_info().describe(parser.prog))
        parser.exit()


DEFAULT_SLO_RULES_FILE = "alerts/slo.rules.yml"


def _slo_rules_parser(commands: argparse._SubParsersAction) -> None:
    slo = commands.add_parser(
        "slo-rules",
        help="write the Prometheus rules of the purchase-success objectives (config `slo`), "
        "then exit",
        description="Generate the recording rules (error ratios and burn rates over 5m, 30m, "
        "1h, 2h, 6h, 1d and 3d, the error budget remaining) and the multi-window, "
        "multi-burn-rate alerts of the objectives in the configuration file's `slo` section; "
        "docs/slo.md explains them. Every window is derived in Prometheus from the exporter's "
        "5-minute purchase counts: none costs a query on the database.",
    )
    _common(slo)
    _env_flag(slo, "--rules.file", "LIQUID_ABT_SLO_RULES_FILE", DEFAULT_SLO_RULES_FILE,
              "where to write the rules, `-` for standard output; Prometheus loads it beside "
              "the other files of alerts/", dest="rules_file")  # fmt: skip
    slo.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 when --rules.file differs from what the configuration "
        "generates (for CI: the committed file is out of date)",
    )


def slo_rules(args: argparse.Namespace, config: Config) -> int:
    """`slo-rules`: write, print or check the generated SLO rule file."""
    from exporter.slo import generate

    text = generate(config)
    if args.rules_file == "-":
        if args.check:
            raise ConfigError("--check needs a --rules.file to compare, not `-`")
        sys.stdout.write(text)
        return 0
    path = Path(args.rules_file)
    if args.check:
        try:
            current = path.read_text()
        except OSError as exc:
            raise ConfigError(f"--rules.file {path}: cannot read: {exc.strerror}") from None
        if current != text:
            print(f"{path}: out of date: run `liquid-abt-exporter slo-rules` and commit it",
                  file=sys.stderr)  # fmt: skip
            return 1
        print(f"{path}: up to date")
        return 0
    try:
        path.write_text(text)
    except OSError as exc:
        raise ConfigError(f"--rules.file {path}: cannot write: {exc.strerror}") from None
    print(f"{path}: written ({len(config.slo.purchases)} objective(s))")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="liquid-abt-exporter",
        description=(
            "Prometheus exporter and Alertmanager webhook receiver for LIQUID ABT Bitcoin "
            "purchases. The database comes from DATABASE_URL (password from DATABASE_PASSWORD "
            "or DATABASE_PASSWORD_FILE) or the config file; `serve --embedded-db` starts a "
            "throwaway local PostgreSQL instead, for development and demos."
        ),
    )
    parser.add_argument(
        "--version", action=_Version, help="show the version, revision and build date, then exit"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="serve /metrics and the HTTP API")
    _common(serve)
    _web_flags(serve)
    serve.add_argument(
        "--embedded-db",
        action="store_true",
        help="start an embedded PostgreSQL (the pgserver wheel or the system's binaries) with "
        "the exporter's schema and the platform tables, for development and demos; without it "
        "a database must be given",
    )
    _env_flag(
        serve,
        "--embedded-db.dir",
        "LIQUID_ABT_EMBEDDED_DB_DIR",
        ".data/postgres",
        "data folder of the embedded PostgreSQL (--embedded-db)",
        dest="embedded_db_dir",
    )
    serve.add_argument(
        "--migrate",
        action="store_true",
        help="apply the exporter's schema migrations before serving "
        "(always done for the embedded database)",
    )
    serve.add_argument("--with-platform-schema", action="store_true",
                       help="with --migrate, also create the platform tables (development and "
                            "demos; always done for the embedded database)")  # fmt: skip

    mig = commands.add_parser("migrate", help="create or upgrade the exporter's schema, then exit")
    _common(mig)
    mig.add_argument("--with-platform-schema", action="store_true",
                     help="also create the platform tables of the runbooks, with their indexes, "
                          "for development, demos and tests")  # fmt: skip

    check = commands.add_parser("check-config", help="validate the configuration file and exit")
    _common(check)
    _env_flag(check, "--web.config.file", "LIQUID_ABT_WEB_CONFIG_FILE", None,
              "also validate this web config file", dest="web_config_file")  # fmt: skip

    _slo_rules_parser(commands)

    health = commands.add_parser(
        "healthcheck",
        help="exit 0 when the `serve` on --web.listen-address answers /-/healthy (for the "
        "container HEALTHCHECK)",
    )
    _env_flag(health, "--web.listen-address", "LIQUID_ABT_LISTEN_ADDRESS", DEFAULT_LISTEN,
              "the address `serve` listens on", dest="listen_address")  # fmt: skip
    _env_flag(health, "--web.config.file", "LIQUID_ABT_WEB_CONFIG_FILE", None,
              "the web config `serve` uses (https when it has tls_server_config)",
              dest="web_config_file")  # fmt: skip

    commands.add_parser(
        "admin",
        help="the operator's commands against a running exporter's admin API: status, breaker, "
        "pause, resume, retry-queue, impact-report, audit-log, incidents, incident-report (see "
        "`admin --help`)",
        add_help=False,
    )
    return parser


def parse_listen_address(value: str) -> tuple[str, int]:
    host, port = split_host_port(value, "--web.listen-address")
    return host or "0.0.0.0", port


async def _migrate(connection: Connection, with_platform_schema: bool) -> list[str]:
    try:
        conn = await asyncpg.connect(connection.dsn, password=connection.password, timeout=10)
    except (ValueError, asyncpg.InterfaceError) as exc:  # a DSN asyncpg cannot use
        raise ConfigError(f"database {connection.masked}: {exc}") from None
    try:
        return await migrate(conn, with_platform_schema=with_platform_schema)
    finally:
        await conn.close()


class Stopped(Exception):
    """A stop signal arrived before serving started; everything started so far is stopped."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stop_now(signum: int, _frame: FrameType | None) -> None:
    raise Stopped(signum)


def _reload_not_yet(_signum: int, _frame: FrameType | None) -> None:
    log.warning("SIGHUP before serving started: nothing to reload yet, ignored")


def _install_start_up_signals() -> None:
    """Until the event loop takes over: a stop signal unwinds (finally blocks stop the
    embedded server), SIGHUP is logged and ignored instead of killing the process."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        signal.signal(sig, _stop_now)
    signal.signal(signal.SIGHUP, _reload_not_yet)


def _limits(args: argparse.Namespace) -> Limits:
    try:
        max_connections = int(args.max_connections)
    except ValueError:
        max_connections = 0
    if max_connections < 1:
        raise ConfigError(f"--web.max-connections {args.max_connections!r}: expected a number >= 1")
    durations = {}
    for flag, value in [("--web.read-header-timeout", args.read_header_timeout),
                        ("--web.idle-timeout", args.idle_timeout),
                        ("--web.read-body-timeout", args.read_body_timeout)]:  # fmt: skip
        try:
            durations[flag] = parse_duration(value)
        except ValueError as exc:
            raise ConfigError(f"{flag}: {exc}") from None
    return Limits(
        max_connections, durations["--web.read-header-timeout"], durations["--web.idle-timeout"],
        durations["--web.read-body-timeout"],
    )  # fmt: skip


# Descriptors kept free for everything but client connections: the database pool (20 at most by
# default), the listeners, the Kraken client, log files, and connections accepted in one turn of
# the event loop before others are closed to make room for them.
RESERVED_FDS = 128


def _fit_open_files(limits: Limits, open_files: int) -> Limits:
    """A connection limit the open-files limit can hold: at the limit the exporter makes room,
    short of it accepts fail and nobody can connect, the real scraper included."""
    fit = max(1, open_files - RESERVED_FDS)
    if limits.max_connections <= fit:
        return limits
    log.warning(
        "--web.max-connections lowered to fit the open-files limit",
        extra={"max_connections": limits.max_connections, "open_files": open_files, "now": fit},
    )
    return dataclasses.replace(limits, max_connections=fit)


def _telemetry_path(value: str) -> str:
    reserved = ("/-/", "/api/admin")
    if not value.startswith("/") or value == "/" or value.startswith(reserved):
        raise ConfigError(
            f"--web.telemetry-path {value!r}: an absolute path other than /, /-/... and /api/admin"
        )
    return value


def _listeners(args: argparse.Namespace) -> list[Listener]:
    listeners = [bind(args.listen_address, "--web.listen-address")]
    if args.admin_listen_address:
        try:
            listeners.append(bind(args.admin_listen_address, "--web.admin-listen-address", ADMIN))
        except ConfigError:
            listeners[0].close()
            raise
    return listeners


@contextlib.contextmanager
def _database(args: argparse.Namespace, config: Config) -> Iterator[tuple[Connection, bool]]:
    """The database to serve from, and whether it is the embedded one (stopped on the way out)."""
    connection = database_connection(config)
    if connection is not None:
        if args.embedded_db:
            raise ConfigError(
                "--embedded-db and a database (DATABASE_URL or database.dsn) were both given: "
                "choose one"
            )
        yield connection, False
        return
    if not args.embedded_db:
        raise ConfigError(
            "no database: set DATABASE_URL (or database.dsn in the config file), or pass "
            "--embedded-db for a throwaway local PostgreSQL"
        )
    embedded = EmbeddedPostgres(Path(args.embedded_db_dir))
    log.info("starting embedded PostgreSQL",
             extra={"data_dir": str(embedded.data_dir), "bin_dir": str(embedded.bin_dir)})  # fmt: skip
    try:
        embedded.start()
        yield Connection(embedded.dsn), True
    finally:
        # A second stop signal must not cut the stop short and leave the server running.
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            signal.signal(sig, signal.SIG_IGN)
        embedded.stop()
        log.info("embedded PostgreSQL stopped")


def _serve(args: argparse.Namespace, config: Config) -> int:
    from exporter.web.app import WebOptions, create_app, warm_up
    from exporter.web.keys import RELOADER
    from exporter.web.server import serve
    from exporter.web.webconfig import WebSecurity

    if config.notices.webhook_url and not Secrets.from_env().notices_webhook_secret:
        raise ConfigError(
            "notices.webhook_url is set but LIQUID_ABT_NOTICES_WEBHOOK_SECRET (or _FILE) is "
            "not: every notice the webhook sends is signed with it"
        )
    limits = _limits(args)
    telemetry_path = _telemetry_path(args.telemetry_path)
    web_config_file = Path(args.web_config_file) if args.web_config_file else None
    try:
        security = WebSecurity(load_web_config(web_config_file))
    except WebConfigError as exc:
        raise ConfigError(f"--web.config.file: {exc}") from None
    limits = _fit_open_files(limits, raise_fd_limit())
    _install_start_up_signals()
    # Bound first: a taken or unresolvable address fails before PostgreSQL or migrations start.
    listeners = _listeners(args)
    try:
        with _database(args, config) as (connection, embedded):
            if args.migrate or embedded:
                applied = asyncio.run(_migrate(connection, args.with_platform_schema or embedded))
                log.info("schema up to date", extra={"applied": ",".join(applied) or "none"})
            options = WebOptions(
                telemetry_path=telemetry_path,
                config_file=Path(args.config_file) if args.config_file else None,
                web_config_file=web_config_file,
                security=security,
                admin_listener=len(listeners) > 1,
            )
            # The replica's name survives a restart on the same host and port: its vote is
            # replaced, not left behind to go stale.
            port = split_host_port(args.listen_address, "--web.listen-address")[1]
            replica = f"{socket.gethostname()}:{port}"
            secrets = Secrets.from_env()
            if not (security.config.users or options.admin_listener or secrets.admin_token):
                log.warning("POST /-/reload is off: no basic auth, admin listener or admin token "
                            "guards it; SIGHUP reloads")  # fmt: skip
            app = create_app(config, connection, secrets, replica, options=options)
            log.info("starting", extra={"database": connection.masked,
                                        "version": build_info().version,
                                        "revision": build_info().revision})  # fmt: skip
            asyncio.run(
                serve(
                    app,
                    listeners,
                    limits,
                    security.listening_context(),
                    before_serving=warm_up,
                    on_reload=app[RELOADER].reload,
                )  # fmt: skip
            )
            _install_start_up_signals()  # the loop left default handlers behind
    finally:
        for listener in listeners:
            listener.close()
    return 0


def healthcheck(args: argparse.Namespace) -> int:
    """GET /-/healthy on the local listener; an answer of 401 (basic auth on) is alive too."""
    host, port = split_host_port(args.listen_address, "--web.listen-address")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1" if host != "::" else "::1"
    tls = False
    if args.web_config_file:
        try:
            tls = load_web_config(Path(args.web_config_file)).tls is not None
        except WebConfigError as exc:
            print(f"unhealthy: {exc}", file=sys.stderr)
            return 1
    url = f"{'https' if tls else 'http'}://{f'[{host}]' if ':' in host else host}:{port}/-/healthy"
    # Liveness of this process on this machine: its certificate need not name 127.0.0.1.
    context = ssl._create_unverified_context() if tls else None  # noqa: S323
    try:
        with urllib.request.urlopen(url, timeout=4, context=context) as response:
            status = response.status
    except urllib.error.HTTPError as error:
        status = error.code
    except (OSError, ValueError) as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    if status in (200, 401):
        return 0
    print(f"unhealthy: {url} answered {status}", file=sys.stderr)
    return 1


def run(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["admin"]:
        # A separate program with its own flags; it shares only the entry point.
        from exporter.operator import main as admin

        return admin(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "healthcheck":
        return healthcheck(args)
    if args.log_level not in LEVELS:
        print(
            f"error: --log.level {args.log_level!r}: use one of {', '.join(LEVELS)}",
            file=sys.stderr,
        )
        return 2
    if args.log_format not in FORMATS:
        print(
            f"error: --log.format {args.log_format!r}: use one of {', '.join(FORMATS)}",
            file=sys.stderr,
        )
        return 2
    setup_logging(args.log_level, args.log_format)
    # `_created` series only double the output; Prometheus does not need them.
    disable_created_metrics()
    config = load_config(Path(args.config_file) if args.config_file else None)
    if args.command == "check-config":
        print(f"{args.config_file or '(defaults)'}: configuration is valid")
        if args.web_config_file:
            try:
                load_web_config(Path(args.web_config_file))
            except WebConfigError as exc:
                raise ConfigError(f"--web.config.file: {exc}") from None
            print(f"{args.web_config_file}: web config is valid")
        return 0
    if args.command == "slo-rules":
        return slo_rules(args, config)
    if args.command == "migrate":
        connection = database_connection(config)
        if connection is None:
            raise ConfigError("no database: set DATABASE_URL or database.dsn in the config file")
        applied = asyncio.run(_migrate(connection, args.with_platform_schema))
        print(f"{mask_dsn(connection.dsn)}: applied {len(applied)} migration(s): "
              f"{', '.join(applied) or 'already up to date'}")  # fmt: skip
        return 0
    return _serve(args, config)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(argv)
    except (ConfigError, SecretError, EmbeddedPostgresError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Stopped as stopped:
        log.info("stopped before serving", extra={"signal": str(stopped)})
        return 128 + stopped.signum
    except asyncpg.PostgresError as exc:
        print(f"error: database: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. the listen address is taken, or the database refuses
        print(f"error: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
