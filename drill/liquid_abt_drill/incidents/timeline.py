"""What happened: the timeline of a scenario, polled from PostgreSQL, Prometheus and the pager."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from exporter.config import Config
from exporter.controls import gate
from exporter.runbook import review
from exporter.signals.classify import ReasonClassifier

from ..stack import (
    DeadlinePassed,
    ExporterProcess,
    PrometheusProcess,
    wait_until,
)
from .pager import Notification, Pager
from .timing import ESCALATIONS, EXCHANGE, PAGER, Timing

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
    # Probe calls the exchange refused for their nonce, every replica together: 0 when each
    # replica has its own key, as the runbook asks.
    invalid_nonces: float = 0.0
    reasons: dict[str, int] = field(default_factory=dict)
    fixed: float | None = None  # when the scenario removed the fault, shipped seconds
    retry: RetryCoverage | None = None  # the runbook's retry query, at the end
    notifications: list[Notification] = field(default_factory=list)  # every human receiver's
    # The generated post-incident review of each incident the scenario recorded (Markdown).
    reviews: list[tuple[int, str]] = field(default_factory=list)
    # Customer notices queued for the platform's notifier: (shipped seconds, kind, to whom).
    notices: list[tuple[float, str, str]] = field(default_factory=list)
    # Failover: purchases (retries included) the platform bought, and failed, on each exchange.
    bought_on: dict[str, int] = field(default_factory=dict)
    failed_on: dict[str, int] = field(default_factory=dict)
    # Each change of the gate's buy_on for Kraken as the watcher saw it: (shipped seconds, buy_on),
    # timed when the watcher's gate read returned.
    route_changes: list[tuple[float, str | None]] = field(default_factory=list)
    # Every order the platform placed: (shipped seconds when it began the gate read or retry
    # claim that sent it, exchange, bought). One begun after a route change was seen can only
    # have read the gate after that change.
    orders: list[tuple[float, str, bool]] = field(default_factory=list)

    def at(self, when: float) -> float:
        return round(self.timing.shipped(when - self.t0), 1)

    def mark(self, text: str) -> None:
        self.marks.append((self.at(time.monotonic()), text))

    def fix(self, text: str) -> None:
        """The scenario removed the fault: escalations are reported relative to this."""
        self.mark(text)
        if self.fixed is None:
            self.fixed = self.marks[-1][0]

    def see(self, what: str, when: float) -> None:
        self.first.setdefault(what, self.at(when))

    def paged(self, status: str = "firing") -> dict[str, int]:
        counts: dict[str, int] = {}
        for _, name, s in self.pages:
            if s == status:
                counts[name] = counts.get(name, 0) + 1
        return counts

    def paged_by_exchange(self) -> dict[str, int]:
        """Pages that fired, by alert and exchange (`"ExchangeApiDown kraken": 1`)."""
        counts: dict[str, int] = {}
        for n in self.notifications:
            if n.receiver != PAGER:
                continue
            for a in n.alerts:
                if a.status == "firing":
                    key = f"{a.name} {a.labels.get('exchange', '')}".strip()
                    counts[key] = counts.get(key, 0) + 1
        return counts

    def bought_there_unfailed(self, exchange: str) -> list[str]:
        """Problems unless something was bought on `exchange` and nothing failed there: what
        every failover check asks of the secondary purchases were routed to."""
        problems = []
        if not self.bought_on.get(exchange):
            problems.append(f"nothing bought on {exchange}: {self.bought_on}")
        if self.failed_on.get(exchange):
            problems.append(f"{self.failed_on[exchange]} purchases failed on {exchange}")
        return problems

    def at_most_one_pause(self) -> list[str]:
        pauses = self.last.get("pauses", 0)
        return [f"{pauses:.0f} pauses, expected at most one"] if pauses > 1 else []

    def first_page(self) -> tuple[float, str] | None:
        firing = [(at, name) for at, name, s in self.pages if s == "firing"]
        return (self.at(firing[0][0]), firing[0][1]) if firing else None

    def rows(self) -> list[tuple[str, str]]:
        rows = [(f"{at:+.1f}s", text) for at, text in self.marks]
        rows += [(f"{v:+.1f}s", k) for k, v in self.first.items()]
        rows += [(f"{at:+.1f}s", f"  audit: {text}") for at, text in self.decisions]
        rows += [(f"{at:+.1f}s", f"  gate buy_on: {to or 'NULL'}")
                 for at, to in self.route_changes]  # fmt: skip
        rows += [(f"{at:+.1f}s", f"  customer notice: {kind} to {to}")
                 for at, kind, to in self.notices]  # fmt: skip
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
        if self.invalid_nonces:
            rows.append(("", f"probe calls refused for their nonce: {self.invalid_nonces:.0f}"))
        if set(self.bought_on) - {EXCHANGE} or set(self.failed_on) - {EXCHANGE}:
            rows.append(("", f"purchases bought on: {self.bought_on}; failed on: "
                             f"{self.failed_on or 'none'}; failovers: "
                             f"{final.get('failovers', 0)}"))  # fmt: skip
        return rows + self.report_rows()

    def report_rows(self) -> list[tuple[str, str]]:
        """Issue 19's drill table: queued against eligible, each page with the summary its
        reader saw, each escalation e-mail relative to the fix and to purchases resuming."""
        rows = []
        if self.retry is not None:
            rows.append(("", f"retry queue: queued {self.retry.queued} of {self.retry.eligible} "
                             "eligible (the runbook's retry query, at the end)"))  # fmt: skip
        pages = [n for n in self.notifications if n.receiver == PAGER]
        rows += [("", f"page at {self.at(n.at):+.1f}s: {n.summary}") for n in pages]
        if not pages:
            rows.append(("", "pages: none"))
        escalations = [n for n in self.notifications if n.receiver in ESCALATIONS]
        resumed = self.first.get("purchases resumed")
        for n in escalations:
            at = self.at(n.at)
            rows.append(("", f"escalation to {n.receiver} at {at:+.1f}s "
                             f"({_relative(at, self.fixed, 'the fix')}, "
                             f"{_relative(at, resumed, 'purchases resumed')}): {n.summary}"))  # fmt: skip
        if not escalations:
            rows.append(("", "escalation e-mails: none"))
        return rows

    def table(self) -> str:
        lines = [f"scenario {self.scenario} (shipped seconds since the fault)"]
        lines += [f"  {when:>9}  {text}" for when, text in self.rows()]
        return "\n".join(lines)


def _relative(at: float, reference: float | None, what: str) -> str:
    if reference is None:
        return f"{what}: never"
    delta = round(at - reference, 1)
    return f"{abs(delta):.1f}s {'before' if delta < 0 else 'after'} {what}"


# ---- the runbook's retry query ---------------------------------------------------------------

# bitcoin-purchase-failures.md, "Retry Failed Purchases", over every purchase of the scenario (its
# database is its own): which failures are eligible, and which of them are in the retry queue.
_RETRY_SQL = """
SELECT p.failure_reason,
       EXISTS (SELECT 1 FROM liquid_abt.retry_queue q WHERE q.purchase_id = p.id::text) AS queued
