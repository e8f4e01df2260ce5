"""`liquid-abt-exporter admin ...` run as an operator runs it: a real exporter process, the CLI
as a subprocess with the token in the environment, its output and the rows it changed."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from exporter.database.embedded import free_port
from exporter.operator.commands import build_parser
from tests.admin_exporter import RunningExporter, admin_config, running_exporter
from tests.harness import wait_until


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
    # The automation writes entries of its own meanwhile (the retry filler queues the failed
    # purchases an earlier test inserted): the newest admin entry is the CLI's.
    out = ok(admin(exporter, "audit-log", "--exchange", "kraken", "--limit", "20"))
    header, *rows, paging = out.splitlines()
    assert header.split() == ["ID", "WHEN", "ACTOR", "ACTION", "RESULT", "EXCHANGE", "CAUSE"]
    by_admin = [row.split()[3:] for row in rows if row.split()[3] == "admin"]
    assert by_admin[0] == ["admin", "breaker_transition", "success", "kraken", "trial", "by",
                           "hand"]  # fmt: skip
    assert paging.startswith(f"1-{len(rows)} of ")
    out = ok(admin(exporter, "audit-log", "--exchange", "kraken", "--limit", "1"))
    assert len(out.splitlines()) == 3 and out.splitlines()[-1].startswith("1-1 of ")
    ok(admin(exporter, "breaker", "reset", "kraken"))


def test_customer_notices_list_hold_release_and_cancel(exporter: RunningExporter) -> None:
    # An incident long closed and followed by another (outside the planner's view: not the
    # exchange's latest, whose missing incident_resolved a later resume would plan): its notices
    # are arranged here.
    row, _ = query(exporter, """
        WITH i AS (INSERT INTO liquid_abt.incident_periods (exchange, cause, started_at, ended_at)
                   VALUES ('kraken', 'unavailable', now() - interval '3 hours',
                           now() - interval '170 minutes') RETURNING id),
             later AS (INSERT INTO liquid_abt.incident_periods (exchange, cause, started_at,
                                                                ended_at)
                       SELECT 'kraken', 'unavailable', now() - interval '160 minutes',
                              now() - interval '150 minutes' FROM i)  -- after i: a higher id
        INSERT INTO liquid_abt.customer_notices (incident_id, exchange, kind, seq, tenant_id,
                                                 channels, message)
        SELECT i.id, 'kraken', k.kind, 0, k.tenant, '{app_notification}', k.message
        FROM i, (VALUES ('incident_started', NULL, 'We are experiencing temporary issues'),
                        ('purchase_failed', 'tenant-7', 'Your Bitcoin purchase could not be'))
             AS k(kind, tenant, message)
        RETURNING incident_id""")  # fmt: skip
    incident = str(row["incident_id"])
    out = ok(admin(exporter, "notices", "list", "--incident", incident))
    header, *rows, paging = out.splitlines()
    assert header.split()[:6] == ["ID", "INCIDENT", "EXCHANGE", "KIND", "TENANT", "STATE"]
    assert [r.split()[3:6] for r in rows] == [["purchase_failed", "tenant-7", "queued"],
                                              ["incident_started", "all", "affected"]]  # fmt: skip
    assert paging == "1-2 of 2"
    started = rows[1].split()[0]
    assert ok(admin(exporter, "notices", "hold", started, "--reason", "review")) == (
        f"held 1 notice(s): {started}\n"
    )
    held = as_json(admin(exporter, "notices", "list", "--state", "held", "--json"))
    assert [n["id"] for n in held["entries"]] == [int(started)]
    ok(admin(exporter, "notices", "release", started))
    out = ok(admin(exporter, "notices", "cancel", "--incident", incident))
    assert out.startswith("cancelled 2 notice(s): ")
    assert ok(admin(exporter, "notices", "cancel", started)).startswith("no notice cancelled")
    result = admin(exporter, "notices", "hold")
    assert result.returncode == 1
    assert result.stderr == "error: notices hold: name the notices: ids, or --incident ID\n"


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
        (["impact-report", "--start", "2025-01-15T09:30:00"], None,
         "error: start: add a time zone offset (Z or +10:00) to '2025-01-15T09:30:00' (400)"),
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
    result = admin(exporter, "impact-report", "--start", "yesterday")
    assert result.returncode == 2
    assert ("argument --start: 'yesterday': give how long ago (90m, 2h, 3d) or an ISO 8601 time "
            "with an offset (2025-01-15T09:30:00+10:00)") in result.stderr  # fmt: skip


def test_flags_go_before_the_command_as_well_as_after_it(exporter: RunningExporter) -> None:
    """`admin --exporter.url X status`: the URL before the command wins over the environment."""
    env = {"LIQUID_ABT_EXPORTER_URL": "http://127.0.0.1:1"}
    assert as_json(admin(exporter, "--exporter.url", exporter.url, "--json", "status", env=env))[
        "version"]  # fmt: skip
    # After the command it still works, and wins over a value given before it.
    result = admin(exporter, "--exporter.url", "http://127.0.0.1:1", "status", "--json",
                   "--exporter.url", exporter.url)  # fmt: skip
    assert as_json(result)["version"]


def test_a_long_range_is_refused_in_days_not_microseconds(exporter: RunningExporter) -> None:
    result = admin(exporter, "impact-report", "--start", "40d")
    assert result.returncode == 1
    assert result.stderr == (
        "error: range too long: 40d from start to end, at most 31d "
        "(admin.impact_report_max_range): split the report (400)\n"
    )


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


# ---- a pause that gets no answer in time ----


@contextlib.contextmanager
def kraken_controls_locked(dsn: str) -> Iterator[None]:
    """Hold kraken's exchange_controls row (as a stuck replica would): a pause waits on it."""
    locked, release = threading.Event(), threading.Event()

    async def hold() -> None:
        connection = await asyncpg.connect(dsn)
        try:
            async with connection.transaction():
                await connection.execute("INSERT INTO liquid_abt.exchange_controls (exchange) "
                                         "VALUES ('kraken') ON CONFLICT DO NOTHING")  # fmt: skip
                await connection.execute("SELECT 1 FROM liquid_abt.exchange_controls "
                                         "WHERE exchange = 'kraken' FOR UPDATE")  # fmt: skip
                locked.set()
                await asyncio.to_thread(release.wait)
        finally:
            await connection.close()

    holder = threading.Thread(target=asyncio.run, args=(hold(),))
    holder.start()
    try:
        assert locked.wait(30), "the row lock was not taken"
        yield
    finally:
        release.set()
        holder.join(30)


