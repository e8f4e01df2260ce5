"""The whole loop as real programs on 127.0.0.1: the one place that starts and stops them.

`liquid-abt-drill demo` and the end-to-end tests both build on this package (tests through
`tests/harness.py`, a few pytest fixtures over it). Every program runs in a folder of its own
with its log beside it (`<folder>/exporter.log`, `<folder>/exporter/`); a second program of the
same kind gets `exporter-2`. Ports are free ports unless given. Starting returns only once the
program answers (`/-/ready`, or the control port of the Kraken-compatible server); a program that
dies or does not answer in time raises `StackError` with the tail of its log.

An end-to-end test with two exporters on one database, the shipped rules with `for:` cut to
2 s, and Alertmanager calling both webhooks (`database` is the fixture of tests/conftest.py;
tests/test_stack.py runs this very example)::

    from tests.harness import Stack, exporter_config, shortened_rules
    from tests.harness import webhook_alertmanager_config

    def test_outage(stack: Stack, database, tmp_path):   # `stack` stops it all afterwards
        kraken = stack.kraken_server()
        config = exporter_config(kraken.url, breaker={"failure_threshold": 3})
        env = {"LIQUID_ABT_WEBHOOK_TOKEN": "t"}
        exporters = [stack.exporter(database_url=database.dsn, config_yaml=config, env=env)
                     for _ in range(2)]
        (tmp_path / "token").write_text("t")
        alertmanager = stack.alertmanager(
            webhook_alertmanager_config([e.url for e in exporters], tmp_path / "token"))
        prometheus = stack.prometheus(
            [e.target for e in exporters], shortened_rules(tmp_path / "rules", "2s"),
            [alertmanager.url])
        kraken.set_mode("down")
        prometheus.wait_for('ALERTS{alertname="ExchangeApiDown", alertstate="firing"}')
        exporters[1].wait_for_metric(
            'liquid_abt_purchases_paused{exchange="kraken"} 1.0', timeout=60)

Outside pytest, `with Stack(folder) as stack:` does the same.

What each program offers:

- `ExporterProcess`: `url`, `target` (host:port for Prometheus), `get(path)`, `metrics()`,
  `wait_for_metric(line)`, `stop()` (the exit code), `log_text()`.
- `KrakenServerProcess`: `url` (give it to `kraken.base_url`), `set_mode(mode, latency=...)`.
- `SecondaryExchangeProcess` (`stack.secondary_exchange("independentreserve")` or
  `"btcmarkets"`): `set_mode(...)` as Kraken's (`down`, `hanging`, `server_error` with
  `http_status=503`, `thin_book`, `price_spike`...), `set_market(price=..., spike=...,
  balances={"AUD": "100"})`, `config_section()` for its config section with `role: secondary`
  from `failover_exchanges()`.
- `PrometheusProcess`: `query(expr)`, `wait_for(expr, condition)`, `alerts()`, `firing()`.
- `AlertmanagerProcess`: `alerts()`, `post_alerts(alerts)`, `status()`; an HA pair takes
  `cluster_listen` and `peers`.
- `PostgresServer`: `dsn`; the simulator (`stack.simulator(database_url=..., args=[...])`) plays
  the platform against it.

`wait_until(condition, timeout=..., what=...)` is the one way to wait, in tests and in the demo:
a condition and a deadline, never a bare sleep; `await wait_until(async_condition)` in async
code. Logs of a failed test stay in its `tmp_path`: `<name>.log` per program.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

from .monitoring import (
    ALERTMANAGER_BINARIES,
    EXPORTER_JOB,
    AlertmanagerProcess,
    PrometheusProcess,
    PrometheusQueryError,
    alerts_dir,
    prometheus_config,
    rule_files,
    shortened_rules,
    start_alertmanager,
    start_prometheus,
    webhook_alertmanager_config,
)
from .process import (
    DEFAULT_TIMEOUT,
    INSTALL_HINT,
    ManagedProcess,
    MissingBinary,
    find_binary,
    http_request,
    python_env,
    source_root,
)
from .services import (
    ExporterProcess,
    KrakenServerProcess,
    PostgresServer,
    SecondaryExchangeProcess,
    exporter_config,
    failover_exchanges,
    searchable_tmp_dir,
    start_exporter,
    start_kraken_server,
    start_postgres,
    start_secondary_exchange,
    start_simulator,
)
from .waiting import DeadlinePassed, StackError, wait_until

__all__ = [
    "ALERTMANAGER_BINARIES", "DEFAULT_TIMEOUT", "EXPORTER_JOB", "INSTALL_HINT",
    "AlertmanagerProcess", "DeadlinePassed", "ExporterProcess", "KrakenServerProcess",
    "ManagedProcess", "MissingBinary", "PostgresServer", "PrometheusProcess",
    "PrometheusQueryError", "SecondaryExchangeProcess", "Stack", "StackError", "alerts_dir",
    "exporter_config", "failover_exchanges",
    "find_binary", "http_request", "prometheus_config", "python_env", "rule_files",
    "searchable_tmp_dir", "shortened_rules", "source_root", "start_alertmanager",
    "start_exporter", "start_kraken_server", "start_postgres", "start_prometheus",
    "start_secondary_exchange",
    "start_simulator", "wait_until", "webhook_alertmanager_config",
]  # fmt: skip


class Stack:
    """Starts programs in one folder and stops them all on `close()`, newest first.

    Each method takes the keyword arguments of its `start_*` function, the folder aside.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._started = contextlib.ExitStack()

    def postgres(self, **options: Any) -> PostgresServer:
        return self._started.enter_context(start_postgres(self.folder, **options))

    def kraken_server(self, **options: Any) -> KrakenServerProcess:
        return self._started.enter_context(start_kraken_server(self.folder, **options))

    def secondary_exchange(self, exchange: str, **options: Any) -> SecondaryExchangeProcess:
        """A fake Independent Reserve or BTC Markets (`role: secondary` in the exporter's
        config: `exchanges=failover_exchanges()`, `independentreserve=fake.config_section()`)."""
        process = start_secondary_exchange(self.folder, exchange, **options)
        return self._started.enter_context(process)

    def exporter(self, **options: Any) -> ExporterProcess:
        return self._started.enter_context(start_exporter(self.folder, **options))

    def alertmanager(self, config_yaml: str, **options: Any) -> AlertmanagerProcess:
        return self._started.enter_context(start_alertmanager(self.folder, config_yaml, **options))

    def prometheus(
        self, scrape_targets: Sequence[str], *args: Any, **options: Any
    ) -> PrometheusProcess:
        process = start_prometheus(self.folder, scrape_targets, *args, **options)
        return self._started.enter_context(process)

    def simulator(self, **options: Any) -> ManagedProcess:
        return self._started.enter_context(start_simulator(self.folder, **options))

    def close(self) -> None:
        self._started.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
