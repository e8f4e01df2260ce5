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
import time
from argparse import SUPPRESS
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from exporter.config import NOTICE_KINDS, ConfigError, load_config, parse_duration
from exporter.controls.notices import NOTICE_STATES
from exporter.controls.retry_queue import QUEUE_STATUSES
from exporter.labels import REASON_CLASSES
from exporter.operator import direct, render
from exporter.operator.client import (
    CA_FILE_ENV,
    DEFAULT_URL,
    TOKEN_HINT,
    URL_ENV,
    AdminClient,
    AdminError,
    AdminTimeout,
    admin_token,
    tls_context,
)
from exporter.operator.incidents import add_incident_commands
from exporter.secrets import SecretError

CONFIG_ENV = "LIQUID_ABT_CONFIG_FILE"

Client = AdminClient | direct.DirectClient
Command = Callable[[Client, argparse.Namespace], tuple[Any, str]]


def _common(top: bool) -> argparse.ArgumentParser:
    """The flags every command takes. They are accepted before the command too
    (`admin --exporter.url X status`): the top-level copy holds the defaults, and each command's
    copy defaults to SUPPRESS so that it never overwrites a value given before the command."""
    common = argparse.ArgumentParser(add_help=False, argument_default=None if top else SUPPRESS)
    url = os.environ.get(URL_ENV, DEFAULT_URL)

    def default(value: Any) -> Any:
        return value if top else SUPPRESS

    common.add_argument(
        "--exporter.url",
        dest="url",
        default=default(url),
        metavar="URL",
        help=f"the running exporter (env {URL_ENV}; default: {DEFAULT_URL})",
    )
    common.add_argument(
        "--exporter.timeout",
        dest="timeout",
        type=_seconds,
        default=default(10.0),
        metavar="DURATION",
        help="how long to wait for its answer (default: 10s)",
    )
    common.add_argument(
        "--exporter.ca-file",
        dest="ca_file",
        default=default(os.environ.get(CA_FILE_ENV)),
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
        "--json",
        action="store_true",
        default=default(False),
        help="print the admin API's JSON answer as is, for scripts",
    )
    common.add_argument(
        "--database-url",
        dest="database_url",
        metavar="DSN",
        help="no exporter running (every replica down): run status, pause and resume straight "
        "against this PostgreSQL, in the admin API's audited transactions (and the read-only "
        "incidents and incident-report); the password comes "
        "from DATABASE_PASSWORD or DATABASE_PASSWORD_FILE, the admin token is not needed",
    )
    common.add_argument(
        "--config.file",
        dest="config_file",
        default=default(os.environ.get(CONFIG_ENV)),
        metavar="FILE",
        help=f"with --database-url: the exporter's config file, for its exchanges and database "
        f"timeouts (env {CONFIG_ENV}; default: the runbook defaults)",
    )
    return common  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="liquid-abt-exporter admin",
        parents=[_common(top=True)],
        description="Read and change a running exporter's controls through its admin API. "
        f"The admin token comes from {TOKEN_HINT}.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _common(top=False)
    _add_status(commands, common)
    _add_breaker(commands, common)
    _add_purchases(commands, common)
    _add_route(commands, common)
    _add_reports(commands, common)
    add_incident_commands(commands, common)
    _add_notices(commands, common)
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


def _add_route(commands: Any, common: argparse.ArgumentParser) -> None:
    route = _command(commands, "route", common, _route,
                     "failover: force the primary's purchases to a secondary (still guarded), "
                     "forbid routing (none), or leave it to the incident model (auto)")  # fmt: skip
    _exchange(route)
    route.add_argument("--to", required=True, metavar="ROUTE",
                       help="a configured secondary, none or auto")  # fmt: skip
    _reason(route)


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