FROM bitcoin_purchases p
WHERE p.status = 'failed' AND p.retry_count < 3 AND p.created_at > now() - interval '1 hour'
"""
RUNBOOK_NOT_RETRIED = frozenset({"insufficient_funds", "invalid_amount"})


@dataclass(frozen=True)
class RetryCoverage:
    """The failures the runbook's retry query returns, and how many of them are queued."""

    eligible: int
    queued: int


async def retry_coverage(conn: asyncpg.Connection, classifier: ReasonClassifier) -> RetryCoverage:
    """The runbook's query, its reasons classified as the exporter's metrics classify them (the
    runbook names the classes; the platform writes free text), against the retry queue. Written
    here, not taken from exporter/controls/retry_queue.py: the drill checks the exporter."""
    rows = await conn.fetch(_RETRY_SQL)
    eligible = [
        r for r in rows if classifier.classify(r["failure_reason"]) not in RUNBOOK_NOT_RETRIED
    ]
    return RetryCoverage(len(eligible), sum(r["queued"] for r in eligible))


async def retry_report(database_url: str, timing: Timing) -> RetryCoverage:
    """The retry coverage once the platform stopped: a failure of its last seconds is queued at
    the exporters' next fill (retry.fill_interval, 5 s shipped), so this waits up to three fills
    (and 5 real seconds for a busy machine) for every eligible one, then reports what it sees."""
    classifier = ReasonClassifier(Config().purchases.failure_reasons)
    conn = await asyncpg.connect(database_url)
    try:

        async def all_queued() -> bool:
            coverage = await retry_coverage(conn, classifier)
            return coverage.queued >= coverage.eligible

        with contextlib.suppress(DeadlinePassed):
            await wait_until(
                all_queued, timeout=timing.s(15) + 5, interval=max(0.05, timing.s(1)),
                what="every eligible failure queued",
            )  # fmt: skip
        return await retry_coverage(conn, classifier)
    finally:
        await conn.close()


# Failover as the watcher sees it (docs/failover.md): the gate's buy_on for Kraken, the incident's
# phase, the purchases the platform completed on another exchange.
ROUTE_WAIT = "purchases wait (the gate's buy_on is NULL)"
PROBATION = "Kraken's recovery verified: probation"
PROBATION_OVER = "Kraken's probation over (incident closed)"
BACK_ON_PRIMARY = f"back on {EXCHANGE} (the gate's buy_on)"
ROUTED_WARNING = "PurchasesRoutedToSecondary"


def routed_to(name: str) -> str:
    return f"purchases routed to {name} (the gate's buy_on)"


def bought_on(name: str) -> str:
    return f"first purchase bought on {name}"


