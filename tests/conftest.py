"""Shared fixtures: a real PostgreSQL (throwaway, or DATABASE_URL), a fresh database per test;
and the suite's tiers.

The session migrates one template database; each test gets its own copy of it, so tests never
see each other's rows and need no cleanup of their own.

Every test is put in one tier, from what it uses, so a new test needs no marker of its own:
`stack` when it (or a fixture or helper of its module it calls) starts a program: a subprocess,
the exporter, Prometheus, Alertmanager, promtool, a drill; otherwise `db` when it uses the
database (or a PostgreSQL of its own); otherwise `unit`. `make test-fast` runs `-m "unit or db"`.
Tests that share a module's fixture are grouped for pytest-xdist's `--dist loadgroup`, so a
worker starts it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import shutil
import tempfile
import types
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from prometheus_client import disable_created_metrics

from exporter.database.migrate import migrate
from exporter.database.pool import Connection
from liquid_abt_drill.kraken_server.server import FakeKraken
from liquid_abt_drill.stack import searchable_tmp_dir, start_postgres

# The `stack` fixture and the other pytest plumbing over liquid_abt_drill.stack.
pytest_plugins = ["tests.harness"]

# One template per pytest-xdist worker (gw0, gw1, ...): with DATABASE_URL they share a server.
TEMPLATE_DB = "liquid_abt_test_template_" + os.environ.get("PYTEST_XDIST_WORKER", "main")

# As the CLI does: keeps the samples the tests read free of `_created` series.
disable_created_metrics()


def with_database(dsn: str, name: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def create_database(server_dsn: str, template: str, prefix: str = "t") -> str:
    """A copy of `template` under a new name (returned): each test's own database."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server_dsn)
    try:
        # A file copy of the small template takes half the time of PostgreSQL 15's default
        # (WAL_LOG: every page through the WAL); hundreds of tests each make one.
        file_copy = " STRATEGY FILE_COPY" if admin.get_server_version() >= (15, 0) else ""
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE {template}{file_copy}")
    finally:
        await admin.close()
    return name


async def drop_database(server_dsn: str, name: str) -> None:
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await admin.close()


@pytest.fixture(scope="session")
def pg_server_dsn() -> Iterator[str]:
    """The admin DSN of the server the tests use."""
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
        return
    folder = searchable_tmp_dir("liquid-abt-test-pg-")
    with start_postgres(folder) as server:
        yield server.dsn
    shutil.rmtree(folder, ignore_errors=True)


async def _create_template(server_dsn: str) -> None:
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {TEMPLATE_DB}")
        await admin.execute(f"CREATE DATABASE {TEMPLATE_DB}")
    finally:
        await admin.close()
    conn = await asyncpg.connect(with_database(server_dsn, TEMPLATE_DB))
    try:
        await migrate(conn, with_platform_schema=True)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def template_db(pg_server_dsn: str) -> str:
    asyncio.run(_create_template(pg_server_dsn))
    return TEMPLATE_DB


@pytest.fixture
async def database(pg_server_dsn: str, template_db: str) -> AsyncIterator[Connection]:
    """A fresh, migrated database with the platform tables, dropped after the test."""
    name = await create_database(pg_server_dsn, template_db)
    yield Connection(with_database(pg_server_dsn, name))
    await drop_database(pg_server_dsn, name)


@pytest.fixture
async def db(database: Connection) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection to the test's database, for arranging rows and reading results."""
    conn = await asyncpg.connect(database.dsn)
    yield conn
    await conn.close()


@pytest.fixture
async def kraken() -> AsyncIterator[FakeKraken]:
    """The Kraken-compatible server, in this process, healthy until a test switches its mode."""
    server = FakeKraken()
    await server.start()
    yield server
    await server.stop()


# --- Tiers ---------------------------------------------------------------------------------------

# Names whose use starts a program. A test is `stack` when its code, its fixtures' code or a
# helper function of the test modules they call (followed transitively) names one of these.
STARTS_A_PROGRAM = frozenset({
    "subprocess", "create_subprocess_exec", "create_subprocess_shell", "Popen",
    "Stack", "ManagedProcess", "require_binary", "find_binary", "run_scenario", "run_all",
    "start_exporter", "start_kraken_server", "start_prometheus", "start_alertmanager",
    "start_simulator", "EmbeddedPostgres", "webdriver",
})  # fmt: skip
# Fixtures that stand for the database (the session's server counts once a test asks for it),
# and the names of a PostgreSQL server of a test's own (the outage tests stop and start one).
DATABASE_FIXTURES = frozenset({"database", "db", "template_db", "pg_server_dsn"})
OWN_DATABASE = frozenset({"PostgresServer", "start_postgres"})
TIERS = ("unit", "db", "stack")
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def _names(code: types.CodeType) -> Iterator[str]:
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _names(const)


