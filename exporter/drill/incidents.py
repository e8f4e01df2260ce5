"""Incident drills: the runbooks' scenarios as timelines, on the whole real loop.

Each scenario starts PostgreSQL, the Kraken-compatible server, one or two exporters, the shipped
rules in a real Prometheus, the shipped `alerts/alertmanager.yml` in a real Alertmanager (its
human receivers pointed at a recording pager) and a platform that buys through the exchange
(platform.py). It injects a fault, lets time pass, and records when purchases stopped, when
retries were queued, what paged and how often, how often the breaker changed state and when
purchases resumed.

Timers are the shipped ones times `scale` (every duration in the exporter's config, every
`for:`, `keep_firing_for:` and range in the rules, every Alertmanager timer), and every figure is
reported back in shipped seconds: `scale=1` is the real thing (`make drill`), the tests run the
same scenarios at `scale=0.1`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import yaml
from aiohttp import web

from exporter.config import Config, format_duration, parse_duration
from exporter.database.embedded import free_port
from exporter.database.migrate import migrate
from exporter.signals.classify import ReasonClassifier

from .platform import Platform
from .stack import (
    DeadlinePassed,
    ExporterProcess,
    KrakenServerProcess,
    PrometheusProcess,
    Stack,
    alerts_dir,
    http_request,
    rule_files,
    wait_until,
)

EXCHANGE = "kraken"
TOKEN = "drill-webhook-token"
PAGER = "oncall-pager"  # the receiver that pages in alerts/alertmanager.yml
AUTOMATION = "liquid-abt-exporter"


@dataclass(frozen=True)
class Timing:
    scale: float = 1.0

    def s(self, shipped: float) -> float:
        return shipped * self.scale

    def d(self, shipped: float) -> str:
        """A duration for a config file: the shipped one, scaled, in milliseconds."""
        return f"{max(1, round(shipped * self.scale * 1000))}ms"

    def shipped(self, real: float) -> float:
        return real / self.scale


# ---- configuration, scaled -----------------------------------------------------------------


def exporter_config(t: Timing, kraken_url: str, alertmanager_url: str) -> str:
    """The shipped defaults (exporter/config.py), scaled."""
    return yaml.safe_dump({
        "collectors": {"interval": t.d(15), "timeout": t.d(10)},
        "database": {"health_interval": t.d(5)},
        "kraken": {"base_url": kraken_url, "timeout": t.d(10), "probe_interval": t.d(30),
                   "doubt_interval": t.d(2), "incident_interval": t.d(5),
                   "call_spacing": t.d(1)},
        "breaker": {"failure_threshold": 2, "recovery_timeout": t.d(30),
                    "monitoring_window": t.d(600)},
        "incident": {"probation": t.d(90), "backoff_max": t.d(600),
                     "replica_stale_after": t.d(60), "rate_restore_after": t.d(20),
                     "platform_window": t.d(60)},
        "retry": {"base_delay": t.d(60), "max_delay": t.d(3600)},
        "receiver": {"alertmanager_url": alertmanager_url, "reconcile_interval": t.d(60),
                     "retry_max_delay": t.d(60)},
    })  # fmt: skip


_DURATION_KEYS = re.compile(r"(\n\s+(?:for|keep_firing_for):\s*)(\S+)")
_RANGE = re.compile(r"\[(\d+[smhd])(:\d*[smhd]?)?\]")


def scaled_rules(folder: Path, t: Timing) -> list[Path]:
    """Copies of the shipped rules with every `for:`, `keep_firing_for:` and range scaled."""
    folder.mkdir(parents=True, exist_ok=True)

    def duration(match: re.Match[str]) -> str:
        return f"{match.group(1)}{t.d(parse_duration(match.group(2)))}"

    def window(match: re.Match[str]) -> str:
        # Never below four scrapes: rate() needs two samples in the window.
        seconds = max(parse_duration(match.group(1)) * t.scale, 4 * t.s(15))
        return f"[{format_duration(round(seconds))}{match.group(2) or ''}]"

    copies = []
    for path in rule_files():
        text = _RANGE.sub(window, _DURATION_KEYS.sub(duration, path.read_text()))
        (folder / path.name).write_text(text)
        copies.append(folder / path.name)
    return copies


def alertmanager_config(t: Timing, exporter_urls: Sequence[str], token: Path, pager: str) -> str:
    """The shipped alerts/alertmanager.yml, timers scaled, human receivers pointed at `pager`."""
    shipped = yaml.safe_load((alerts_dir() / "alertmanager.yml").read_text())
    shipped["global"] = {
        "resolve_timeout": t.d(parse_duration(shipped["global"]["resolve_timeout"]))
    }

    def scale_route(route: dict[str, Any]) -> None:
        for key in ("group_wait", "group_interval", "repeat_interval"):
            if key in route:
                route[key] = t.d(parse_duration(route[key]))
        for child in route.get("routes", []):
            scale_route(child)

    scale_route(shipped["route"])
    receivers = []
    for receiver in shipped["receivers"]:
        name = receiver["name"]
        if name == AUTOMATION:
            template = receiver["webhook_configs"][0]
            configs = [{**template, "url": f"{url}/webhook/alertmanager", "http_config": {
                "authorization": {"type": "Bearer", "credentials_file": str(token)}}}
                for url in exporter_urls]  # fmt: skip
        else:
            configs = [{"url": f"{pager}/{name}", "send_resolved": True}]
        receivers.append({"name": name, "webhook_configs": configs})
    shipped["receivers"] = receivers
    return yaml.safe_dump(shipped)


# ---- the recording pager ---------------------------------------------------------------------


@dataclass(frozen=True)
class Notification:
    receiver: str
    at: float  # monotonic
    status: str
    alerts: tuple[tuple[str, str], ...]  # (alertname, status)


class Pager:
    """Every human receiver of alerts/alertmanager.yml, recording what it was sent."""

    def __init__(self) -> None:
        self.received: list[Notification] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{receiver}", self._receive)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _receive(self, request: web.Request) -> web.Response:
        body = await request.json()
        alerts = tuple((a["labels"].get("alertname", ""), a["status"]) for a in body["alerts"])
        self.received.append(
            Notification(request.match_info["receiver"], time.monotonic(), body["status"], alerts)
        )
        return web.Response(text="ok")

    def pages(self) -> list[tuple[float, str, str]]:
        """(time, alertname, status) of every alert sent to the pager."""
        return [(n.at, name, status) for n in self.received if n.receiver == PAGER
                for name, status in n.alerts]  # fmt: skip


# ---- what happened ---------------------------------------------------------------------------

_STATE_SQL = """
SELECT coalesce(i.phase, 'normal') AS phase, coalesce(b.state, 'closed') AS breaker,
       coalesce(c.purchases_paused, false) AS paused,
       coalesce(c.api_rate_multiplier, 1)::float8 AS rate,
       (SELECT count(*) FROM liquid_abt.retry_queue) AS queued,
       (SELECT count(*) FROM liquid_abt.retry_queue WHERE attempts > 0) AS retries_tried,
       (SELECT count(*) FROM liquid_abt.audit_log
         WHERE action = 'breaker_transition') AS transitions,
       (SELECT count(*) FROM liquid_abt.audit_log
         WHERE action = 'pause_purchases' AND result = 'success') AS pauses,
       (SELECT count(*) FROM liquid_abt.audit_log
         WHERE action = 'resume_purchases' AND result = 'success') AS resumes,
       (SELECT min(received_at) FROM liquid_abt.notifications
         WHERE alertname = 'ExchangeApiDown' AND status = 'firing') AS down_received
