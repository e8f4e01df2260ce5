"""`liquid-abt-exporter admin --database-url ...` with no exporter running: every replica is down
(`LiquidAbtExporterDown`) and the operator still pauses, resumes and reads the state, in the same
audited transactions as the admin API, against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.admin_exporter import admin_config
from tests.conftest import create_database, drop_database, with_database


@pytest.fixture
def dsn(pg_server_dsn: str, template_db: str) -> Iterator[str]:
    """A migrated database no exporter process uses."""
    name = asyncio.run(create_database(pg_server_dsn, template_db))
    yield with_database(pg_server_dsn, name)
    asyncio.run(drop_database(pg_server_dsn, name))


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.yml"
    path.write_text(admin_config())  # kraken and independent_reserve
    return path


def admin(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI with no admin token and no exporter URL: only the database."""
    environment = {k: v for k, v in os.environ.items()
                   if not k.startswith(("LIQUID_ABT_", "DATABASE_"))}  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "exporter", "admin", *args],
        capture_output=True, text=True, env=environment, timeout=60,
    )  # fmt: skip


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}"
    assert result.stderr == ""
    return result.stdout


def rows(dsn: str, sql: str) -> list[asyncpg.Record]:
    async def fetch() -> list[asyncpg.Record]:
        connection = await asyncpg.connect(dsn)
        try:
            return await connection.fetch(sql)
        finally:
            await connection.close()

    return asyncio.run(fetch())


def test_pause_status_and_resume_work_with_no_exporter_running(dsn: str, config_file: Path) -> None:
    db = ["--database-url", dsn, "--config.file", str(config_file)]
    out = ok(admin(*db, "pause", "kraken", "--reason", "every replica down",
                   "--estimated-duration", "30 minutes"))  # fmt: skip
    assert out.startswith("kraken: purchases paused since "), out
    assert "manual hold" in out

    [control] = rows(dsn, "SELECT * FROM liquid_abt.exchange_controls WHERE exchange = 'kraken'")
    assert control["purchases_paused"] and control["manual_hold"]
    assert control["pause_reason"] == "every replica down"
    [entry] = rows(dsn, "SELECT * FROM liquid_abt.audit_log ORDER BY id")
    assert (entry["actor"], entry["action"], entry["exchange"], entry["cause"]) == (
        "admin", "pause_purchases", "kraken", "every replica down",
    )  # fmt: skip

    # Flags before the command work as after it; the screen is the one `admin status` shows.
    out = ok(admin("--database-url", dsn, "--config.file", str(config_file), "status"))
    [kraken] = [line for line in out.splitlines() if line.startswith("kraken ")]
    assert "PAUSED (held)" in kraken, out
    assert "independent_reserve" in out
    assert "every replica down, expected to last 30 minutes" in out

    out = ok(admin(*db, "resume", "kraken", "--reason", "exporters back"))
    assert out.startswith("kraken: "), out
    [control] = rows(dsn, "SELECT * FROM liquid_abt.exchange_controls WHERE exchange = 'kraken'")
    assert not control["purchases_paused"] and not control["manual_hold"]
    actions = [
        r["action"] for r in rows(dsn, "SELECT action FROM liquid_abt.audit_log ORDER BY id")
    ]
    assert actions == ["pause_purchases", "resume_purchases"]


def test_the_json_answer_is_the_admin_apis(dsn: str, config_file: Path) -> None:
    import json

    answer: dict[str, Any] = json.loads(
        ok(admin("--database-url", dsn, "--config.file", str(config_file), "--json", "status"))
    )
    assert [e["exchange"] for e in answer["exchanges"]] == ["kraken", "independent_reserve"]
    assert answer["exchanges"][0]["breaker"]["state"] == "CLOSED"
    assert answer["exchanges"][0]["purchases"]["paused"] is False


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["pause", "binance", "--reason", "x"],
         "error: unknown exchange 'binance': configured are kraken, independent_reserve "
         "(the exchanges of --config.file)\n"),
        (["audit-log"], "--database-url: `audit-log` needs a running exporter; with "
         "--database-url only status, pause, resume, incidents, incident-report work"),
    ],
)  # fmt: skip
def test_what_it_cannot_do_is_named(
    dsn: str, config_file: Path, args: list[str], message: str
) -> None:
    result = admin("--database-url", dsn, "--config.file", str(config_file), *args)
    assert result.returncode in (1, 2) and message in result.stderr, result.stderr
    assert rows(dsn, "SELECT * FROM liquid_abt.audit_log") == []


def test_a_password_in_the_url_and_an_unreachable_database_are_refused_by_name() -> None:
    result = admin("--database-url", "postgresql://u:secret@127.0.0.1:1/x", "status")
    assert result.returncode == 1
    assert "--database-url: the DSN contains a password" in result.stderr
    assert "secret" not in result.stderr
    result = admin("--database-url", "postgresql://u@127.0.0.1:1/x", "status")
    assert result.returncode == 1
    assert result.stderr.startswith("error: database postgresql://u@127.0.0.1:1/x: "), result.stderr
