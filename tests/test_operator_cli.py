"""`liquid-abt-exporter admin ...` run as an operator runs it: a real exporter process, the CLI
as a subprocess with the token in the environment, its output and the rows it changed."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from exporter.database.embedded import free_port
from exporter.operator.commands import build_parser
from tests.admin_exporter import RunningExporter, running_exporter


@pytest.fixture(scope="module")
def exporter(
    pg_server_dsn: str, template_db: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningExporter]:
    with running_exporter(pg_server_dsn, template_db, tmp_path_factory.mktemp("cli")) as running:
        yield running


def admin(
    exporter: RunningExporter, *args: str, token: str | None = None, env: dict | None = None
) -> subprocess.CompletedProcess[str]:
    """The CLI as a person types it, with the URL and the token in the environment."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("LIQUID_ABT_")}
    environment |= {"LIQUID_ABT_EXPORTER_URL": exporter.url,
                    "LIQUID_ABT_ADMIN_TOKEN": exporter.token if token is None else token,
                    **(env or {})}  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "exporter", "admin", *args],
        capture_output=True, text=True, env=environment, timeout=60,
    )  # fmt: skip


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}"
    assert result.stderr == ""
    return result.stdout


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(result))


def query(exporter: RunningExporter, sql: str, *args: Any) -> list[asyncpg.Record]:
    async def fetch() -> list[asyncpg.Record]:
        connection = await asyncpg.connect(exporter.dsn)
        try:
            return await connection.fetch(sql, *args)
        finally:
            await connection.close()

    return asyncio.run(fetch())


def lines_of(text: str, word: str) -> list[str]:
    return [line for line in text.splitlines() if word in line]


# ---- status ----


def test_status_shows_every_exchange_in_a_table(exporter: RunningExporter) -> None:
    out = ok(admin(exporter, "status"))
    assert out.startswith("liquid-abt-exporter ") and "dry run off" in out.splitlines()[0]
    header = out.splitlines()[2]
    assert header.split() == ["EXCHANGE", "INCIDENT", "BREAKER", "REPLICAS", "DOWN", "PURCHASES",
                              "API", "RATE", "RETRY", "QUEUE", "LAST", "VERIFICATION"]  # fmt: skip
    [row] = [line for line in out.splitlines()[3:5] if line.startswith("independent_reserve")]
    assert row.split()[:6] == ["independent_reserve", "normal", "CLOSED", "0/0", "flowing", "100%"]


def test_status_json_is_the_admin_api_answer(exporter: RunningExporter) -> None:
    status = as_json(admin(exporter, "status", "--json"))
    assert [e["exchange"] for e in status["exchanges"]] == ["kraken", "independent_reserve"]
    assert set(status["exchanges"][0]) >= {"incident", "breaker", "purchases", "apiRateMultiplier",
                                          "retryQueue", "lastVerification", "recentActions"}  # fmt: skip


# ---- pause and resume: the runbook's manual hold ----


def test_pause_then_resume(exporter: RunningExporter) -> None:
    out = ok(admin(exporter, "pause", "kraken", "--reason", "Exchange API maintenance",
                   "--estimated-duration", "30 minutes"))  # fmt: skip
    assert out.startswith("kraken: purchases paused since ")
    assert "manual hold: only `admin resume` lifts it" in out
    [row] = query(exporter, "SELECT * FROM liquid_abt.exchange_controls WHERE exchange = 'kraken'")
    assert (row["purchases_paused"], row["manual_hold"], row["pause_reason"]) == (
        True, True, "Exchange API maintenance",
    )  # fmt: skip
    status = ok(admin(exporter, "status"))
    [row_line] = [line for line in status.splitlines() if line.startswith("kraken ")]
    assert "PAUSED (held)" in row_line
    assert "Exchange API maintenance, expected to last 30 minutes" in status
    assert ok(admin(exporter, "resume", "kraken", "--reason", "Kraken is back")) == (
        "kraken: purchases resumed\n"
    )
    [row] = query(exporter, "SELECT * FROM liquid_abt.exchange_controls WHERE exchange = 'kraken'")
    assert (row["purchases_paused"], row["manual_hold"]) == (False, False)


