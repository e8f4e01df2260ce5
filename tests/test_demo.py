"""`make demo ARGS=--drill` as a user runs it (free ports, 1-second timing): outage, pause,
verified recovery, worked-off retry queue, printed as a timeline."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.harness import REPO, require_binary

TIMELINE = [
    ("before", "Kraken healthy: probe up, breaker closed, purchases flowing"),
    ("+0.0s", "Kraken outage injected: its API refuses connections"),
    (None, "circuit breaker OPEN: the platform stops sending orders to Kraken"),
    (None, "purchases paused, "),
    (None, "ExchangeApiDown fired: Alertmanager pages and calls the webhook"),
    (None, "Kraken back: its API answers again"),
    (None, "recovery verified: breaker CLOSED"),
    (None, "purchases resumed, queued retries due"),
    (None, "retry queue worked off: "),
]


def test_make_demo_drill_goes_from_outage_to_a_worked_off_retry_queue(
    searchable_tmp_path: Path,
) -> None:
    require_binary("prometheus")  # without them the demo cannot pause: the drill must not skip
    require_binary("prometheus-alertmanager")
    folder = searchable_tmp_path / "demo"
    bin_dir = Path(sys.executable).parent
    result = subprocess.run(
        # -o: the test's environment is installed already; make must not reinstall it.
        ["make", "-o", f"{bin_dir.parent}/.installed", "demo", f"VENV={bin_dir.parent}",
         f"ARGS=--drill --dir={folder} --ephemeral-ports --timing=fast"],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "drill passed" in output, output
    rows = _timeline(output)
    for (when, text), (expected_when, expected_text) in zip(rows, TIMELINE, strict=True):
        assert text.startswith(expected_text), output
        if expected_when is not None:
            assert when == expected_when, output
    times = [float(when.strip("+s")) for when, _ in rows[1:]]
    assert times == sorted(times), "each step is timed from the outage, so times only grow"
    assert "('" not in output, "no raw Python tuples"
    assert not (folder / "postgres" / "data" / "postmaster.pid").exists(), "stops its database"


def _timeline(output: str) -> list[tuple[str, str]]:
    """The rows of the printed timeline: (time, step)."""
    table = output.split("drill timeline (seconds since the Kraken outage began)\n")[1]
    lines = table.splitlines()
    assert re.fullmatch(r"\s+time  step", lines[0]), lines[0]
    rows = []
    for line in lines[1:]:
        match = re.fullmatch(r"\s*(before|\+\d+\.\d+s)  (.+)", line)
        if match is None:
            break
        rows.append((match[1], match[2]))
    return rows
