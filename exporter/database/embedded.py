"""A throwaway PostgreSQL server in a local folder, for `make run` without a database and for tests.

The binaries come from, in order: $PG_BIN_DIR, the `pgserver` wheel (a PostgreSQL build shipped on
PyPI), the system's /usr/lib/postgresql/*/bin, then $PATH. PostgreSQL refuses to run as root, so as
root the server runs as an unprivileged system user.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
from pathlib import Path


class EmbeddedPostgresError(Exception):
    """The embedded server could not be found, initialised or started."""


def find_bin_dir() -> Path:
    candidates: list[Path] = []
    if os.environ.get("PG_BIN_DIR"):
        candidates.append(Path(os.environ["PG_BIN_DIR"]))
    # Located without importing pgserver: its import has side effects (runtime folders, warnings).
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.origin:
        candidates.append(Path(spec.origin).parent / "pginstall" / "bin")
    system = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True
    )
    candidates += [Path(p) for p in system]
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).parent)
    for candidate in candidates:
        if (candidate / "pg_ctl").exists() and (candidate / "initdb").exists():
            return candidate
    raise EmbeddedPostgresError(
        "no PostgreSQL server binaries found: `pip install pgserver`, install the "
        "postgresql package, set PG_BIN_DIR, or give a DATABASE_URL"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as_user() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise EmbeddedPostgresError("running as root and no unprivileged user (postgres, nobody)")


class EmbeddedPostgres:
    """Owns one data folder; `start()` initialises it on first use and listens on 127.0.0.1."""

    def __init__(self, base_dir: Path, port: int | None = None) -> None:
        self.base_dir = base_dir.resolve()
        self.data_dir = self.base_dir / "data"
        self.log_file = self.base_dir / "postgres.log"
        self.port = port or free_port()
        self.bin_dir = find_bin_dir()
        self._user = _run_as_user()

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        kwargs: dict = {}
        if self._user is not None:
            kwargs = {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}
        return subprocess.run(
            [str(self.bin_dir / tool), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.base_dir,
            **kwargs,
        )

    def _prepare_folder(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if self._user is not None:
            os.chown(self.base_dir, self._user.pw_uid, self._user.pw_gid)
            # The server's user must be able to reach its folder through every parent.
            for parent in self.base_dir.parents:
                if not os.stat(parent).st_mode & 0o001:
                    raise EmbeddedPostgresError(
                        f"{parent} is not searchable by user {self._user.pw_name}: "
                        "choose another data folder (--embedded-db.dir) or give a DATABASE_URL"
                    )

    def initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def running(self) -> bool:
        return (
            self.initialised()
            and self._run("pg_ctl", "status", "-D", str(self.data_dir)).returncode == 0
        )

    def start(self) -> None:
        self._prepare_folder()
        if not self.initialised():
            result = self._run(
                "initdb", "-D", str(self.data_dir), "-U", "postgres",
                "--auth=trust", "--encoding=UTF8", "--no-sync",
            )  # fmt: skip
            if result.returncode != 0:
                raise EmbeddedPostgresError(f"initdb failed: {result.stderr.strip()}")
        if self.running():  # left over from a run that was killed
            self.stop()
        options = f"-p {self.port} -k {self.base_dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        result = self._run(
            "pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data_dir),
            "-l", str(self.log_file), "-o", options,
        )  # fmt: skip
        if result.returncode != 0:
            tail = self.log_file.read_text()[-2000:] if self.log_file.exists() else ""
            raise EmbeddedPostgresError(
                f"PostgreSQL did not start: {result.stderr.strip()}\n{tail}"
            )

    def stop(self) -> None:
        if self.initialised():
            self._run("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(self.data_dir))

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