# ---- circuit breaker ----


def test_breaker_force_config_and_reset(exporter: RunningExporter) -> None:
    out = ok(admin(exporter, "breaker", "force", "independent_reserve", "open",
                   "--reason", "key rotation"))  # fmt: skip
    assert out.startswith("independent_reserve: breaker CLOSED -> OPEN (manual hold")
    assert "nothing changed" in ok(
        admin(exporter, "breaker", "force", "independent_reserve", "OPEN")
    )
    out = ok(admin(exporter, "breaker", "config", "independent_reserve", "--failure-threshold", "3",
                   "--recovery-timeout", "45s", "--monitoring-window", "10m"))  # fmt: skip
    assert out == (
        "independent_reserve: the breaker opens after 3 probe rounds in a row unanswered, "
        "verifies recovery after 45s of health, and counts a re-open within 10m of closing as a "
        "relapse\n"
    )
    [row] = query(exporter, "SELECT * FROM liquid_abt.circuit_breakers WHERE exchange = $1",
                  "independent_reserve")  # fmt: skip
    assert (row["state"], row["failure_threshold"], row["recovery_timeout_ms"],
            row["monitoring_window_ms"]) == ("open", 3, 45000, 600000)  # fmt: skip
    out = ok(admin(exporter, "breaker", "reset", "independent_reserve"))
    assert out.startswith("independent_reserve: breaker OPEN -> CLOSED (audit entry ")


# ---- reading: retry queue, impact report, audit log ----


def test_retry_queue_pages_with_the_total(exporter: RunningExporter) -> None:
    query(exporter, """INSERT INTO liquid_abt.retry_queue
                           (purchase_id, exchange, tenant_id, amount_aud, next_attempt_at)
                       SELECT 'q' || n, 'kraken', 'tenant-' || n, 10.5 * n,
                              now() + n * interval '1 minute'
                       FROM generate_series(1, 3) AS n""")  # fmt: skip
    out = ok(admin(exporter, "retry-queue", "--exchange", "kraken", "--limit", "2"))
    assert [line.split()[1] for line in out.splitlines()[1:3]] == ["q1", "q2"]
    assert out.splitlines()[-1] == "1-2 of 3; next page: --offset 2"
    page = as_json(admin(exporter, "retry-queue", "--offset", "2", "--json"))
    assert [e["purchaseId"] for e in page["entries"]] == ["q3"] and page["total"] == 3


def test_impact_report(exporter: RunningExporter) -> None:
    query(exporter, """INSERT INTO bitcoin_purchases
                           (tenant_id, amount_aud, status, failure_reason, exchange_provider,
                            created_at)
                       VALUES ('a', 100, 'failed', 'EService:Unavailable', 'kraken',
                               now() - interval '30 minutes'),
                              ('b', 50.25, 'failed', 'EAPI:Rate limit exceeded', 'kraken',
                               now() - interval '20 minutes')""")  # fmt: skip
    out = ok(admin(exporter, "impact-report", "--start", "1h"))
    assert "affected purchases 2, total AUD 150.25, affected tenants 2" in out
    assert lines_of(out, "exchange_unavailable")[0].split() == ["exchange_unavailable", "1",
                                                                "100.00", "1"]  # fmt: skip
    report = as_json(admin(exporter, "impact-report", "--start", "1h", "--reason",
                           "rate_limited", "--json"))  # fmt: skip
    assert (report["affectedPurchases"], report["totalAmountAud"]) == (1, "50.25")


