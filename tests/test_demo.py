"""`make demo` as a user runs it, with the scripted drill: outage, pause, verified recovery."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import writable_tmp_dir
from tests.harness import REPO, require_binary


def test_the_demo_drill_goes_from_outage_to_resumed_purchases() -> None:
    require_binary("prometheus")  # without them the demo cannot pause: the drill must not skip
    require_binary("prometheus-alertmanager")
    folder = writable_tmp_dir("liquid-abt-demo-") / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "demo", f"--dir={folder}", "--ephemeral-ports",
         "--timing=fast", "--drill"],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    for milestone in [
        "circuit breaker OPEN",
        "ExchangeApiDown fired; automatic purchases paused",
        "recovery verified: breaker CLOSED, purchases resumed",
        "queued retries bought again",
    ]:
        assert milestone in output, output
    assert not (folder / "pg" / "data" / "postmaster.pid").exists(), "the demo stops its database"