FROM (SELECT $1::text AS exchange) x
LEFT JOIN liquid_abt.incidents i USING (exchange)
LEFT JOIN liquid_abt.circuit_breakers b USING (exchange)
LEFT JOIN liquid_abt.exchange_controls c USING (exchange)
"""


@dataclass
class Timeline:
    """Seconds (shipped) since the fault was injected, of each first occurrence."""

    scenario: str
    timing: Timing
    t0: float = 0.0
    t0_wall: float = 0.0
    decisions: list[tuple[float, str]] = field(default_factory=list)  # from the audit log
    marks: list[tuple[float, str]] = field(default_factory=list)
    first: dict[str, float] = field(default_factory=dict)
    last: dict[str, Any] = field(default_factory=dict)
    pages: list[tuple[float, str, str]] = field(default_factory=list)
    retries_tried_before_resume: int = 0
    webhook_latency: float | None = None  # Prometheus firing -> receiver, shipped seconds
    isolated_seen: bool = False
    reasons: dict[str, int] = field(default_factory=dict)

    def at(self, when: float) -> float:
        return round(self.timing.shipped(when - self.t0), 1)

    def mark(self, text: str) -> None:
        self.marks.append((self.at(time.monotonic()), text))

    def see(self, what: str, when: float) -> None:
        self.first.setdefault(what, self.at(when))

    def paged(self, status: str = "firing") -> dict[str, int]:
        counts: dict[str, int] = {}
        for _, name, s in self.pages:
            if s == status:
                counts[name] = counts.get(name, 0) + 1
        return counts

    def first_page(self) -> tuple[float, str] | None:
        firing = [(at, name) for at, name, s in self.pages if s == "firing"]
        return (self.at(firing[0][0]), firing[0][1]) if firing else None

    def rows(self) -> list[tuple[str, str]]:
        rows = [(f"{at:+.1f}s", text) for at, text in self.marks]
        rows += [(f"{v:+.1f}s", k) for k, v in self.first.items()]
        rows += [(f"{at:+.1f}s", f"  audit: {text}") for at, text in self.decisions]
        page = self.first_page()
        if page:
            rows.append((f"{page[0]:+.1f}s", f"first page: {page[1]}"))
        rows.sort(key=lambda r: float(r[0].rstrip("s")))
        final = self.last
        rows += [
            ("", f"pages (firing): {self.paged() or 'none'}; resolved: {self.paged('resolved') or 'none'}"),
            ("", f"breaker transitions: {final.get('transitions', 0)}; pauses: "
                 f"{final.get('pauses', 0)}; resumes: {final.get('resumes', 0)}; retries tried "
                 f"while purchases were stopped: {self.retries_tried_before_resume}"),
        ]  # fmt: skip
        if self.webhook_latency is not None:
            rows.append(("", f"Prometheus firing -> webhook: {self.webhook_latency:.1f}s"))
        return rows

    def table(self) -> str:
        lines = [f"scenario {self.scenario} (shipped seconds since the fault)"]
        lines += [f"  {when:>9}  {text}" for when, text in self.rows()]
        return "\n".join(lines)


class Watcher:
    """Polls PostgreSQL, Prometheus and the pager into a Timeline."""

    def __init__(self, database_url: str, prometheus: PrometheusProcess, pager: Pager,
                 timeline: Timeline, exporters: Sequence[ExporterProcess]) -> None:  # fmt: skip
        self._url, self._prometheus, self._pager = database_url, prometheus, pager
        self.timeline, self._exporters = timeline, exporters
        self._fired_at: float | None = None

    async def run(self, stop: asyncio.Event) -> None:
        conn = await asyncpg.connect(self._url)
        step = max(0.1, self.timeline.timing.s(1.0))
        try:
            while not stop.is_set():
                await self._poll(conn)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), step)
            await self._poll(conn)
        finally:
            await conn.close()

    async def _poll(self, conn: asyncpg.Connection) -> None:
        now, tl = time.monotonic(), self.timeline
        row = dict(await conn.fetchrow(_STATE_SQL, EXCHANGE))
        tl.last = row
        if not tl.t0:
            return
        if row["paused"] or row["breaker"] == "open":
            tl.see("purchases stopped (paused or breaker open)", now)
        if row["queued"]:
            tl.see("retries queued", now)
        if row["rate"] < 1:
            tl.see("API rate lowered", now)
        if "API rate lowered" in tl.first and row["rate"] >= 1:
            tl.see("API rate restored", now)
        if row["resumes"] and "purchases stopped (paused or breaker open)" in tl.first:
            tl.see("purchases resumed", now)
        elif not row["resumes"]:
            tl.retries_tried_before_resume = row["retries_tried"]
        tl.pages = self._pager.pages()
        await self._watch_webhook(row, now)

    async def _watch_webhook(self, row: dict[str, Any], now: float) -> None:
        if self._fired_at is None:
            firing = await asyncio.to_thread(
                self._prometheus.query,
                'ALERTS{alertname="ExchangeApiDown", alertstate="firing"}',
            )
            if firing:
                self._fired_at = time.time()
        elif row["down_received"] is not None and self.timeline.webhook_latency is None:
            latency = max(0.0, row["down_received"].timestamp() - self._fired_at)
            self.timeline.webhook_latency = round(self.timeline.timing.shipped(latency), 1)


# ---- scenarios --------------------------------------------------------------------------------


@dataclass
class Drill:
    """A running stack a scenario acts on."""

    timing: Timing
    stack: Stack
    kraken: KrakenServerProcess
    exporters: list[ExporterProcess]
    timeline: Timeline
    restart: Callable[[int], Awaitable[None]]

    async def hold(self, shipped_seconds: float) -> None:
        """Let the scenario's time pass (its choreography, not a wait for a result)."""
        await asyncio.sleep(self.timing.s(shipped_seconds))

    def fault(self, mode: str, text: str, **faults: Any) -> None:
        self.set(mode, **faults)
        if not self.timeline.t0:
            self.timeline.t0, self.timeline.t0_wall = time.monotonic(), time.time()
        self.timeline.mark(text)

    def set(self, mode: str, **faults: Any) -> None:
        self.kraken.set_mode(mode)
        status, text = http_request(f"{self.kraken.control_url}/_control/faults", faults)
        if status != 200:
            raise RuntimeError(f"faults {faults}: HTTP {status}: {text}")

    def heal(self, text: str = "Kraken healthy again") -> None:
        self.set("healthy")
        self.timeline.mark(text)

    async def wait_for(self, what: str, shipped_timeout: float) -> None:
        """Until `what` appears in the timeline; past the deadline the scenario goes on and its
        expectations say what never happened."""

        async def seen() -> bool:
            return what in self.timeline.first

        with contextlib.suppress(DeadlinePassed):
            await wait_until(seen, timeout=self.timing.s(shipped_timeout) + 5,
                             interval=max(0.05, self.timing.s(0.5)), what=what)  # fmt: skip