def test_audit_log_lists_what_the_cli_did(exporter: RunningExporter) -> None:
    ok(admin(exporter, "breaker", "force", "kraken", "HALF_OPEN", "--reason", "trial by hand"))
    out = ok(admin(exporter, "audit-log", "--exchange", "kraken", "--limit", "1"))
    header, row, paging = out.splitlines()
    assert header.split() == ["ID", "WHEN", "ACTOR", "ACTION", "RESULT", "EXCHANGE", "CAUSE"]
    assert row.split()[3:] == ["admin", "breaker_transition", "success", "kraken", "trial", "by",
                               "hand"]  # fmt: skip
    assert paging.startswith("1-1 of ")
    ok(admin(exporter, "breaker", "reset", "kraken"))


# ---- where the token and the URL come from ----


def test_the_token_from_a_file_and_the_url_from_the_flag(
    exporter: RunningExporter, tmp_path: Path
) -> None:
    token_file = tmp_path / "admin-token"
    token_file.write_text(exporter.token + "\n")
    result = admin(exporter, "status", "--json", f"--exporter.url={exporter.url}", token="",
                   env={"LIQUID_ABT_ADMIN_TOKEN_FILE": str(token_file),
                        "LIQUID_ABT_EXPORTER_URL": "http://127.0.0.1:1"})  # fmt: skip
    assert as_json(result)["version"]


# ---- errors: one line that says what to do, exit 1 ----


@pytest.mark.parametrize(
    ("args", "token", "message"),
    [
        (["status", "--exporter.url", "http://127.0.0.1:{free}"], None,
         "error: cannot reach the exporter at http://127.0.0.1:{free}: connection refused "
         "(is it running? set --exporter.url or LIQUID_ABT_EXPORTER_URL)"),
        (["status"], "wrong-token",
         "error: the exporter refused the admin token (401): check LIQUID_ABT_ADMIN_TOKEN or "
         "LIQUID_ABT_ADMIN_TOKEN_FILE"),
        (["pause", "binance", "--reason", "x"], None,
         "error: unknown exchange 'binance': configured are kraken, independent_reserve (404)"),
        (["status"], "",
         "error: no admin token: set LIQUID_ABT_ADMIN_TOKEN or LIQUID_ABT_ADMIN_TOKEN_FILE (the "
         "exporter's admin token)"),
        (["impact-report", "--start", "yesterday"], None,
         "error: start: not an ISO 8601 time: 'yesterday' (400)"),
        (["status", "--exporter.url", "{url}/not-here"], None,
         "error: {url}/not-here answered 404 without the admin API's JSON: is this a "
         "liquid-abt-exporter?"),
    ],
)  # fmt: skip
def test_failures_are_one_line_saying_what_to_do(
    exporter: RunningExporter, args: list[str], token: str | None, message: str
) -> None:
    values = {"free": str(free_port()), "url": exporter.url}
    result = admin(exporter, *[a.format(**values) for a in args], token=token)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == message.format(**values) + "\n"


def test_bad_flags_are_usage_errors(exporter: RunningExporter) -> None:
    result = admin(exporter, "breaker", "config", "kraken", "--recovery-timeout", "45")
    assert result.returncode == 2
    assert "argument --recovery-timeout: '45': give a unit, like 45s or 10m" in result.stderr


# ---- help ----


def subcommands(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from subcommands(sub)


def test_every_flag_of_every_command_is_described() -> None:
    undescribed = [
        f"{sub.prog} {action.dest}"
        for sub in subcommands(build_parser())
        for action in sub._actions
        if not isinstance(action, argparse._SubParsersAction) and not action.help
    ]
    assert undescribed == []


def test_help_names_where_the_token_and_the_url_come_from() -> None:
    result = subprocess.run([sys.executable, "-m", "exporter", "admin", "status", "--help"],
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "--exporter.url URL the running exporter (env LIQUID_ABT_EXPORTER_URL" in text
    assert "--json print the admin API's JSON answer as is, for scripts" in text
    description = " ".join(build_parser().description.split())
    assert "LIQUID_ABT_ADMIN_TOKEN or LIQUID_ABT_ADMIN_TOKEN_FILE" in description