_ROUTE_SQL = """
SELECT (SELECT failovers FROM liquid_abt.purchase_routes WHERE exchange = $1) AS failovers,
       (SELECT routed_to FROM liquid_abt.purchase_routes WHERE exchange = $1) AS routed_to,
       (SELECT json_object_agg(exchange_provider, at) FROM (
            SELECT exchange_provider, extract(epoch FROM min(created_at))::float8 AS at
            FROM bitcoin_purchases
            WHERE status = 'completed' AND exchange_provider <> $1 GROUP BY 1) f)::text AS bought
"""


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
        await self._watch_route(conn, row, now)
        tl.pages = self._pager.pages()
        tl.notifications = self._pager.notifications({PAGER, *ESCALATIONS})
        for n in self._pager.received:
            if n.receiver != PAGER and any(
                a.name == ROUTED_WARNING and a.status == "firing" for a in n.alerts
            ):
                tl.first.setdefault(f"{ROUTED_WARNING} sent to {n.receiver}", tl.at(n.at))
        await self._watch_webhook(row, now)

    async def _watch_route(self, conn: asyncpg.Connection, row: dict[str, Any], now: float) -> None:
        """Where the gate sends Kraken's purchases, and when each secondary first sold."""
        tl = self.timeline
        buy_on = (await gate.purchase_gate(conn, EXCHANGE)).buy_on
        # Timed once the read returned: the platform's reads begun later see this change or a
        # newer one (Timeline.orders).
        read = time.monotonic()
        route = await conn.fetchrow(_ROUTE_SQL, EXCHANGE)
        row["buy_on"], row["routed_to"] = buy_on, route["routed_to"]
        row["failovers"] = route["failovers"] or 0
        if not tl.route_changes or tl.route_changes[-1][1] != buy_on:
            tl.route_changes.append((tl.at(read), buy_on))
        if buy_on is None:
            tl.see(ROUTE_WAIT, now)
        elif buy_on != EXCHANGE:
            tl.see(routed_to(buy_on), now)
        elif any(k.startswith("purchases routed to ") for k in tl.first):
            tl.see(BACK_ON_PRIMARY, now)
        if row["phase"] == "probation":
            tl.see(PROBATION, now)
        elif PROBATION in tl.first and row["phase"] == "normal":
            tl.see(PROBATION_OVER, now)
        for name, at in json.loads(route["bought"] or "{}").items():
            if at >= tl.t0_wall:
                tl.first.setdefault(bought_on(name), round(tl.timing.shipped(at - tl.t0_wall), 1))

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


_DECISIONS_SQL = """
SELECT extract(epoch FROM at)::float8 AS at, action, result, actor,
       CASE WHEN action LIKE 'route_%'
            THEN 'route ' || coalesce(detail->>'route', '?')
                 || coalesce(' (blocked: ' || (detail->>'blocked_guard') || ')', '')
            ELSE coalesce(detail->>'from' || ' -> ' || (detail->>'to'), detail->>'to', '')
       END AS change
FROM liquid_abt.audit_log
WHERE action IN ('incident_opened', 'incident_relapsed', 'incident_closed', 'verify_recovery',
                 'breaker_transition', 'set_api_rate_multiplier', 'route_purchases',
                 'route_blocked', 'route_cleared')
  AND result <> 'unchanged'
ORDER BY id
"""


async def decisions(database_url: str, timeline: Timeline) -> list[tuple[float, str]]:
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


_NOTICES_SQL = """
SELECT extract(epoch FROM created_at)::float8 AS at, kind, seq, tenant_id,
       array_to_string(channels, ', ') AS channels
FROM liquid_abt.customer_notices
ORDER BY created_at, id
"""


async def notices(database_url: str, timeline: Timeline) -> list[tuple[float, str, str]]:
    """Each customer notice the exporters queued, when (docs/customer-notices.md)."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(_NOTICES_SQL)
    finally:
        await conn.close()
    return [
        (round(timeline.timing.shipped(r["at"] - timeline.t0_wall), 1),
         r["kind"] + (f" #{r['seq']}" if r["seq"] else ""),
         f"{r['tenant_id'] or 'every affected tenant'} ({r['channels']})")
        for r in rows
    ]  # fmt: skip


async def reason_classes(database_url: str) -> dict[str, int]:
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


async def incident_reviews(database_url: str) -> list[tuple[int, str]]:
    """Each incident's post-incident review, oldest first, as `liquid-abt-exporter admin
    --database-url URL incident-report ID` writes it (the same loader and renderer)."""
    classifier = ReasonClassifier(Config().purchases.failure_reasons)
    conn = await asyncpg.connect(database_url)
    try:
        ids = await conn.fetch("SELECT id FROM liquid_abt.incident_periods ORDER BY id")
        found = [await review.load_review(conn, r["id"], classifier) for r in ids]
    finally:
        await conn.close()
    return [(r.incident.id, review.markdown(r)) for r in found]