Expectation = Callable[[Timeline], list[str]]


@dataclass(frozen=True)
class Scenario:
    name: str
    case: str  # the case it replays
    act: Callable[[Drill], Awaitable[None]]
    expect: Expectation
    replicas: int = 2
    bad_network_replica: bool = False  # the first replica probes an address that refuses


def within(timeline: Timeline, what: str, seconds: float) -> list[str]:
    at = timeline.first.get(what)
    if at is None:
        return [f"{what}: never"]
    return [] if at <= seconds else [f"{what} at {at}s, later than {seconds}s"]


def never(timeline: Timeline, what: str) -> list[str]:
    at = timeline.first.get(what)
    return [] if at is None else [f"{what} at {at}s: it should not happen"]


def pages_exactly(timeline: Timeline, expected: dict[str, int]) -> list[str]:
    got = timeline.paged()
    return [] if got == expected else [f"pages {got}, expected {expected}"]


# Replays of issue 10's cases (its "What was seen" list), with the shipped timers scaled.


async def _refused(d: Drill) -> None:
    await d.hold(60)
    d.fault("down", "Kraken refuses connections")
    await d.wait_for("retries queued", 180)
    await d.hold(240)
    d.heal()
    await d.wait_for("purchases resumed", 400)
    await d.hold(120)