def _pause_waiting(dsn: str) -> bool:
    """A statement of the exporter waiting on a row lock (a row lock's wait is on the holder's
    transaction, so pg_stat_activity shows it, not pg_locks' relation entries)."""
    sql = ("SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
           "AND wait_event_type = 'Lock' AND query LIKE '%exchange_controls%'")  # fmt: skip
    return bool(query(RunningExporter(None, dsn, ""), sql))  # type: ignore[arg-type]


def _pause_in_background(exporter: RunningExporter) -> subprocess.Popen[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("LIQUID_ABT_")}
    environment |= {"LIQUID_ABT_EXPORTER_URL": exporter.url,
                    "LIQUID_ABT_ADMIN_TOKEN": exporter.token}  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "exporter", "admin", "--exporter.timeout", "500ms", "pause",
         "kraken", "--reason", "slow database"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment,
    )  # fmt: skip


def test_a_timed_out_pause_that_committed_later_says_it_was_applied(
    pg_server_dsn: str, template_db: str, tmp_path: Path
) -> None:
    # Locks wait long enough here for the pause to commit once the row is free.
    config = admin_config(database={"statement_timeout": "20s", "lock_timeout": "15s"})
    with running_exporter(pg_server_dsn, template_db, tmp_path, config_yaml=config) as slow:
        with kraken_controls_locked(slow.dsn):
            cli = _pause_in_background(slow)
            wait_until(lambda: _pause_waiting(slow.dsn), timeout=60, what="the pause waiting")
            # The CLI's 0.5 s started before the exporter got the request, which was before the
            # wait showed: 1.5 s on, the CLI has given up. Then the row is released.
            time.sleep(1.5)
        stdout, stderr = cli.communicate(timeout=60)
        assert (cli.returncode, stdout) == (1, ""), stderr
        assert stderr == (
            f"error: the exporter at {slow.url} did not answer within 0.5s, but the pause was "
            "applied: purchases on kraken are paused (manual hold)\n"
        )
        [row] = query(
            slow, "SELECT purchases_paused, manual_hold FROM liquid_abt.exchange_controls"
        )
        assert tuple(row) == (True, True)


def test_a_timed_out_pause_that_failed_says_it_was_not_applied(exporter: RunningExporter) -> None:
    ok(admin(exporter, "resume", "kraken"))
    # The row stays locked past the exporter's lock_timeout (2 s): its pause fails.
    with kraken_controls_locked(exporter.dsn):
        cli = _pause_in_background(exporter)
        stdout, stderr = cli.communicate(timeout=60)
    assert (cli.returncode, stdout) == (1, ""), stderr
    assert stderr == (
        f"error: the exporter at {exporter.url} did not answer within 0.5s, and the pause was NOT "
        "applied (6s later it still shows): run it again\n"
    )