def _starts_a_program(
    func: Callable[..., object], seen: set[int], names: frozenset[str] | None = None
) -> bool:
    """Whether `func` names one of `names` (a program starter), directly or through this
    suite's own functions."""
    names = STARTS_A_PROGRAM if names is None else names
    with contextlib.suppress(ValueError):
        func = inspect.unwrap(func)
    code = getattr(func, "__code__", None)
    if code is None or id(code) in seen:
        return False
    seen.add(id(code))
    scope = getattr(func, "__globals__", {})
    for name in _names(code):
        if name in names:
            return True
        called = scope.get(name)
        if callable(called):
            with contextlib.suppress(ValueError):
                called = inspect.unwrap(called)
        called_code = getattr(called, "__code__", None)
        if (
            called_code is not None
            and called_code.co_filename.startswith(TESTS_DIR)
            and _starts_a_program(called, seen, names)
        ):
            return True
    return False


def tier(item: pytest.Item) -> str:
    """`stack`, `db` or `unit`, from the test's code and the fixtures it uses."""
    seen: set[int] = set()
    funcs = [getattr(item, "function", None)]
    info = getattr(item, "_fixtureinfo", None)
    for defs in info.name2fixturedefs.values() if info else ():
        funcs.extend(d.func for d in defs)
    if any(f is not None and _starts_a_program(f, seen) for f in funcs):
        return "stack"
    if DATABASE_FIXTURES & set(getattr(item, "fixturenames", ())):
        return "db"
    seen.clear()
    if any(f is not None and _starts_a_program(f, seen, OWN_DATABASE) for f in funcs):
        return "db"
    return "unit"


def _shares_a_module_fixture(item: pytest.Item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    return any(
        d.scope in ("module", "class", "package")
        for defs in (info.name2fixturedefs.values() if info else ())
        for d in defs
    )


def _database_first(item: pytest.Item) -> None:
    """Set the test's database up before anything else, so it is dropped last: an app (an
    `aiohttp_client` asked for before `database`) must stop before its database goes, or its
    loops find the database gone while the app shuts down."""
    names = getattr(item, "fixturenames", None)
    if isinstance(names, list) and "database" in names:
        names.remove("database")
        names.insert(0, "database")


# At least this much room in a RAM-backed folder before the suite's temporary files go there.
RAM_TMP_ROOM = 2 << 30


def ram_backed_tmp_root() -> str | None:
    """/dev/shm (tmpfs) when it is writable and has room, else None.

    Every test creates and drops a database: about 500 files, each created, copied and unlinked.
    On this machine's ext4 (mounted with `discard`) a create and drop costs 0.28 s of kernel
    time; on tmpfs 0.026 s. Over a thousand tests, that is most of `make test-fast`.
    """
    root = "/dev/shm"
    if not os.access(root, os.W_OK | os.X_OK):
        return None
    return root if shutil.disk_usage(root).free >= RAM_TMP_ROOM else None


def pytest_configure(config: pytest.Config) -> None:
    """Temporary files (the test PostgreSQL, the programs' folders, `tmp_path`) in RAM unless
    the environment names a TMPDIR of its own; the programs the tests start inherit it."""
    if os.environ.get("TMPDIR"):
        return
    root = ram_backed_tmp_root()
    if root:
        os.environ["TMPDIR"] = root
        tempfile.tempdir = root


# Modules whose tests (or shared fixtures) run for many seconds, longest first (from
# `--durations`). Under `--dist loadgroup` a free worker takes the next test in order: started
# first, they spread over the workers instead of ending the run on one while the others wait.
LONG_RUNNING_FIRST = (
    "tests/test_incident_drills.py", "tests/test_readme.py", "tests/test_install.py",
    "tests/rules/test_rules.py", "tests/test_demo.py", "tests/test_end_to_end.py",
    "tests/test_operator_cli.py", "tests/test_dashboards.py", "tests/test_kill_atomicity.py",
    "tests/test_failover_simulation.py", "tests/test_slo_dashboard.py",
    "tests/test_incident_simulation.py", "tests/test_webhook_properties.py",
    "tests/test_webhook_faults.py", "tests/test_simulate.py", "tests/test_work_queue.py",
)  # fmt: skip


def _start_order(item: pytest.Item) -> int:
    path = item.nodeid.split("::")[0]
    if path in LONG_RUNNING_FIRST:
        return LONG_RUNNING_FIRST.index(path)
    return len(LONG_RUNNING_FIRST)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_start_order)  # stable: each module's tests stay together and in order
    for item in items:
        _database_first(item)
        if not any(item.get_closest_marker(name) for name in TIERS):
            item.add_marker(tier(item))
        # Under pytest-xdist (`--dist loadgroup`), the tests that share a module's fixture (a
        # Prometheus stack, an app) run on one worker, which starts it once; the others spread.
        if _shares_a_module_fixture(item) and not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__ if item.module else ""))
