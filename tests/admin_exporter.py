"""A running exporter with the admin API on, over a fresh database of its own, for the tests that
use it as an operator would: the operator CLI, the property-based admin tests, the landing page.

Module-scoped fixtures build it with `running_exporter(...)`; the database is a copy of the
session's migrated template, dropped afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import create_database, drop_database, with_database
from tests.harness import ExporterProcess, start_exporter

ADMIN_TOKEN = "operator-test-token"
EXCHANGES = ["kraken", "independent_reserve"]


def admin_config(**sections: Any) -> str:
    """Two exchanges, no Kraken probe, quiet loops: only the test changes the state."""
    config: dict[str, Any] = {
        "exchanges": EXCHANGES,
        "collectors": {"interval": "1s", "timeout": "1s"},
        "kraken": {"enabled": False},
        "breaker": {"recovery_timeout": "1h"},
    }
    config.update(sections)
    return yaml.safe_dump(config, sort_keys=False)


@dataclass
class RunningExporter:
    process: ExporterProcess
    dsn: str
    token: str

    @property
    def url(self) -> str:
        return self.process.url


@contextlib.contextmanager
def running_exporter(
    server_dsn: str, template: str, tmp_dir: Path, *, config_yaml: str | None = None,
    token: str | None = ADMIN_TOKEN,
) -> Iterator[RunningExporter]:  # fmt: skip
    name = asyncio.run(create_database(server_dsn, template))
    dsn = with_database(server_dsn, name)
    env = {"LIQUID_ABT_ADMIN_TOKEN": token} if token else {}
    try:
        # A generous start: these module fixtures start while other tests load the machine.
        with start_exporter(
            tmp_dir, database_url=dsn, config_yaml=config_yaml or admin_config(), env=env,
            ready_timeout=120,
        ) as process:  # fmt: skip
            yield RunningExporter(process, dsn, token or "")
    finally:
        asyncio.run(drop_database(server_dsn, name))
