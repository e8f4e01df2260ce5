"""A started program with its own log file and a readiness wait, and what it needs: HTTP, PATH.

Every program of the stack (PostgreSQL aside, which `pg_ctl` runs) is a `ManagedProcess`: its
output goes to `<folder>/<name>.log`, its files to `<folder>/<name>/`, and a failure to start or
answer raises `StackError` carrying the tail of that log.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, NoReturn, Self

from .waiting import DeadlinePassed, StackError, wait_until

DEFAULT_TIMEOUT = 60.0  # for programs: a loaded 2-core machine starts them in seconds, not ms
INSTALL_HINT = (
    "install the Debian packages `prometheus` and `prometheus-alertmanager` "
    "(apt-get install prometheus prometheus-alertmanager)"
)


class MissingBinary(StackError):
    """Prometheus, Alertmanager or one of their tools is not installed."""


# --- HTTP and binaries ----------------------------------------------------------------------


def http_request(
    url: str,
    body: Any = None,
    *,
    method: str | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10,
) -> tuple[int, str]:
    """(status, body text) of one request; JSON-encodes `body`; HTTP errors are answers too."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers or {}))
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def find_binary(*names: str) -> str:
    """Path of the first of `names` on PATH (or in /usr/bin); `MissingBinary` otherwise."""
    for name in names:
        path = shutil.which(name) or shutil.which(name, path="/usr/bin")
        if path:
            return path
    raise MissingBinary(f"{' / '.join(names)} not found: {INSTALL_HINT}")


def source_root() -> Path:
    """The folder holding the `exporter` package: the checkout, for alerts/ and PYTHONPATH."""
    return Path(str(resources.files("exporter"))).parent


def drill_root() -> Path:
    """The folder holding this package (drill/ in the checkout), for PYTHONPATH."""
    return Path(str(resources.files("liquid_abt_drill"))).parent


def python_env(extra: Mapping[str, str] | None = None, drop: Sequence[str] = ()) -> dict[str, str]:
    """This environment with both packages importable whatever the working folder, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in drop}
    roots = [str(source_root()), str(drill_root()), env.get("PYTHONPATH")]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, roots))
    env.update(extra or {})
    return env


def exporter_command(*args: str) -> list[str]:
    """`liquid-abt-exporter ARGS` with this interpreter (no installed script needed)."""
    return [sys.executable, "-m", "exporter", *args]


def drill_command(*args: str) -> list[str]:
    """`liquid-abt-drill ARGS` with this interpreter (no installed script needed)."""
    return [sys.executable, "-m", "liquid_abt_drill", *args]


# --- Processes ------------------------------------------------------------------------------


def _signal_group(group: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # none of it is left
        os.killpg(group, signum)


def _group_running(group: int) -> bool:
    """Whether a process of the group still runs; zombies do not count (an init that does not
    reap them may keep them for ever), which is why this reads /proc rather than kill(0)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rpartition(")")[2].split()
            if fields[0] != "Z" and int(fields[2]) == group:
                return True
    return False


def claim_name(folder: Path, name: str) -> str:
    """`name`, or `name-2`, `name-3`... when the folder already holds a program of that name."""
    folder.mkdir(parents=True, exist_ok=True)
    candidate, n = name, 1
    while (folder / f"{candidate}.log").exists() or (folder / candidate).exists():
        n += 1
        candidate = f"{name}-{n}"
    (folder / candidate).mkdir()
    return candidate


class ManagedProcess:
    """A program whose output goes to `<folder>/<name>.log`; stopping it is idempotent.

    `workdir` (`<folder>/<name>/`) is its working folder, for its config and data. With
    `process_group`, stopping signals everything it started (`make demo` and the demo under it).
    """

    stop_timeout = 15.0

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        workdir: Path,
        *,
        env: Mapping[str, str] | None = None,
        url: str = "",
        process_group: bool = False,
    ) -> None:
        self.name, self.args, self.workdir, self.url = name, list(args), workdir, url
        self.process_group = process_group
        self.log_path = workdir.parent / f"{name}.log"
        self.returncode: int | None = None
        self._log = self.log_path.open("wb")
        try:
            self.process = subprocess.Popen(
                self.args,
                cwd=workdir,
                env=dict(env) if env is not None else None,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=process_group,
            )
        except BaseException:
            self._log.close()
            raise

    def log_text(self, tail: int = 6000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return text if len(text) <= tail else "...\n" + text[-tail:]

    def fail(self, message: str) -> NoReturn:
        """Raise a `StackError` that carries the tail of this program's log."""
        raise StackError(f"{message}\n--- {self.name} log ({self.log_path}) ---\n{self.log_text()}")

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_http(
        self, path: str, *, timeout: float = DEFAULT_TIMEOUT, status: int = 200, base: str = ""
    ) -> None:
        """Poll `(base or url) + path` until it answers `status`; fail early if the program dies."""
        url = (base or self.url) + path

        def answered() -> bool:
            if not self.alive():
                self.fail(
                    f"{self.name} exited with {self.process.returncode} before {url} answered"
                )
            return http_request(url, timeout=5)[0] == status

        wait_until(
            answered, timeout=timeout, what=f"{url} answering {status}", on_timeout=self.fail
        )

    def ready_or_stop(self, wait: Callable[[], object]) -> Self:
        """Run the readiness `wait`; on any failure stop the program before passing it on."""
        try:
            wait()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> int:
        """SIGTERM, then SIGKILL after `stop_timeout`; returns the exit code."""
        if self.returncode is None:
            if self.process_group:
                self._stop_group()
            elif self.process.poll() is None:
                self.process.terminate()
                try:
                    self.process.wait(self.stop_timeout)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(10)
            self.returncode = self.process.returncode
            self._log.close()
        return self.returncode

    def _stop_group(self) -> None:
        group = self.process.pid  # the leader of its own session and process group
        _signal_group(group, signal.SIGTERM)
        try:  # the leader may go first: wait for the others too
            self.process.wait(self.stop_timeout)
            wait_until(lambda: not _group_running(group), timeout=self.stop_timeout)
        except (subprocess.TimeoutExpired, DeadlinePassed):
            _signal_group(group, signal.SIGKILL)
            self.process.wait(10)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
