"""Command line: `serve`, `migrate`, `check-config`, in the style of the Prometheus exporters.

Every flag can also be set by the environment variable named in its help. Secrets are read from
the environment or files only (DATABASE_URL, DATABASE_PASSWORD[_FILE]); no flag takes a secret.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

import asyncpg
from aiohttp import web
from prometheus_client import disable_created_metrics

from exporter import __version__
from exporter.config import Config, ConfigError, load_config
from exporter.database.embedded import EmbeddedPostgres, EmbeddedPostgresError
from exporter.database.migrate import migrate
from exporter.database.pool import Connection, database_connection, mask_dsn
from exporter.logs import FORMATS, LEVELS, setup_logging
from exporter.secrets import SecretError, Secrets

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="liquid-abt-exporter",
        description=(
            "Prometheus exporter and Alertmanager webhook receiver for LIQUID ABT Bitcoin "
            "purchases. The database comes from DATABASE_URL (password from DATABASE_PASSWORD "
            "or DATABASE_PASSWORD_FILE) or the config file; `serve` starts an embedded "
            "PostgreSQL when neither gives one."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="serve /metrics and the HTTP API")
    _common(serve)
    _env_flag(
        serve,
        "--web.listen-address",
        "LIQUID_ABT_LISTEN_ADDRESS",
        DEFAULT_LISTEN,
        "address to listen on, host:port",
        dest="listen_address",
    )
    _env_flag(
        serve,
        "--embedded-db.dir",
        "LIQUID_ABT_EMBEDDED_DB_DIR",
        ".data/postgres",
        "data folder of the embedded PostgreSQL, used when no database is given",
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

    commands.add_parser(
        "kraken-server",
        help="run the Kraken-compatible server for tests and drills (see `kraken-server --help`)",
        add_help=False,
    )
    commands.add_parser(
        "simulate",
        help="write simulated purchases and API call logs, for demos and drills "
        "(see `simulate --help`)",
        add_help=False,
    )
    commands.add_parser(
        "drill",
        help="replay the runbooks' incidents on the whole loop and print their timelines "
        "(see `drill --help`)",
        add_help=False,
    )
    commands.add_parser(
        "admin",
        help="the operator's commands against a running exporter's admin API: status, breaker, "
        "pause, resume, retry-queue, impact-report, audit-log (see `admin --help`)",
        add_help=False,
    )
    commands.add_parser(
        "demo",
        help="run the whole loop locally (database, Kraken-compatible server, exporter, simulator, "
        "Prometheus and Alertmanager when installed); --drill runs a scripted outage",
        add_help=False,
    )
    return parser


def parse_listen_address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--web.listen-address {value!r}: expected host:port, like :9898")
    return host.strip("[]") or "0.0.0.0", int(port)


async def _migrate(connection: Connection, with_platform_schema: bool) -> list[str]:
    conn = await asyncpg.connect(connection.dsn, password=connection.password, timeout=10)
    try:
        return await migrate(conn, with_platform_schema=with_platform_schema)
    finally:
        await conn.close()


def _serve(args: argparse.Namespace, config: Config) -> int:
    from exporter.web.app import create_app

    host, port = parse_listen_address(args.listen_address)
    connection = database_connection(config)
    embedded: EmbeddedPostgres | None = None
    if connection is None:
        embedded = EmbeddedPostgres(Path(args.embedded_db_dir))
        log.info("no database given: starting embedded PostgreSQL",
                 extra={"data_dir": str(embedded.data_dir), "bin_dir": str(embedded.bin_dir)})  # fmt: skip
        embedded.start()
        connection = Connection(embedded.dsn)
    try:
        if args.migrate or embedded is not None:
            applied = asyncio.run(
                _migrate(connection, args.with_platform_schema or embedded is not None)
            )
            log.info("schema up to date", extra={"applied": ",".join(applied) or "none"})
        log.info("listening", extra={"address": f"http://{host or '0.0.0.0'}:{port}",
                                     "database": connection.masked, "version": __version__})  # fmt: skip
        # The replica's name survives a restart on the same host and port: its vote is replaced, not
        # left behind to go stale.
        replica = f"{socket.gethostname()}:{port}"
        web.run_app(create_app(config, connection, Secrets.from_env(), replica), host=host, port=port, print=None,
                    access_log=None)  # fmt: skip
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


def run(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["kraken-server"]:
        # A separate program with its own flags; it shares only the entry point.
        from exporter.drill.kraken_server.cli import main as kraken_server

        return kraken_server(argv[1:])
    if argv[:1] == ["drill"]:
        from exporter.drill.incidents import main as drill

        return drill(argv[1:])
    if argv[:1] == ["admin"]:
        from exporter.operator import main as admin

        return admin(argv[1:])
    if argv[:1] == ["demo"]:
        from exporter.drill.demo import main as demo

        return demo(argv[1:])
    if argv[:1] == ["simulate"]:
        from exporter.drill.simulate import main as simulate

        return simulate(argv[1:])
    args = build_parser().parse_args(argv)
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
        return 0
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
    except asyncpg.PostgresError as exc:
        print(f"error: database: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. the listen address is taken, or the database refuses
        print(f"error: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