def _refused_expect(t: Timeline) -> list[str]:
    problems = within(t, "purchases stopped (paused or breaker open)", 60)
    problems += within(t, "retries queued", 120)
    page = t.first_page()
    if page is None or page[1] != "ExchangeApiDown" or page[0] > 120:
        problems.append(f"first page {page}: expected ExchangeApiDown within 120s")
    problems += pages_exactly(t, {"ExchangeApiDown": 1})
    problems += within(t, "purchases resumed", 240 + 300)
    if t.last.get("transitions") != 3:  # CLOSED->OPEN, OPEN->HALF_OPEN, HALF_OPEN->CLOSED
        problems.append(f"{t.last.get('transitions')} breaker transitions, expected 3")
    if t.webhook_latency is None or t.webhook_latency > 15:
        problems.append(f"Prometheus firing -> webhook took {t.webhook_latency}s (over 15s)")
    other = {r: n for r, n in t.reasons.items() if r == "other"}
    if other:
        problems.append(f"failures classified as other: {other}")
    return problems


async def _crossed_book(d: Drill) -> None:
    await d.hold(60)
    d.fault("down", "Kraken refuses connections")
    await d.wait_for("retries queued", 180)
    await d.hold(60)
    d.set("healthy", crossed_book=True)
    d.timeline.mark("Kraken answers again, but its order book is crossed (bid above ask)")
    await d.hold(240)
    d.set("healthy")
    d.timeline.mark("order book sane again")
    await d.wait_for("purchases resumed", 400)


