"""The architecture as behaviour: import-linter's contracts (pyproject.toml) hold, and no module
reaches into another's private names."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "exporter"


def private_imports(root: Path) -> list[str]:
    """`from module import _name` across modules, as `file:line name`."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        found.append(f"{path.relative_to(root.parent)}:{node.lineno} {alias.name}")
    return found


def test_no_module_imports_another_modules_private_names() -> None:
    assert private_imports(PACKAGE) == []


def test_the_private_name_check_finds_one(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("from b import _hidden\n")
    assert private_imports(tmp_path) == [f"{tmp_path.name}/a.py:1 _hidden"]


def test_import_linter_contracts_are_kept() -> None:
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint, "import-linter is not installed (make test installs it)"
    result = subprocess.run([lint], cwd=PACKAGE.parent, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 kept, 0 broken" in result.stdout
