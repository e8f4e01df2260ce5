"""The harness itself: `wait_until`, program logs and stops, and the documented example."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import NoReturn

import pytest

from exporter.database.pool import Connection
from tests.harness import (
    DeadlinePassed,
    ManagedProcess,
    Stack,
    StackError,
    exporter_config,
    shortened_rules,
    wait_until,
    webhook_alertmanager_config,
)


def test_wait_until_returns_the_first_truthy_value() -> None:
    answers = iter([None, 0, "", "ready"])
    assert wait_until(lambda: next(answers), interval=0) == "ready"


def test_wait_until_names_what_did_not_happen() -> None:
    with pytest.raises(DeadlinePassed, match=r"^the breaker opening not met within 0.05s$"):
        wait_until(lambda: False, timeout=0.05, what="the breaker opening")


def test_wait_until_takes_a_refused_connection_for_not_yet() -> None:
    def refused() -> bool:
        raise ConnectionRefusedError("nobody listening")

    with pytest.raises(DeadlinePassed, match=r"\(last error: nobody listening\)$"):
        wait_until(refused, timeout=0.05)


def test_wait_until_hands_the_timeout_to_on_timeout() -> None:
    def fail(message: str) -> NoReturn:
        raise RuntimeError(f"with the log: {message}")

    with pytest.raises(RuntimeError, match="^with the log: condition not met"):
        wait_until(lambda: False, timeout=0.01, on_timeout=fail)


async def test_wait_until_awaits_an_async_condition() -> None:
    calls = 0

    async def third_time() -> int | None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        return calls if calls == 3 else None

    assert await wait_until(third_time, interval=0) == 3
    with pytest.raises(DeadlinePassed):
        await wait_until(lambda: asyncio.sleep(0, result=False), timeout=0.05)


def test_a_program_that_dies_fails_with_its_log(tmp_path: Path) -> None:
    (tmp_path / "dies").mkdir()
    script = "import sys; print('cannot bind :9898'); sys.exit(3)"
    process = ManagedProcess("dies", [sys.executable, "-c", script], tmp_path / "dies")
    with process, pytest.raises(StackError, match=r"(?s)dies exited with 3 before .*:9898"):
        process.wait_http("/-/ready", base="http://127.0.0.1:9")
    assert (tmp_path / "dies.log").read_text() == "cannot bind :9898\n"


def test_stopping_a_process_group_stops_what_it_started(tmp_path: Path) -> None:
    """As `make demo` runs the demo: stopping make must not leave the demo running."""
    (tmp_path / "parent").mkdir()
    child = "import time; time.sleep(600)"
    parent = (
        f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', {child!r}]); "
        "print(p.pid, flush=True); time.sleep(600)"
    )
    process = ManagedProcess(
        "parent", [sys.executable, "-c", parent], tmp_path / "parent", process_group=True
    )
    pid = int(wait_until(lambda: process.log_text().strip(), what="the child's pid"))
    process.stop()
    assert not Path(f"/proc/{pid}").exists() or "Z" in _state(pid), "the child was stopped too"


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]


def test_the_documented_example_runs(stack: Stack, database: Connection, tmp_path: Path) -> None:
    """The example of drill/liquid_abt_drill/stack/__init__.py, as written there."""
    kraken = stack.kraken_server()
    config = exporter_config(kraken.url, breaker={"failure_threshold": 3})
    env = {"LIQUID_ABT_WEBHOOK_TOKEN": "t"}
    exporters = [
        stack.exporter(database_url=database.dsn, config_yaml=config, env=env) for _ in range(2)
    ]
    (tmp_path / "token").write_text("t")
    alertmanager = stack.alertmanager(
        webhook_alertmanager_config([e.url for e in exporters], tmp_path / "token")
    )
    prometheus = stack.prometheus(
        [e.target for e in exporters], shortened_rules(tmp_path / "rules", "2s"), [alertmanager.url]
    )
    kraken.set_mode("down")
    prometheus.wait_for('ALERTS{alertname="ExchangeApiDown", alertstate="firing"}')
    exporters[1].wait_for_metric('liquid_abt_purchases_paused{exchange="kraken"} 1.0', timeout=60)
    assert [e.name for e in exporters] == ["exporter", "exporter-2"]
    assert (tmp_path / "exporter-2.log").exists()
