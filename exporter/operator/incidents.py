"""`admin incidents` and `admin incident-report <id|latest>`: the incidents the exporter recorded
and one incident's post-incident review (Markdown; the admin API's JSON with --json).

Kept apart from commands.py, which registers them with one call (`add_incident_commands`).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from exporter.operator import render
from exporter.operator.client import AdminError


class Client(Protocol):
    """What these commands need of the admin API client (HTTP, or direct on the database)."""

    def get(self, path: str, **params: Any) -> Any: ...

    def get_text(self, path: str, **params: Any) -> str: ...


# The paths as the admin API has them; direct.py answers the same ones from the database.
LIST_PATH = "incidents"


def review_path(reference: str) -> str:
    return f"incidents/{quote(reference, safe='')}"


def add_incident_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    text = "the incidents the exporter recorded, newest first: when purchases stopped and resumed"
    listing = commands.add_parser("incidents", parents=[common], help=text, description=text)
    listing.set_defaults(run=incidents)
    listing.add_argument("--exchange", metavar="EXCHANGE", help="only this exchange")
    listing.add_argument("--limit", type=int, default=20, metavar="N",
                         help="entries per page (default: 20, at most 1000)")  # fmt: skip
    listing.add_argument("--offset", type=int, default=0, metavar="N",
                         help="entries to skip (default: 0)")  # fmt: skip
    text = ("one incident's post-incident review as Markdown: timeline, impact by the runbook's "
            "query, times to stop and resume, customer notices, the runbooks' RCA questions")  # fmt: skip
    report = commands.add_parser("incident-report", parents=[common], help=text, description=text)
    report.set_defaults(run=incident_report)
    report.add_argument("incident", metavar="ID|latest",
                        help="an incident id from `admin incidents`, or latest")  # fmt: skip
    report.add_argument("--output", type=Path, metavar="FILE",
                        help="write the report to FILE (replaced whole) instead of stdout")  # fmt: skip


def incidents(client: Client, args: argparse.Namespace) -> tuple[Any, str]:
    answer = client.get(LIST_PATH, exchange=args.exchange, limit=args.limit, offset=args.offset)
    return answer, render_incidents(answer, render.now())


def incident_report(client: Client, args: argparse.Namespace) -> tuple[Any, str]:
    path = review_path(args.incident)
    if args.json:
        answer: Any = client.get(path)
        text = None
    else:
        answer, text = None, client.get_text(path, format="markdown")
    if args.output is None:
        return answer, text or ""
    content = text if text is not None else _json(answer)
    _write(args.output, content)
    note = f"incident report {args.incident} written to {args.output}"
    return {"incident": args.incident, "output": str(args.output)}, note


def render_incidents(answer: dict[str, Any], now: datetime) -> str:
    entries = answer["entries"]
    if not entries:
        return "no incidents recorded"
    rows = [
        [str(e["id"]), e["exchange"], render.cut(e["cause"], 40),
         render.when(e["startedAt"], now), _after(e, "stoppedAt"), _after(e, "resumedAt"),
         _span(e["durationSeconds"]) + (" so far" if e["state"] == "open" else ""), e["state"]]
        for e in entries
    ]  # fmt: skip
    headers = ["ID", "EXCHANGE", "CAUSE", "STARTED", "STOPPED", "RESUMED", "DURATION", "STATE"]
    text = render.table(headers, rows)
    if answer.get("nextOffset") is not None:
        text += f"\n{answer['total']} in all: --offset {answer['nextOffset']} for the next page"
    return text


def _after(entry: dict[str, Any], key: str) -> str:
    """When, counted from the incident's start: `+4.2 s`."""
    if not entry.get(key):
        return "-"
    gap = datetime.fromisoformat(entry[key]) - datetime.fromisoformat(entry["startedAt"])
    return "+" + _span(max(gap, timedelta(0)).total_seconds())


def _span(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def _json(answer: Any) -> str:
    return json.dumps(answer, indent=2) + "\n"


def _write(path: Path, content: str) -> None:
    """Whole or not at all: a temporary file beside it, renamed over it."""
    folder = path.resolve().parent
    try:
        handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.")
    except OSError as exc:
        raise AdminError(f"--output {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(content)
        os.replace(temporary, path)
    except OSError as exc:
        Path(temporary).unlink(missing_ok=True)
        raise AdminError(f"--output {path}: {exc.strerror or exc}") from None
