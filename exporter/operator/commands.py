"""The flags and commands of `liquid-abt-exporter admin`: each command is one admin API call.

The token comes from LIQUID_ABT_ADMIN_TOKEN or LIQUID_ABT_ADMIN_TOKEN_FILE (never a flag: a flag
shows in `ps` and the shell history); the exporter's URL from --exporter.url or
LIQUID_ABT_EXPORTER_URL. Exit status: 0 done, 1 the call failed (one line on stderr saying why),
2 bad flags.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from exporter.config import parse_duration
from exporter.controls.retry_queue import QUEUE_STATUSES
from exporter.labels import REASON_CLASSES
from exporter.operator import render
from exporter.operator.client import (
    CA_FILE_ENV,
    DEFAULT_URL,
    TOKEN_HINT,
    URL_ENV,
    AdminClient,
    AdminError,
    admin_token,
    tls_context,
)
from exporter.secrets import SecretError

Command = Callable[[AdminClient, argparse.Namespace], tuple[Any, str]]


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    url = os.environ.get(URL_ENV, DEFAULT_URL)
    common.add_argument(
        "--exporter.url",
        dest="url",
        default=url,
        metavar="URL",
        help=f"the running exporter (env {URL_ENV}; default: {DEFAULT_URL})",
    )
    common.add_argument(
        "--exporter.timeout",
        dest="timeout",
        type=_seconds,
        default=10.0,
        metavar="DURATION",
        help="how long to wait for its answer (default: 10s)",
    )
    common.add_argument(
        "--exporter.ca-file",
        dest="ca_file",
        default=os.environ.get(CA_FILE_ENV),
        metavar="FILE",
        help="PEM file of the CA that signed an https:// exporter's certificate, when it is not in "
        f"the system's trust store (env {CA_FILE_ENV}; default: the system's)",
    )
    common.add_argument(
        "--exporter.cert-file",
        dest="cert_file",
        metavar="FILE",
        help="client certificate (PEM) when the exporter's web config requires one (default: none)",
    )
    common.add_argument(
        "--exporter.key-file",
        dest="key_file",
        metavar="FILE",
        help="the client certificate's private key (default: in the certificate file)",
    )
    common.add_argument(
        "--json", action="store_true", help="print the admin API's JSON answer as is, for scripts"
    )
    return common  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="liquid-abt-exporter admin",
        description="Read and change a running exporter's controls through its admin API. "
        f"The admin token comes from {TOKEN_HINT}.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _common()
    _add_status(commands, common)
    _add_breaker(commands, common)
    _add_purchases(commands, common)
    _add_reports(commands, common)
    return parser


def _command(commands: Any, name: str, common: argparse.ArgumentParser, run: Command,
             help: str) -> argparse.ArgumentParser:  # fmt: skip
    sub = commands.add_parser(name, parents=[common], help=help, description=help)
    sub.set_defaults(run=run)
    return sub


def _exchange(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("exchange", metavar="EXCHANGE", help="a configured exchange, e.g. kraken")


def _reason(sub: argparse.ArgumentParser, required: bool = False) -> None:
    sub.add_argument("--reason", required=required, metavar="TEXT",
                     help="why, recorded in the audit log" + ("" if required else " (optional)"))  # fmt: skip


def _add_status(commands: Any, common: argparse.ArgumentParser) -> None:
    _command(commands, "status", common, _status,
             "every exchange: breaker, pause and hold, API rate, retry queue, last recovery "
             "verification, recent actions")  # fmt: skip


def _add_breaker(commands: Any, common: argparse.ArgumentParser) -> None:
    breaker = commands.add_parser("breaker", help="force, reset or tune a circuit breaker",
                                  description="Force, reset or tune a circuit breaker.")  # fmt: skip
    actions = breaker.add_subparsers(dest="action", required=True, metavar="ACTION")
    force = _command(actions, "force", common, _force,
                     "force a state; an admin's OPEN is a manual hold automation never lifts")  # fmt: skip
    _exchange(force)
    force.add_argument("state", metavar="STATE", choices=("OPEN", "HALF_OPEN", "CLOSED"), type=str.upper,
                       help="OPEN, HALF_OPEN or CLOSED")  # fmt: skip
    _reason(force)
    reset = _command(actions, "reset", common, _reset, "CLOSED, counts zeroed, any hold lifted")
    _exchange(reset)
    _reason(reset)
    config = _command(actions, "config", common, _config,
                      "change the runbook's updateConfig settings; the others stay")  # fmt: skip
    _exchange(config)
    config.add_argument(
        "--failure-threshold",
        type=int,
        metavar="N",
        help="failures within the monitoring window that open the breaker",
    )
    config.add_argument(
        "--recovery-timeout",
        type=_milliseconds,
        metavar="DURATION",
        help="how long OPEN lasts before a trial call, e.g. 45s",
    )
    config.add_argument("--monitoring-window", type=_milliseconds, metavar="DURATION",
                        help="the window failures are counted in, e.g. 10m")  # fmt: skip
    _reason(config)


def _add_purchases(commands: Any, common: argparse.ArgumentParser) -> None:
    pause = _command(commands, "pause", common, _pause,
                     "pause automatic purchases: a manual hold, lifted only by `admin resume`")  # fmt: skip
    _exchange(pause)
    _reason(pause, required=True)
    pause.add_argument("--estimated-duration", metavar="TEXT",
                       help="how long you expect it to last, e.g. '30 minutes' (optional)")  # fmt: skip
    resume = _command(commands, "resume", common, _resume,
                      "resume automatic purchases, lifting any hold")  # fmt: skip
    _exchange(resume)
    _reason(resume)
    queue = _command(commands, "retry-queue", common, _retry_queue,
                     "purchases queued for retry, next due first")  # fmt: skip
    queue.add_argument("--exchange", metavar="EXCHANGE", help="only this exchange")
    queue.add_argument("--status", choices=QUEUE_STATUSES, metavar="STATUS",
                       help=f"only this status: {', '.join(QUEUE_STATUSES)}")  # fmt: skip
    _paging(queue)


def _add_reports(commands: Any, common: argparse.ArgumentParser) -> None:
    report = _command(commands, "impact-report", common, _impact,
                      "failed purchases, their AUD and tenants in a time range")  # fmt: skip
    report.add_argument("--start", required=True, type=_time, metavar="TIME",
                        help="ISO 8601 with an offset (2025-01-15T09:30:00+10:00), or how long "
                             "ago (90m, 2h)")  # fmt: skip
    report.add_argument("--end", type=_time, metavar="TIME", help="same forms (default: now)")
    report.add_argument("--exchange", metavar="EXCHANGE", help="only this exchange")
    report.add_argument("--reason", choices=REASON_CLASSES, metavar="CLASS",
                        help=f"only this failure class: {', '.join(REASON_CLASSES)}")  # fmt: skip
    log = _command(commands, "audit-log", common, _audit_log,
                   "every action taken or refused, newest first")  # fmt: skip
    log.add_argument("--exchange", metavar="EXCHANGE", help="only this exchange (any name)")
    log.add_argument("--before-id", type=int, metavar="ID",
                     help="only entries older than this id (keeps pages still while it grows)")  # fmt: skip
    _paging(log)


def _paging(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--limit", type=int, default=20, metavar="N", help="entries per page (default: 20, at most 1000)")  # fmt: skip
    sub.add_argument("--offset", type=int, default=0, metavar="N", help="entries to skip (default: 0)")  # fmt: skip


# ---- flag values ----


def _seconds(value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _milliseconds(value: str) -> int:
    if value.replace(".", "", 1).isdigit():
        raise argparse.ArgumentTypeError(f"{value!r}: give a unit, like 45s or 10m")
    return round(_seconds(value) * 1000)


def _time(value: str) -> str:
    """An ISO 8601 time as given, or a duration ago as an ISO 8601 time."""
    try:
        return (datetime.now(UTC) - timedelta(seconds=parse_duration(value))).isoformat()
    except ValueError:
        return value  # the exporter checks it and says what is wrong


# ---- the commands: (JSON answer, text for a person) ----


def _status(client: AdminClient, args: argparse.Namespace) -> tuple[Any, str]:
    answer = client.get("status")
    return answer, render.status(answer, render.now())


def _force(client: AdminClient, args: argparse.Namespace) -> tuple[Any, str]:
    body = _given(state=args.state, reason=args.reason)
    answer = client.post(f"circuit-breaker/{_path(args.exchange)}/force-state", body)
    return answer, render.transition(answer, args.exchange)


def _reset(client: AdminClient, args: argparse.Namespace) -> tuple[Any, str]:
    answer = client.post(
        f"circuit-breaker/{_path(args.exchange)}/reset", _given(reason=args.reason)
    )
    return answer, render.transition(answer, args.exchange)


def _config(client: AdminClient, args: argparse.Namespace) -> tuple[Any, str]:
    body = _given(failureThreshold=args.failure_threshold, recoveryTimeout=args.recovery_timeout,
                  monitoringWindow=args.monitoring_window, reason=args.reason)  # fmt: skip
    answer = client.patch(f"circuit-breaker/{_path(args.exchange)}/config", body)
    return answer, render.breaker_config(answer)


def _pause(client: AdminClient, args: argparse.Namespace) -> tuple[Any, str]:
    body = _given(affectedExchange=args.exchange, reason=args.reason,
                  estimatedDuration=args.estimated_duration)  # fmt: skip
    answer = client.post("purchases/pause", body)
    return answer, render.paused(answer, render.now())


def _resume(client: AdminClient, args: argparse.Namespace) -> tuple[Any, str]:
    answer = client.post("purchases/resume", _given(exchange=args.exchange, reason=args.reason))
    return answer, render.resumed(answer)


def _retry_queue(client: AdminClient, args: argparse.Namespace) -> tuple[Any, str]:
    answer = client.get("retry-queue", exchange=args.exchange, status=args.status,
                        limit=args.limit, offset=args.offset)  # fmt: skip
    return answer, render.retry_queue(answer, render.now())


def _impact(client: AdminClient, args: argparse.Namespace) -> tuple[Any, str]:
    end = args.end or datetime.now(UTC).isoformat()
    answer = client.get("impact-report", start=args.start, end=end, exchange=args.exchange,
                        reason=args.reason)  # fmt: skip
    return answer, render.impact(answer)


def _audit_log(client: AdminClient, args: argparse.Namespace) -> tuple[Any, str]:
    answer = client.get("audit-log", exchange=args.exchange, beforeId=args.before_id,
                        limit=args.limit, offset=args.offset)  # fmt: skip
    return answer, render.audit_log(answer, render.now())


def _given(**fields: Any) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if value is not None}


def _path(segment: str) -> str:
    return quote(segment, safe="")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        context = tls_context(args.ca_file, args.cert_file, args.key_file)
        client = AdminClient(args.url, admin_token(), args.timeout, context)
        answer, text = args.run(client, args)
    except (AdminError, SecretError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        print(json.dumps(answer, indent=2) if args.json else text, flush=True)
    except BrokenPipeError:  # `admin audit-log | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
