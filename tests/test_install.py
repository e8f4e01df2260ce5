"""The install path outside the repository: an sdist and a wheel built from the sources, installed
in a clean virtualenv with the image's locked dependencies, and run from there; the systemd unit
of deploy/systemd verified by systemd itself against that install."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from exporter import __version__
from exporter.cli import build_parser
from tests.harness import REPO, require_binary

UNIT = REPO / "deploy" / "systemd" / "liquid-abt-exporter.service"
ENV_FILE = REPO / "deploy" / "systemd" / "liquid-abt-exporter.env"
INSTALLED_BIN = "/opt/liquid-abt-exporter/bin/liquid-abt-exporter"  # where the unit expects it


def run(*command: str | Path, cwd: Path | None = None) -> str:
    result = subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, timeout=600, cwd=cwd
    )
    assert result.returncode == 0, (
        f"{command}: exit {result.returncode}\n{result.stdout}{result.stderr}"
    )
    return result.stdout


@dataclass
class Built:
    wheel: Path
    sdist: Path
    venv: Path  # a clean virtualenv with the wheel installed

    @property
    def program(self) -> Path:
        return self.venv / "bin" / "liquid-abt-exporter"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    root = tmp_path_factory.mktemp("install")
    # The sources a release is built from, outside the checkout (no .venv, no tests, no .git).
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "exporter", source / "exporter",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))  # fmt: skip
    # What `python -m build` does: the PEP 517 hooks in a virtualenv holding only the backend.
    builder = root / "build-env"
    run(sys.executable, "-m", "venv", builder)
    run(builder / "bin" / "pip", "install", "--quiet", "setuptools>=77")
    dist = root / "dist"

    def build(hook: str) -> str:  # one process per hook, as build frontends do
        code = f"import sys, setuptools.build_meta as b; print(b.{hook}(sys.argv[1]))"
        return run(builder / "bin" / "python", "-c", code, dist, cwd=source).splitlines()[-1]

    sdist_name, wheel_name = build("build_sdist"), build("build_wheel")
    # A clean virtualenv: the image's locked dependencies, then the wheel, nothing else.
    venv = root / "venv"
    run(sys.executable, "-m", "venv", venv)
    run(venv / "bin" / "pip", "install", "--quiet", "--require-hashes", "--no-deps",
        "-r", REPO / "requirements" / "image.txt")  # fmt: skip
    run(venv / "bin" / "pip", "install", "--quiet", "--no-deps", dist / wheel_name)
    yield Built(dist / wheel_name, dist / sdist_name, venv)


def test_the_installed_wheel_runs_outside_the_repository(built: Built, tmp_path: Path) -> None:
    assert built.wheel.name == f"liquid_abt_exporter-{__version__}-py3-none-any.whl"
    out = run(built.program, "--version", cwd=tmp_path)
    assert out.startswith(f"liquid-abt-exporter, version {__version__} "), out
    out = run(built.program, "check-config", cwd=tmp_path)
    assert out == "(defaults): configuration is valid\n"
    # It is the installed copy that ran, with its migrations, not the checkout's.
    where = run(built.venv / "bin" / "python", "-c",
                "import exporter, pathlib; p = pathlib.Path(exporter.__file__).parent; "
                "print(p); print(*sorted(m.name for m in (p / 'database/migrations').glob('*.sql')))",
                cwd=tmp_path)  # fmt: skip
    package, migrations = where.splitlines()
    assert Path(package).is_relative_to(built.venv), package
    shipped = sorted(p.name for p in (REPO / "exporter/database/migrations").glob("*.sql"))
    assert migrations.split() == shipped


def test_the_sdist_holds_what_the_wheel_holds_and_installs(built: Built, tmp_path: Path) -> None:
    with zipfile.ZipFile(built.wheel) as wheel:
        in_wheel = {n for n in wheel.namelist() if n.startswith("exporter/")}
    with tarfile.open(built.sdist) as sdist:
        prefix = f"liquid_abt_exporter-{__version__}/"
        in_sdist = {m.name.removeprefix(prefix) for m in sdist.getmembers() if m.isfile()}
    assert {"pyproject.toml", "README.md", "PKG-INFO"} <= in_sdist
    assert in_wheel and in_wheel <= in_sdist, sorted(in_wheel - in_sdist)
    assert any(n.endswith(".sql") for n in in_wheel) and "exporter/py.typed" in in_wheel
    # pip builds the sdist itself (setuptools from the index) into a virtualenv of its own.
    venv = tmp_path / "venv"
    shutil.copytree(built.venv, venv, symlinks=True)
    # `python -m pip` of the copy installs into the copy (its scripts' shebangs name the original).
    run(venv / "bin" / "python", "-m", "pip", "install", "--quiet", "--no-deps",
        "--force-reinstall", built.sdist)  # fmt: skip
    out = run(venv / "bin" / "liquid-abt-exporter", "--version", cwd=tmp_path)
    assert out.startswith(f"liquid-abt-exporter, version {__version__} "), out


def test_the_systemd_unit_passes_systemd_analyze_against_the_install(
    built: Built, tmp_path: Path
) -> None:
    unit = UNIT.read_text()
    [exec_start] = re.findall(r"^ExecStart=(.*)$", unit, re.M)
    program, *args = exec_start.split()
    assert program == INSTALLED_BIN
    parsed = build_parser().parse_args(args)
    assert parsed.command == "serve" and not parsed.embedded_db
    # The same unit with the program where this test installed it: systemd checks the rest.
    (tmp_path / UNIT.name).write_text(unit.replace(INSTALLED_BIN, str(built.program)))
    result = subprocess.run(
        [require_binary("systemd-analyze"), "verify", "--man=no", str(tmp_path / UNIT.name)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    # What the runbook cites to read its log.
    runbook = (REPO / "docs" / "runbooks" / "liquid-abt-exporter.md").read_text()
    assert f"journalctl -u {UNIT.stem}" in runbook


def test_the_unit_environment_file_names_only_variables_the_exporter_reads() -> None:
    names = [line.split("=", 1)[0] for line in ENV_FILE.read_text().splitlines()
             if line and not line.startswith("#")]  # fmt: skip
    sources = "\n".join(p.read_text() for p in (REPO / "exporter").rglob("*.py"))
    unknown = [
        name for name in names
        if f'"{name}"' not in sources and f'"{name.removesuffix("_FILE")}"' not in sources
    ]  # fmt: skip
    assert names and unknown == []
    assert any(name.startswith("KRAKEN_API_KEY") for name in names)