def _add_notices(commands: Any, common: argparse.ArgumentParser) -> None:
    notices = commands.add_parser(
        "notices", help="customer notices: list, hold, release, cancel",
        description="The customer-notice outbox the platform's notifier consumes "
        "(docs/customer-notices.md).",
    )  # fmt: skip
    actions = notices.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = _command(actions, "list", common, _notices, "notices, newest first")
    listing.add_argument("--incident", type=int, metavar="ID", help="only this incident's")
    listing.add_argument("--state", choices=NOTICE_STATES, metavar="STATE",
                         help=f"only this state: {', '.join(NOTICE_STATES)}")  # fmt: skip
    listing.add_argument("--kind", choices=NOTICE_KINDS, metavar="KIND",
                         help=f"only this kind: {', '.join(NOTICE_KINDS)}")  # fmt: skip
    listing.add_argument("--exchange", metavar="EXCHANGE", help="only this exchange")
    _paging(listing)
    for action, words in [
        ("hold", "keep queued notices from the notifier until `release`"),
        ("release", "let held notices go to the notifier"),
        ("cancel", "never send these queued or held notices"),
    ]:
        sub = _command(actions, action, common, _operate_notices, words)
        sub.add_argument("ids", type=int, nargs="*", metavar="ID", help="notice ids")
        sub.add_argument("--incident", type=int, metavar="ID",
                         help="every notice of this incident (holding or cancelling its "
                              "incident_started also governs what is planned for it next)")  # fmt: skip
        _reason(sub)


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
    """How long ago (90m, 2h, 3d) or an ISO 8601 time; `_at` turns it into a time."""
    try:
        parse_duration(value)
        return value
    except ValueError:
        pass
    try:
        datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r}: give how long ago (90m, 2h, 3d) or an ISO 8601 time with an offset "
            "(2025-01-15T09:30:00+10:00)"
        ) from None
    return value  # the exporter checks the rest (an offset, the range) and says what is wrong


def _at(value: str, now: datetime) -> str:
    """`value` as an ISO 8601 time; a duration counts back from `now`, one `now` for --start and
    --end, so `--start 40d` is a range of exactly 40 days."""
    try:
        return (now - timedelta(seconds=parse_duration(value))).isoformat()
    except ValueError:
        return value


# ---- the commands: (JSON answer, text for a person) ----


def _status(client: Client, args: argparse.Namespace) -> tuple[Any, str]:
    answer = client.get("status")
    return answer, render.status(answer, render.now())


def _force(client: Client, args: argparse.Namespace) -> tuple[Any, str]:
    body = _given(state=args.state, reason=args.reason)
    answer = client.post(f"circuit-breaker/{_path(args.exchange)}/force-state", body)
    return answer, render.transition(answer, args.exchange)


def _reset(client: Client, args: argparse.Namespace) -> tuple[Any, str]:
    answer = client.post(
        f"circuit-breaker/{_path(args.exchange)}/reset", _given(reason=args.reason)
    )
    return answer, render.transition(answer, args.exchange)


def _config(client: Client, args: argparse.Namespace) -> tuple[Any, str]:
    body = _given(failureThreshold=args.failure_threshold, recoveryTimeout=args.recovery_timeout,
                  monitoringWindow=args.monitoring_window, reason=args.reason)  # fmt: skip
    answer = client.patch(f"circuit-breaker/{_path(args.exchange)}/config", body)
    return answer, render.breaker_config(answer)


def _pause(client: Client, args: argparse.Namespace) -> tuple[Any, str]:
    body = _given(affectedExchange=args.exchange, reason=args.reason,
                  estimatedDuration=args.estimated_duration)  # fmt: skip
    try:
        answer = client.post("purchases/pause", body)
    except AdminTimeout as exc:
        raise AdminError(_outcome(client, exc, args.exchange, paused=True)) from None
    return answer, render.paused(answer, render.now())


def _resume(client: Client, args: argparse.Namespace) -> tuple[Any, str]:
    body = _given(exchange=args.exchange, reason=args.reason)
    try:
        answer = client.post("purchases/resume", body)
    except AdminTimeout as exc:
        raise AdminError(_outcome(client, exc, args.exchange, paused=False)) from None
    return answer, render.resumed(answer)


# How long a call the client gave up on may still commit: the exporter's statements end within
# `database.statement_timeout` (5 s by default), so after this the answer is final.
PENDING_LIMIT = 6.0