def _crossed_book_expect(t: Timeline) -> list[str]:
    sane = next((at for at, text in t.marks if text == "order book sane again"), None)
    problems = []
    closed = [at for at, text in t.decisions if text.endswith("HALF_OPEN -> CLOSED")]
    if sane is None or any(at < sane for at in closed):
        problems.append(f"the breaker closed at {closed} before the order book was sane ({sane})")
    failures = [at for at, text in t.decisions if text == "verify_recovery failure"]
    if not failures:
        problems.append("no recovery verification failed on the crossed book")
    resumed = t.first.get("purchases resumed")
    if resumed is None or sane is None or resumed < sane:
        problems.append(f"purchases resumed at {resumed}, the book was sane at {sane}")
    return problems + pages_exactly(t, {"ExchangeApiDown": 1})


async def _flapping(d: Drill) -> None:
    await d.hold(60)
    d.fault("down", "Kraken flaps: down 20s, up 40s, for 10 minutes")
    for _ in range(10):
        d.set("down")
        await d.hold(20)
        d.set("healthy")
        await d.hold(40)
    d.timeline.mark("flapping stops")
    await d.wait_for("purchases resumed", 900)
    await d.hold(60)


def _flapping_expect(t: Timeline) -> list[str]:
    problems = []
    if t.last.get("pauses", 0) > 1:
        problems.append(f"{t.last['pauses']} pauses, expected at most one")
    resumed = t.first.get("purchases resumed")
    if resumed is not None and resumed < 600:
        problems.append(f"purchases resumed at {resumed}s, while it still flapped")
    if t.retries_tried_before_resume:
        problems.append(f"{t.retries_tried_before_resume} retries spent while it flapped")
    problems += [p for p in pages_exactly(t, {"ExchangeApiDown": 1}) if t.paged()]
    return problems


async def _sporadic(d: Drill) -> None:
    await d.hold(60)
    d.fault("healthy", "4% of requests hang, 10% are rate limited", hang_ratio=0.04,
            rate_limit_ratio=0.1)  # fmt: skip
    await d.hold(600)
    d.heal()
    await d.hold(60)


def _quiet_expect(t: Timeline) -> list[str]:
    problems = never(t, "purchases stopped (paused or breaker open)")
    problems += pages_exactly(t, {})
    if t.last.get("transitions"):
        problems.append(f"{t.last['transitions']} breaker transitions, expected none")
    return problems


