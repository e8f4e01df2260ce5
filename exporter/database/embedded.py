"""A throwaway PostgreSQL server in a local folder, for `make run` without a database and for tests.

The binaries come from, in order: $PG_BIN_DIR, the `pgserver` wheel (a PostgreSQL build shipped on
PyPI), the system's /usr/lib/postgresql/*/bin, then $PATH. PostgreSQL refuses to run as root, so as
root the server runs as an unprivileged system user; whatever that user cannot reach (a clone in
root's home folder, a `mktemp -d` folder) is placed where it can: the binaries are copied once to
a shared cache and the data folder moves under /var/tmp, each with one log line saying where.
A watchdog stops the server when the process that started it is gone, even after a SIGKILL.
Each folder under /var/tmp names the data folder it stands for (a file `base_dir`), so
`clean_runtime_root` (`make clean`) removes what a checkout put there.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import importlib.util
import logging
import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

# Where files go that the server's user could not reach where they were asked for (root only).
RUNTIME_ROOT = Path("/var/tmp/liquid-abt-embedded-pg")
# In a data folder under RUNTIME_ROOT: the folder it stands for.
BASE_DIR_FILE = "base_dir"


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


def reachable_by(path: Path, user: pwd.struct_passwd) -> bool:
    """Whether `user` can search every folder from / down to `path` (which must exist)."""
    groups = {user.pw_gid, *os.getgrouplist(user.pw_name, user.pw_gid)}
    for folder in [*reversed(path.parents), path]:
        st = os.stat(folder)
        if st.st_uid == user.pw_uid:
            allowed = st.st_mode & stat.S_IXUSR
        elif st.st_gid in groups:
            allowed = st.st_mode & stat.S_IXGRP
        else:
            allowed = st.st_mode & stat.S_IXOTH
        if not allowed:
            return False
    return True


def _runtime_root() -> Path:
    """/var/tmp/liquid-abt-embedded-pg, root's, searchable (not listable) by the server's user."""
    RUNTIME_ROOT.mkdir(parents=True, exist_ok=True)
    os.chown(RUNTIME_ROOT, 0, 0)
    RUNTIME_ROOT.chmod(0o711)
    return RUNTIME_ROOT


def reachable_install(bin_dir: Path, user: pwd.struct_passwd) -> Path:
    """`bin_dir`, or a copy of its installation (bin, lib, share) that `user` can run."""
    if reachable_by(bin_dir, user):
        return bin_dir
    # The wheel's binaries find their libraries at $ORIGIN/../../../pgserver.libs (auditwheel):
    # the copy keeps that layout, <package>/<install>/bin beside <package>.libs.
    install = bin_dir.parent
    package = install.parent
    libs = package.parent / f"{package.name}.libs"
    digest = hashlib.sha256((bin_dir / "postgres").read_bytes()).hexdigest()[:16]
    target = _runtime_root() / f"install-{digest}"
    copied_bin = target / package.name / install.name / "bin"
    if not (copied_bin / "pg_ctl").exists():
        # Copied beside the target, then renamed: two processes starting at once both succeed.
        staging = Path(tempfile.mkdtemp(prefix="install-", dir=RUNTIME_ROOT))
        shutil.copytree(install, staging / "tree" / package.name / install.name, symlinks=True)
        if libs.is_dir():
            shutil.copytree(libs, staging / "tree" / libs.name, symlinks=True)
        for folder in (staging, staging / "tree", staging / "tree" / package.name):
            folder.chmod(0o755)
        with contextlib.suppress(OSError):  # another process won the race
            (staging / "tree").rename(target)
        shutil.rmtree(staging, ignore_errors=True)
        log.warning(
            "PostgreSQL binaries are not reachable by the server's user: copied them",
            extra={"from": str(install), "to": str(target), "user": user.pw_name},
        )
    return copied_bin


class EmbeddedPostgres:
    """Owns one data folder; `start()` initialises it on first use and listens on 127.0.0.1."""

    def __init__(self, base_dir: Path, port: int | None = None) -> None:
        self.base_dir = base_dir.resolve()
        self.port = port or free_port()
        self._user = _run_as_user()
        self.bin_dir = find_bin_dir()
        # Where the server's own files live: base_dir, unless its user cannot reach base_dir.
        self.run_dir = self.base_dir
        if self._user is not None:
            self.bin_dir = reachable_install(self.bin_dir, self._user)
            self.run_dir = self._reachable_run_dir()
        self.data_dir = self.run_dir / "data"
        self.log_file = self.run_dir / "postgres.log"
        self._watchdog: subprocess.Popen[bytes] | None = None

    def _reachable_run_dir(self) -> Path:
        assert self._user is not None
        existing = next(p for p in [self.base_dir, *self.base_dir.parents] if p.exists())
        if reachable_by(existing, self._user):
            return self.base_dir
        # The same base_dir always maps to the same folder, so data survives restarts.
        key = hashlib.sha256(str(self.base_dir).encode()).hexdigest()[:12]
        run_dir = _runtime_root() / f"data-{key}"
        log.warning(
            "data folder is not reachable by the server's user: using another folder",
            extra={"asked": str(self.base_dir), "using": str(run_dir), "user": self._user.pw_name},
        )
        return run_dir

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_user(self) -> dict:
        if self._user is None:
            return {}
        return {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}

    def _start_watchdog(self) -> None:
        """A shell that stops the server when this process is gone, however it went (SIGKILL,
        a crash): it waits for the end of a pipe only this process holds open."""
        script = 'trap "" INT TERM HUP; cat >/dev/null; exec "$0" stop -w -m fast -D "$1"'
        self._watchdog = subprocess.Popen(
            ["/bin/sh", "-c", script, str(self.bin_dir / "pg_ctl"), str(self.data_dir)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            cwd=self.run_dir, start_new_session=True, **self._as_user(),
        )  # fmt: skip

    def _stop_watchdog(self) -> None:
        watchdog, self._watchdog = self._watchdog, None
        if watchdog is not None and watchdog.stdin is not None:
            watchdog.stdin.close()  # its pg_ctl stop finds the server stopped already
            with contextlib.suppress(subprocess.TimeoutExpired):
                watchdog.wait(30)

    def _run(self, tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        kwargs = self._as_user()
        return subprocess.run(
            [str(self.bin_dir / tool), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.run_dir,
            **kwargs,
        )

    @property
    def moved(self) -> bool:
        """Whether the server's files live outside `base_dir` (under RUNTIME_ROOT)."""
        return self.run_dir != self.base_dir

    def discard(self) -> None:
        """Stop the server and delete its data: the next `start()` begins from an empty
        database. Files under RUNTIME_ROOT go with it; `base_dir` itself is the caller's."""
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        if self.moved:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def _prepare_folder(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.moved:
            (self.run_dir / BASE_DIR_FILE).write_text(f"{self.base_dir}\n")
        if self._user is not None:
            os.chown(self.run_dir, self._user.pw_uid, self._user.pw_gid)
            self.run_dir.chmod(0o700)
            if not reachable_by(self.run_dir, self._user):
                raise EmbeddedPostgresError(
                    f"{self.run_dir} is not reachable by user {self._user.pw_name}: "
                    "choose another folder with --embedded-db.dir, or give a DATABASE_URL"
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
        # Before the server starts, so there is no moment it could outlive this process.
        self._start_watchdog()
        options = f"-p {self.port} -k {self.run_dir} -c listen_addresses=127.0.0.1 -c fsync=off"
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
        self._stop_watchdog()


def _server_running(data_dir: Path) -> bool:
    """Whether postmaster.pid names a live process (a stale file after a crash does not)."""
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return False
    return True


def clean_runtime_root(checkout: Path, root: Path = RUNTIME_ROOT) -> list[Path]:
    """Remove what servers started for folders inside `checkout` left under `root` (and what
    servers of folders deleted since left there), then the copied binaries once no data folder
    is left. A server still running keeps its folder. Returns what was removed."""
    if not root.is_dir():
        return []
    checkout = checkout.resolve()
    removed = []
    for run_dir in sorted(root.glob("data-*")):
        marker = run_dir / BASE_DIR_FILE
        try:
            base_dir = Path(marker.read_text().strip())
        except OSError:
            continue  # not ours to judge: written by an older version, or another program
        ours = base_dir == checkout or checkout in base_dir.parents
        if (ours or not base_dir.exists()) and not _server_running(run_dir / "data"):
            shutil.rmtree(run_dir, ignore_errors=True)
            removed.append(run_dir)
    if not any(root.glob("data-*")):
        for leftover in sorted(root.glob("install-*")):
            shutil.rmtree(leftover, ignore_errors=True)
            removed.append(leftover)
        with contextlib.suppress(OSError):
            root.rmdir()  # only when empty
            removed.append(root)
    return removed


def main(argv: list[str] | None = None) -> int:
    """`python -m exporter.database.embedded clean [CHECKOUT]`: what `make clean` runs."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] != "clean" or len(args) > 2:
        print("usage: python -m exporter.database.embedded clean [CHECKOUT]", file=sys.stderr)
        return 2
    for path in clean_runtime_root(Path(args[1] if len(args) > 1 else ".")):
        print(f"removed {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
