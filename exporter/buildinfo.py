"""Which build is running: version, git revision and build date, for `--version` and build_info.

An image stamps `exporter/BUILD_INFO` (JSON: revision, build_date) at build time; a source checkout
asks git for its revision; anything else says "unknown".
"""

from __future__ import annotations

import functools
import json
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from exporter import __version__

BUILD_FILE = Path(__file__).with_name("BUILD_INFO")
UNKNOWN = "unknown"


@dataclass(frozen=True)
class BuildInfo:
    version: str
    revision: str
    build_date: str
    python_version: str

    def describe(self, program: str) -> str:
        """The `--version` text, in the layout of the Prometheus exporters."""
        return (
            f"{program}, version {self.version} (revision: {self.revision})\n"
            f"  build date:       {self.build_date}\n"
            f"  python version:   {self.python_version}"
        )


def read_build_file(path: Path) -> tuple[str, str] | None:
    """(revision, build date) stamped into an image, or None when there is no usable file."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    revision = str(data.get("revision") or UNKNOWN)
    return revision, str(data.get("build_date") or UNKNOWN)


def git_revision(folder: Path) -> str | None:
    """HEAD of the git checkout `folder` is in, or None (no git, no checkout)."""
    git = shutil.which("git")
    if git is None or not (folder / ".git").exists():
        return None
    try:
        result = subprocess.run(
            [git, "-C", str(folder), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


@functools.cache
def build_info() -> BuildInfo:
    stamped = read_build_file(BUILD_FILE)
    if stamped is not None:
        revision, build_date = stamped
    else:
        revision = git_revision(Path(__file__).resolve().parent.parent) or UNKNOWN
        build_date = UNKNOWN
    return BuildInfo(__version__, revision, build_date, platform.python_version())