def _outcome(client: Client, timeout: AdminTimeout, exchange: str, *, paused: bool) -> str:
    """After a pause or resume that got no answer in time: was it applied? The exporter may still
    commit it after the client gave up, so ask until it shows or it no longer can, and say which."""
    verb = "pause" if paused else "resume"
    deadline = time.monotonic() + PENDING_LIMIT
    while True:
        try:
            found = client.get("purchases/status")
        except AdminError as exc:
            return f"{timeout}; whether the {verb} was applied is unknown ({exc}): check `admin status`"
        [state] = [e for e in found["exchanges"] if e["exchange"] == exchange] or [None]
        if state is None:
            return f"{timeout}; {exchange} is not in its purchases status: check `admin status`"
        # An admin's pause is a manual hold; a pause by automation alone is not this one.
        applied = state["paused"] and state["manualHold"] if paused else not state["paused"]
        if applied:
            now = "paused (manual hold)" if paused else "flowing"
            return f"{timeout}, but the {verb} was applied: purchases on {exchange} are {now}"
        if time.monotonic() >= deadline:
            return (
                f"{timeout}, and the {verb} was NOT applied "
                f"({PENDING_LIMIT:g}s later it still shows): run it again"
            )
        time.sleep(0.5)


def _route(client: Client, args: argparse.Namespace) -> tuple[Any, str]:
    body = _given(to=args.to, reason=args.reason)
    answer = client.post(f"route/{_path(args.exchange)}", body)
    return answer, f"{args.exchange}: {render.route_line(answer['route'], render.now())}"


def _retry_queue(client: Client, args: argparse.Namespace) -> tuple[Any, str]:
    answer = client.get("retry-queue", exchange=args.exchange, status=args.status,
                        limit=args.limit, offset=args.offset)  # fmt: skip
    return answer, render.retry_queue(answer, render.now())


def _impact(client: Client, args: argparse.Namespace) -> tuple[Any, str]:
    now = datetime.now(UTC)
    end = _at(args.end, now) if args.end else now.isoformat()
    answer = client.get("impact-report", start=_at(args.start, now), end=end, exchange=args.exchange,
                        reason=args.reason)  # fmt: skip
    return answer, render.impact(answer)


def _audit_log(client: Client, args: argparse.Namespace) -> tuple[Any, str]:
    answer = client.get("audit-log", exchange=args.exchange, beforeId=args.before_id,
                        limit=args.limit, offset=args.offset)  # fmt: skip
    return answer, render.audit_log(answer, render.now())


def _notices(client: Client, args: argparse.Namespace) -> tuple[Any, str]:
    answer = client.get("notices", incident=args.incident, state=args.state, kind=args.kind,
                        exchange=args.exchange, limit=args.limit, offset=args.offset)  # fmt: skip
    return answer, render.notices(answer, render.now())


def _operate_notices(client: Client, args: argparse.Namespace) -> tuple[Any, str]:
    if not args.ids and args.incident is None:
        raise AdminError(f"notices {args.action}: name the notices: ids, or --incident ID")
    body = _given(ids=args.ids or None, incident=args.incident, reason=args.reason)
    answer = client.post(f"notices/{args.action}", body)
    return answer, render.notices_changed(answer)


def _given(**fields: Any) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if value is not None}


def _path(segment: str) -> str:
    return quote(segment, safe="")


def _client(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Client:
    if args.database_url is None:
        context = tls_context(args.ca_file, args.cert_file, args.key_file)
        return AdminClient(args.url, admin_token(), args.timeout, context)
    command = args.command
    if command not in direct.DIRECT_COMMANDS:
        parser.error(
            f"--database-url: `{command}` needs a running exporter; with --database-url only "
            f"{', '.join(direct.DIRECT_COMMANDS)} work"
        )
    config = load_config(Path(args.config_file) if args.config_file else None)
    return direct.DirectClient(direct.connection(args.database_url), config)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        client = _client(parser, args)
        answer, text = args.run(client, args)
    except (AdminError, SecretError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        print(json.dumps(answer, indent=2) if args.json else text, flush=True)
    except BrokenPipeError:  # `admin audit-log | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