def _sporadic_expect(t: Timeline) -> list[str]:
    """Sporadic failures never stop the business nor page "API down". (14 % of purchases do
    fail, so the runbook's failure-rate or rate-limit page is right: that is for a person.)"""
    problems = never(t, "purchases stopped (paused or breaker open)")
    if "ExchangeApiDown" in t.paged():
        problems.append(f"pages {t.paged()}: ExchangeApiDown while the API answered")
    if t.last.get("transitions"):
        problems.append(f"{t.last['transitions']} breaker transitions, expected none")
    return problems


async def _rate_limited(d: Drill) -> None:
    await d.hold(60)
    d.fault("rate_limited", "every call rate limited (EAPI:Rate limit exceeded)")
    await d.hold(180)
    d.heal("rate limiting stops")
    await d.wait_for("API rate restored", 120)
    await d.hold(30)


def only_pages(timeline: Timeline, allowed: set[str]) -> list[str]:
    other = {name: n for name, n in timeline.paged().items() if name not in allowed}
    return (
        [f"paged {other}, which is not the cause ({', '.join(sorted(allowed)) or 'none'})"]
        if other
        else []
    )


def _rate_limited_expect(t: Timeline) -> list[str]:
    problems = never(t, "purchases stopped (paused or breaker open)")
    problems += only_pages(t, {"ExchangeApiRateLimited"})
    if t.last.get("transitions"):
        problems.append(f"{t.last['transitions']} breaker transitions, expected none")
    problems += within(t, "API rate lowered", 60)
    lowered, restored = t.first.get("API rate lowered"), t.first.get("API rate restored")
    if restored is None or lowered is None or restored > 180 + 60:
        problems.append(f"API rate restored at {restored}s, expected within 60s of 180s")
    return problems


async def _maintenance(d: Drill) -> None:
    await d.hold(60)
    d.fault("maintenance", "Kraken in maintenance (status maintenance)")
    await d.wait_for("purchases stopped (paused or breaker open)", 120)
    await d.hold(180)
    d.heal("maintenance over")
    await d.wait_for("purchases resumed", 400)


def _maintenance_expect(t: Timeline) -> list[str]:
    problems = within(t, "purchases stopped (paused or breaker open)", 60)
    problems += pages_exactly(t, {"ExchangeMaintenance": 1})
    problems += within(t, "purchases resumed", 180 + 300)
    return problems


async def _invalid_key(d: Drill) -> None:
    await d.hold(60)
    d.fault("invalid_key", "Kraken refuses our key (EAPI:Invalid key on private calls)")
    await d.hold(300)
    d.heal("a valid key again")
    await d.hold(60)


def _invalid_key_expect(t: Timeline) -> list[str]:
    return pages_exactly(t, {"ExchangeApiAuthFailures": 1}) + never(
        t, "purchases stopped (paused or breaker open)"
    )


async def _restart(d: Drill) -> None:
    await d.hold(60)
    d.fault("down", "Kraken refuses connections")
    await d.wait_for("retries queued", 180)
    await d.hold(30)
    d.timeline.mark("every exporter killed; restarted 31s later")
    await d.restart(31)
    await d.hold(120)
    d.heal()
    await d.wait_for("purchases resumed", 400)


def _restart_expect(t: Timeline) -> list[str]:
    problems = pages_exactly(t, {"ExchangeApiDown": 1})
    resolved = t.paged("resolved")
    early = [at for at, name, s in t.pages if s == "resolved" and t.at(at) < 240]
    if early:
        problems.append(f"ExchangeApiDown resolved while Kraken was down: {resolved}")
    return problems + within(t, "purchases resumed", 600)


async def _isolated(d: Drill) -> None:
    await d.hold(60)
    d.fault("healthy", "replica 1 cannot reach Kraken; replica 2 can")
    await d.hold(240)


def _isolated_expect(t: Timeline) -> list[str]:
    problems = _quiet_expect(t)
    if not t.isolated_seen:
        problems.append("replica 1 never said it was isolated (liquid_abt_exchange_isolated)")
    return problems


