"""The embedded PostgreSQL outside the checkout (issue 20.8): the demo's server starts empty every
time, and `make clean` removes what the project put under /var/tmp.

As root, a folder PostgreSQL's own user cannot reach (a checkout in `mktemp -d`) has its data
moved under RUNTIME_ROOT; the tests point RUNTIME_ROOT at a folder of their own.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from exporter.database import embedded
from exporter.database.embedded import BASE_DIR_FILE, clean_runtime_root
from tests.harness import REPO, searchable_tmp_dir, start_postgres


@pytest.fixture
def runtime_root(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A RUNTIME_ROOT of the test's own, reachable by the server's user as /var/tmp is."""
    folder = searchable_tmp_dir("liquid-abt-runtime-")
    monkeypatch.setattr(embedded, "RUNTIME_ROOT", folder / "root")
    yield folder / "root"
    shutil.rmtree(folder, ignore_errors=True)


def _query(dsn: str, sql: str) -> object:
    async def run() -> object:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    import asyncio

    return asyncio.run(run())


def test_the_demo_s_database_starts_empty_every_time_and_leaves_nothing_outside(
    runtime_root: Path,
) -> None:
    """What `make demo` twice did: the second run reused the first one's rows ("backfill
    skipped", a stale page). The private folder (0700) is what `mktemp -d` gives."""
    private = Path(tempfile.mkdtemp(prefix="liquid-abt-private-"))  # 0700, as mktemp -d
    try:
        with start_postgres(private / "demo") as server:
            moved = server.server.moved
            # As root the server's user cannot reach a private folder: its data moves.
            assert moved == (embedded._run_as_user() is not None)
            if moved:
                assert server.server.run_dir.parent == runtime_root
                marker = server.server.run_dir / BASE_DIR_FILE
                assert marker.read_text().strip() == str(private / "demo" / "postgres")
            _query(server.dsn, "CREATE TABLE left_behind AS SELECT 1 AS n")
            assert _query(server.dsn, "SELECT count(*) FROM left_behind") == 1
            server.stop()  # a restart (the outage tests make one) keeps the data
            server.start()
            assert _query(server.dsn, "SELECT count(*) FROM left_behind") == 1
        assert not list(runtime_root.glob("data-*")), "the stopped server left its data behind"
        with start_postgres(private / "demo") as again:
            assert _query(again.dsn, "SELECT to_regclass('left_behind') IS NULL") is True
    finally:
        subprocess.run(["rm", "-rf", str(private)], check=True)


def _leftover(root: Path, name: str, base_dir: Path | None) -> Path:
    folder = root / name
    (folder / "data").mkdir(parents=True)
    if base_dir is not None:
        (folder / BASE_DIR_FILE).write_text(f"{base_dir}\n")
    return folder


def test_clean_removes_the_checkout_s_folders_and_the_orphans_then_the_binaries(
    tmp_path: Path,
) -> None:
    root, checkout, elsewhere = tmp_path / "root", tmp_path / "checkout", tmp_path / "elsewhere"
    (checkout / ".data").mkdir(parents=True)
    (elsewhere / "postgres").mkdir(parents=True)  # another checkout, still there
    ours = _leftover(root, "data-aaa", checkout / ".data" / "demo" / "postgres")
    orphan = _leftover(root, "data-bbb", tmp_path / "deleted-since" / "postgres")
    theirs = _leftover(root, "data-ccc", elsewhere / "postgres")
    unknown = _leftover(root, "data-ddd", None)
    (root / "install-0123").mkdir()
    assert set(clean_runtime_root(checkout, root)) == {ours, orphan}
    assert theirs.exists() and unknown.exists() and (root / "install-0123").exists()
    # Once no data folder is left, the copied binaries and the root go too.
    for folder in (theirs, unknown):
        subprocess.run(["rm", "-rf", str(folder)], check=True)
    assert clean_runtime_root(checkout, root) == [root / "install-0123", root]
    assert not root.exists()
    assert clean_runtime_root(checkout, root) == []


def test_clean_keeps_the_folder_of_a_running_server(tmp_path: Path) -> None:
    root, checkout = tmp_path / "root", tmp_path / "checkout"
    checkout.mkdir()
    running = _leftover(root, "data-aaa", checkout / "pg")
    # A live pid (this process) in postmaster.pid: the server is running.
    (running / "data" / "postmaster.pid").write_text(f"{__import__('os').getpid()}\n")
    assert clean_runtime_root(checkout, root) == []
    (running / "data" / "postmaster.pid").write_text("999999999\n")  # stale after a crash
    assert clean_runtime_root(checkout, root)[0] == running


def test_make_clean_runs_the_cleaner_with_the_system_python() -> None:
    dry = subprocess.run(
        ["make", "-n", "-C", str(REPO), "clean"], capture_output=True, text=True, timeout=60
    )
    assert dry.returncode == 0, dry.stderr
    assert f"-m exporter.database.embedded clean {REPO}" in dry.stdout
    # The command works without the venv (make clean removes it): only the standard library.
    usage = subprocess.run(
        [sys.executable, "-I", "-c", "import sys; sys.path.insert(0, sys.argv[1]); "
         "from exporter.database.embedded import main; raise SystemExit(main(['clean', '/nonexistent-checkout']))",
         str(REPO)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert usage.returncode == 0, usage.stderr
