"""The shell blocks of the README and of docs/, run as written against `make demo`.

Every ```sh block of README.md and docs/*.md carries a `<!-- readme-test: NAME -->` marker, and a
test here runs it with bash and checks that it shows what the text around it promises. Blocks the tests
cannot run (your database, the test suite itself) are fenced `console` or `text`. The demo is
`make demo` with free ports and 1-second timing; the README's ports (9898, 9989, 9090, 9093) are
replaced by the demo's, nothing else in a command changes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import (
    REPO,
    ManagedProcess,
    http_request,
    removed_unless_failed,
    searchable_tmp_dir,
    wait_until,
)
from tests.helpers import parse_samples

README = REPO / "README.md"
# Where the walkthrough's blocks are: the README (the demo) and docs/ (scenarios, admin API, the
# Kraken-compatible server). The runbooks' blocks are for a real platform and are not run.
DOCUMENTS = [README, *sorted((REPO / "docs").glob("*.md"))]
SHELL = {"", "sh", "bash", "shell", "zsh"}  # an untagged block counts as shell: mark it
ADMIN_TOKEN = "demo-admin-token"  # what the demo sets; the Admin API section says $ADMIN_TOKEN
STEP = 120.0  # a bound on each wait on a loaded 2-core machine; typically a few seconds
# Each marked block and the test that runs it; `make-demo` is what the `demo` fixture starts.
EXERCISED = {
    "make-demo": "demo fixture, test_demo.py (ARGS=--drill)",
    "baseline": "test_the_walkthrough_runs_as_written",
    "kraken-down": "test_the_walkthrough_runs_as_written",
    "breaker-open": "test_the_walkthrough_runs_as_written",
    "outage-handled": "test_the_walkthrough_runs_as_written",
    "kraken-back": "test_the_walkthrough_runs_as_written",
    "story": "test_the_walkthrough_runs_as_written",
    "scenario-slow": "test_each_scenario_shows_what_it_promises",
    "scenario-maintenance": "test_each_scenario_shows_what_it_promises",
    "scenario-cancel-only": "test_each_scenario_shows_what_it_promises",
    "scenario-rate-limited": "test_each_scenario_shows_what_it_promises",
    "scenario-auth-failure": "test_each_scenario_shows_what_it_promises",
    "admin-api": "test_the_admin_api_and_kraken_server_sections_run",
    "kraken-server": "test_the_admin_api_and_kraken_server_sections_run",
}


@dataclass(frozen=True)
class Block:
    file: str  # relative to the repository
    line: int  # of the opening fence, 1-based
    language: str
    text: str
    name: str | None  # from the marker on the line before the fence


def readme_blocks() -> list[Block]:
    return [block for path in DOCUMENTS for block in _blocks(path)]


def _blocks(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    name = str(path.relative_to(REPO))
    blocks, i = [], 0
    while i < len(lines):
        opening = re.fullmatch(r"(\s*)```(\w*)\s*", lines[i])
        if opening is None:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        indent = len(opening[1])
        marker = re.fullmatch(r"\s*<!-- readme-test: ([\w-]+) -->", lines[i - 1]) if i else None
        body = "\n".join(line[indent:] for line in lines[i + 1 : end])
        blocks.append(Block(name, i + 1, opening[2], body, marker[1] if marker else None))
        i = end + 1
    return blocks


def block(name: str) -> Block:
    (found,) = [b for b in readme_blocks() if b.name == name]
    return found


def test_every_shell_block_is_run_here_or_marked_as_an_example() -> None:
    shell = [b for b in readme_blocks() if b.language in SHELL]
    unmarked = [f"{b.file}:{b.line}" for b in shell if b.name is None]
    assert unmarked == [], (
        "shell blocks no test runs: add a `<!-- readme-test: NAME -->` line before the fence and "
        "run it in tests/test_readme.py, or fence it as `console` (an example) or `text`"
    )
    names = [b.name for b in shell]
    assert sorted(names) == sorted(EXERCISED), "every marker once, every check with its block"


def test_the_block_parser_finds_markers_and_indented_blocks() -> None:
    down = block("kraken-down")
    assert down.language == "sh" and down.text.startswith("curl -s -X POST localhost:9989/")
    assert block("make-demo").text.splitlines()[0].startswith("make demo ")
    # The demo is the README's; the rest of the walkthrough may live in docs/.
    assert {block(name).file for name in ("make-demo", "kraken-down", "story")} == {"README.md"}
    assert block("scenario-slow").file == "docs/drills.md"


# --- The demo --------------------------------------------------------------------------------


@dataclass
class Demo:
    process: ManagedProcess
    ports: dict[int, int]  # README port -> the demo's

    def url(self, readme_port: int) -> str:
        return f"http://127.0.0.1:{self.ports[readme_port]}"

    def run(self, name: str, env: dict[str, str] | None = None) -> str:
        """Run block `name` as written (ports aside) with bash -e -o pipefail; its stdout."""
        assert name in EXERCISED, name
        written = block(name)
        command = re.sub(
            r"\b(localhost|127\.0\.0\.1):(9898|9989|9090|9093)\b",
            lambda m: f"{m[1]}:{self.ports[int(m[2])]}",
            written.text,
        )
        result = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", command],
            capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})},
        )  # fmt: skip
        assert result.returncode == 0, (
            f"{written.file}:{written.line} ({name}) exited {result.returncode}:\n{command}\n"
            f"{result.stdout}{result.stderr}"
        )
        return result.stdout

    def samples(self) -> dict:
        return parse_samples(http_request(f"{self.url(9898)}/metrics")[1])

    def metric(self, name: str, **labels: str) -> float | None:
        return self.samples().get((name, frozenset(labels.items())))

    def firing(self) -> set[str]:
        body = json.loads(http_request(f"{self.url(9090)}/api/v1/alerts")[1])
        return {a["labels"]["alertname"] for a in body["data"]["alerts"] if a["state"] == "firing"}

    def notified(self) -> set[str]:
        """Names of the alerts Alertmanager holds, active."""
        body = json.loads(http_request(f"{self.url(9093)}/api/v2/alerts")[1])
        return {a["labels"]["alertname"] for a in body if a["status"]["state"] == "active"}

    def breaker(self, state: str) -> bool:
        return self.metric("liquid_abt_circuit_breaker_state", exchange="kraken", state=state) == 1

    def paused(self) -> bool:
        return self.metric("liquid_abt_purchases_paused", exchange="kraken") == 1

    def recovered(self) -> bool:
        return self.breaker("closed") and not self.paused()

    def wait(self, what: str, condition: Callable[[], object]) -> None:
        wait_until(condition, timeout=STEP, interval=0.5, what=what, on_timeout=self.process.fail)

    def back_to_healthy(self) -> None:
        """Kraken healthy, breaker closed, purchases flowing: where each test starts."""
        status, text = http_request(f"{self.url(9989)}/_control/mode", {"mode": "healthy"})
        assert status == 200, text
        self.wait("breaker closed and purchases resumed", self.recovered)


@pytest.fixture(scope="module")
def demo(request: pytest.FixtureRequest) -> Iterator[Demo]:
    """`make demo` as the README starts it, on free ports and 1-second timing."""
    with removed_unless_failed(request, searchable_tmp_dir("liquid-abt-readme-")) as folder:
        yield from _demo(folder)


def _demo(folder: Path) -> Iterator[Demo]:
    venv = Path(sys.executable).parent.parent
    (folder / "make-demo").mkdir()
    process = ManagedProcess("make-demo", [
        # -o: the test's environment is installed already; make must not reinstall it.
        "make", "-C", str(REPO), "-o", f"{venv}/.installed", "demo", f"VENV={venv}",
        f"ARGS=--ephemeral-ports --timing=fast --dir={folder / 'demo'}",
    ], folder / "make-demo", process_group=True)  # fmt: skip
    try:
        banner = wait_until(
            lambda: _banner(process), timeout=STEP, what="the demo's banner",
            on_timeout=process.fail,
        )  # fmt: skip
        yield Demo(process, banner)
    finally:
        process.stop()


def _banner(process: ManagedProcess) -> dict[int, int] | None:
    """README port -> demo port, read from the banner once the demo says it is up."""
    text = process.log_text(tail=100_000)
    if not process.alive():
        process.fail("the demo exited")
    if "Ctrl-C stops everything." not in text:
        return None
    patterns = {
        9898: r"exporter\s+http://127\.0\.0\.1:(\d+)/metrics",
        9989: r"Kraken outage\s+curl -X POST http://127\.0\.0\.1:(\d+)/_control/mode",
        9090: r"Prometheus\s+http://127\.0\.0\.1:(\d+)/",
        9093: r"Alertmanager\s+amtool --alertmanager\.url=http://127\.0\.0\.1:(\d+) alert query",
    }
    found = {port: re.search(pattern, text) for port, pattern in patterns.items()}
    missing = [port for port, match in found.items() if match is None]
    assert missing == [], f"banner lines for README ports {missing} not found:\n{text}"
    return {port: int(match[1]) for port, match in found.items() if match}


# --- The walkthrough and the scenarios -------------------------------------------------------


def test_the_walkthrough_runs_as_written(demo: Demo) -> None:
    demo.back_to_healthy()
    # 1. A reader runs it once the banner is up; the first refresh after the backfill counts.
    demo.wait("the 15m failure ratio", lambda: demo.metric(
        "liquid_abt_purchase_failure_ratio", exchange="kraken", window="15m"))  # fmt: skip
    # At 1-second scrapes a loaded machine may miss the first scrapes, and the meta alert on an
    # absent `up` (its `for:` cut to 2 s) blips at start; what the README promises is the quiet
    # state before the fault, which must then come and hold.
    demo.wait("a quiet baseline", lambda: not demo.firing())
    out = demo.run("baseline")
    assert re.search(
        r'^liquid_abt_purchase_failure_ratio\{exchange="kraken",window="15m"\} \d', out, re.M
    ), out
    assert 'liquid_abt_exchange_up{exchange="kraken"} 1.0' in out, out
    assert 'liquid_abt_circuit_breaker_state{exchange="kraken",state="closed"} 1.0' in out, out
    assert "ALERTS" not in out, "a quiet baseline: nothing fires before the fault"

    # 2. Down: the breaker opens after 2 failed rounds (re-run as a reader would until it shows).
    assert '"mode": "down"' in demo.run("kraken-down")
    demo.wait(
        "step 2 showing the breaker OPEN", lambda: '"state": "OPEN"' in demo.run("breaker-open")
    )

    # 3. The alert fires and reaches Alertmanager; purchases are paused, retries queued.
    demo.wait("purchases paused", demo.paused)
    demo.wait("ExchangeApiDown in Alertmanager", lambda: "ExchangeApiDown" in demo.notified())
    out = demo.run("outage-handled")
    assert 'alertname="ExchangeApiDown", alertstate="firing"' in out, "promtool: " + out
    assert re.search(r"^ExchangeApiDown\s", out, re.M), "amtool: " + out
    assert '"paused": true' in out and '"status": "queued"' in out, out
    status, page = http_request(f"{demo.url(9090)}/classic/alerts")  # the README's browser link
    assert status == 200 and "ExchangeApiDown" in page

    # 4. Back: verified recovery closes the breaker and resumes purchases.
    assert '"mode": "healthy"' in demo.run("kraken-back")
    demo.wait("verified recovery", demo.recovered)

    # 5. The story and the impact report (quoted, with a %2B offset).
    out = demo.run("story")
    for action in ("verify_recovery", "resume_purchases"):
        assert f'"action": "{action}"' in out, out
    assert re.search(r'"start": "\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00"', out), out
    assert re.search(r'"affectedPurchases": [1-9]', out), out


SCENARIOS = [
    # (block, alert it promises, what else the README says holds then)
    ("scenario-slow", "ExchangeApiSlowResponses",
     lambda d: d.breaker("closed") and not d.paused() and d.metric(
         "liquid_abt_exchange_up", exchange="kraken") == 1),
    ("scenario-maintenance", "ExchangeMaintenance", lambda d: d.paused()),
    ("scenario-cancel-only", "ExchangeTradingRestricted", lambda d: d.paused()),
    ("scenario-rate-limited", "ExchangeApiRateLimited",
     lambda d: d.metric("liquid_abt_api_rate_multiplier", exchange="kraken") == 0.5
     and not d.paused()),
    ("scenario-auth-failure", "ExchangeApiAuthFailures", lambda d: not d.paused()),
]  # fmt: skip


@pytest.mark.timeout(900)
@pytest.mark.parametrize(("name", "alert", "holds"), SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_each_scenario_shows_what_it_promises(
    demo: Demo, name: str, alert: str, holds: Callable[[Demo], bool]
) -> None:
    demo.back_to_healthy()
    mode = re.search(r'"mode": "(\w+)"', block(name).text)
    assert mode and f'"mode": "{mode[1]}"' in demo.run(name)
    demo.wait(f"{alert} firing", lambda: alert in demo.firing())
    demo.wait(f"what the README says holds during {name}", lambda: holds(demo))
    demo.back_to_healthy()


def test_the_admin_api_and_kraken_server_sections_run(demo: Demo) -> None:
    demo.back_to_healthy()
    out = demo.run("admin-api", env={"ADMIN_TOKEN": ADMIN_TOKEN})
    assert '"exchange": "kraken"' in out and '"state": "CLOSED"' in out, out
    out = demo.run("kraken-server")
    assert '"mode": "down"' in out and '"mode": "slow", "latency": 6.0' in out, out
    demo.back_to_healthy()