SCENARIOS: dict[str, Scenario] = {s.name: s for s in [
    Scenario("refused", "1, 8, 11, 12", _refused, _refused_expect),
    Scenario("crossed-book", "2", _crossed_book, _crossed_book_expect),
    Scenario("flapping", "7", _flapping, _flapping_expect),
    Scenario("sporadic", "3", _sporadic, _sporadic_expect),
    Scenario("rate-limited", "4", _rate_limited, _rate_limited_expect),
    Scenario("maintenance", "5", _maintenance, _maintenance_expect),
    Scenario("invalid-key", "6", _invalid_key, _invalid_key_expect),
    Scenario("restart", "9", _restart, _restart_expect),
    Scenario("isolated-replica", "10", _isolated, _isolated_expect, bad_network_replica=True),
]}  # fmt: skip


# ---- running one ------------------------------------------------------------------------------


def _kraken_keys() -> tuple[str, str]:
    return "drill-key", base64.b64encode(secrets.token_bytes(64)).decode()


async def run_scenario(
    scenario: Scenario, folder: Path, timing: Timing, database_url: str
) -> Timeline:
    """Run one scenario on a fresh stack in `folder` against `database_url` (migrated, empty)."""
    timeline = Timeline(scenario.name, timing)
    pager = Pager()
    await pager.start()
    key, secret = _kraken_keys()
    token = folder / "webhook-token"
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    await asyncio.to_thread(token.write_text, TOKEN)
    with Stack(folder) as stack:
        kraken = await asyncio.to_thread(stack.kraken_server, api_key=key, api_secret=secret)
        ports = [free_port() for _ in range(scenario.replicas)]
        am_port = free_port()
        alertmanager_url = f"http://127.0.0.1:{am_port}"
        env = {
            "LIQUID_ABT_WEBHOOK_TOKEN": TOKEN,
            "KRAKEN_API_KEY": key,
            "KRAKEN_API_SECRET": secret,
        }

        def start(i: int) -> ExporterProcess:
            url = kraken.url
            if scenario.bad_network_replica and i == 0:
                url = f"http://127.0.0.1:{free_port()}"  # nothing listens: this replica's network
            config = exporter_config(timing, url, alertmanager_url)
            return stack.exporter(database_url=database_url, config_yaml=config, env=env,
                                  port=ports[i])  # fmt: skip

        # The replica with the bad network joins a running cluster (started last): as one
        # whose network breaks would, and unlike a first replica, which has nobody to ask.
        order = list(range(scenario.replicas))[:: -1 if scenario.bad_network_replica else 1]
        started = {i: await asyncio.to_thread(start, i) for i in order}
        exporters = [started[i] for i in range(scenario.replicas)]
        config = alertmanager_config(timing, [e.url for e in exporters], token, pager.url)
        await asyncio.to_thread(stack.alertmanager, config, port=am_port)
        prometheus = await asyncio.to_thread(
            stack.prometheus, [e.target for e in exporters],
            scaled_rules(folder / "rules", timing), [alertmanager_url],
            scrape_interval=timing.d(15), evaluation_interval=timing.d(15),
        )  # fmt: skip

        async def restart(shipped_gap: float) -> None:
            for exporter in exporters:
                await asyncio.to_thread(exporter.stop)
            await asyncio.sleep(timing.s(shipped_gap))
            for i in range(len(exporters)):
                exporters[i] = await asyncio.to_thread(start, i)

        # 60 purchases a minute in shipped time (issue 10's platform), so faster when scaled.
        platform = Platform(database_url, kraken.url, key, secret, timeout=timing.s(10),
                            rate_per_minute=60 / timing.scale)  # fmt: skip
        drill = Drill(timing, stack, kraken, exporters, timeline, restart)
        watcher = Watcher(database_url, prometheus, pager, timeline, exporters)
        stop = asyncio.Event()
        tasks = [asyncio.create_task(platform.run(stop)), asyncio.create_task(watcher.run(stop))]
        try:
            await scenario.act(drill)
            timeline.isolated_seen = (
                any(
                    'liquid_abt_exchange_isolated{exchange="kraken"} 1.0' in e.metrics()
                    for e in exporters
                    if e.alive()
                )
                or timeline.isolated_seen
            )
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            await pager.stop()
        timeline.reasons = await _reason_classes(database_url)
        timeline.decisions = await _decisions(database_url, timeline)
    return timeline


_DECISIONS_SQL = """
SELECT extract(epoch FROM at)::float8 AS at, action, result, actor,
       coalesce(detail->>'from' || ' -> ' || (detail->>'to'), detail->>'to', '') AS change
FROM liquid_abt.audit_log
WHERE action IN ('incident_opened', 'incident_relapsed', 'incident_closed', 'verify_recovery',
                 'breaker_transition', 'set_api_rate_multiplier')
  AND result <> 'unchanged'
ORDER BY id
"""


async def _decisions(database_url: str, timeline: Timeline) -> list[tuple[float, str]]:
    """The incident model's decisions, as the audit log has them."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(_DECISIONS_SQL)
    finally:
        await conn.close()
    return [
        (round(timeline.timing.shipped(r["at"] - timeline.t0_wall), 1),
         f"{r['action']} {r['result']} {r['change']}".strip())
        for r in rows
    ]  # fmt: skip


async def _reason_classes(database_url: str) -> dict[str, int]:
    """How the exporter classifies the platform's failures (the reason label of its metrics)."""
    classify = ReasonClassifier(Config().purchases.failure_reasons).classify
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT failure_reason, count(*) AS n FROM bitcoin_purchases WHERE status = 'failed' GROUP BY 1"
        )
    finally:
        await conn.close()
    counts: dict[str, int] = {}
    for row in rows:
        reason = classify(row["failure_reason"])
        counts[reason] = counts.get(reason, 0) + row["n"]
    return counts


# ---- `liquid-abt-exporter drill` ----------------------------------------------------------------


async def _fresh_database(server_dsn: str, name: str) -> str:
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    url = server_dsn.rsplit("/", 1)[0] + f"/{name}"
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn, with_platform_schema=True)
    finally:
        await conn.close()
    return url


async def run_all(names: Sequence[str], folder: Path, timing: Timing) -> int:
    failed = 0
    with Stack(folder) as stack:
        postgres = await asyncio.to_thread(stack.postgres)
        for name in names:
            scenario = SCENARIOS[name]
            url = await _fresh_database(postgres.dsn, f"drill_{name.replace('-', '_')}")
            started = time.monotonic()
            timeline = await run_scenario(scenario, folder / name, timing, url)
            problems = scenario.expect(timeline)
            print(timeline.table())
            print(f"  issue 10 case(s) {scenario.case}; ran {time.monotonic() - started:.0f}s; "
                  + ("as expected" if not problems else "NOT AS EXPECTED: " + "; ".join(problems)),
                  flush=True)  # fmt: skip
            print()
            failed += bool(problems)
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="liquid-abt-exporter drill",
        description="Replay the runbooks' incidents on the whole loop (PostgreSQL, the "
        "Kraken-compatible server, two exporters, Prometheus with the shipped rules, "
        "Alertmanager with the shipped routes, a platform buying through the exchange) and "
        "print one timeline per scenario: when purchases stopped, what paged, how often the "
        "breaker changed state, when purchases resumed.",
    )
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS),
                        help="run only this scenario (repeatable; default: all)")  # fmt: skip
    parser.add_argument("--scale", type=float, default=1.0,
                        help="multiply every timer by this (default 1: the shipped timers; "
                        "figures are always reported in shipped seconds)")  # fmt: skip
    parser.add_argument("--folder", type=Path, default=Path(".data/drill"),
                        help="where the programs run and log (default .data/drill)")  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.scale <= 0:
        build_parser().error(f"--scale {args.scale}: must be above 0")
    names = args.scenario or list(SCENARIOS)
    return asyncio.run(run_all(names, args.folder.resolve(), Timing(args.scale)))
