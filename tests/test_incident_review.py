"""The generated post-incident review (issue 23): its impact figures against the runbook's own
query on the same rows, its timeline and times from recorded rows, its Markdown's structure, the
admin API's JSON and the operator CLI, through the API and straight on the database.

One database for the module: one incident (and one on another exchange) written once, read by
every test; the tests that change something do it in a transaction they roll back, or last.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from exporter.config import parse_config
from exporter.database.pool import Connection
from exporter.operator import main as admin
from exporter.runbook import review
from exporter.runbook.review.model import (
    DECISION,
    EVIDENCE,
    PAGE,
    RESUME,
    VERIFICATION,
)
from exporter.secrets import Secrets
from exporter.signals.classify import ReasonClassifier
from exporter.web.app import create_app
from tests.conftest import create_database, drop_database, with_database
from tests.harness import REPO

pytestmark = pytest.mark.asyncio(loop_scope="module")

CONFIG = parse_config({
    "exchanges": ["kraken", "independent_reserve"],
    "collectors": {"interval": "1h", "timeout": "10s"},
    "kraken": {"enabled": False},
})  # fmt: skip
CLASSIFIER = ReasonClassifier(CONFIG.purchases.failure_reasons)
TOKEN = "review-token"
T0 = datetime.fromisoformat("2025-01-10T10:00:00+00:00")
END = T0 + timedelta(minutes=20)
HEALTHY = T0 + timedelta(minutes=9, seconds=30)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


# (seconds from T0, actor, action, exchange, result, cause, detail)
AUDIT = [
    (-600, "automation", "pause_purchases", "kraken", "success", "long before", {}),
    (5, "automation", "incident_opened", "kraken", "success",
     "kraken refuses connections on 2 of 2 replicas for 5 s; evidence: 2 of 2 live replicas saw "
     "2+ failed rounds", {"cause": "unavailable"}),
    (5, "automation", "breaker_transition", "kraken", "success",
     "kraken refuses connections on 2 of 2 replicas for 5 s; evidence: ...",
     {"from": "CLOSED", "to": "OPEN"}),
    (5, "automation", "pause_purchases", "kraken", "success", "kraken refuses connections", {}),
    (5, "automation", "queue_failed_purchases_for_retry", "kraken", "success", "same",
     {"eligible": 3, "queued": 3}),
    (6, "automation", "pause_purchases", "kraken", "unchanged", "already paused", {}),
    (60, "automation", "breaker_transition", "independent_reserve", "success", "not ours",
     {"from": "CLOSED", "to": "OPEN"}),
    (120, "admin", "set_api_rate_multiplier", "kraken", "success", "slow down by hand",
     {"from": 1, "to": 0.5}),
    (600, "automation", "breaker_transition", "kraken", "success",
     "kraken healthy for 30 s (answers): verifying recovery after unavailable; evidence: ...",
     {"from": "OPEN", "to": "HALF_OPEN"}),
    (602, "automation", "verify_recovery", "kraken", "success", "kraken recovery verified",
     {"checks": [{"name": "ticker", "ok": True, "detail": "bid 150000"},
                 {"name": "balance", "ok": True, "detail": "AUD 10000"}]}),
    (602, "automation", "breaker_transition", "kraken", "success", "kraken recovery verified",
     {"from": "HALF_OPEN", "to": "CLOSED"}),
    (1200, "automation", "resume_purchases", "kraken", "success", "kraken is healthy again", {}),
    (1200, "automation", "make_retries_due", "kraken", "success", "kraken is healthy again",
     {"made_due": 1}),
    (1200, "automation", "incident_closed", "kraken", "success", "kraken is healthy again",
     {"started_at": str(T0), "healthy_since": str(HEALTHY)}),
]  # fmt: skip

# (seconds, alertname, status, exchange, summary)
PAGES = [
    (40, "ExchangeApiDown", "firing", "kraken", "Kraken API is down"),
    (90, "BitcoinPurchaseFailureRateHigh", "firing", None, "7% of purchases failed"),
    (660, "ExchangeApiDown", "resolved", "kraken", "Kraken API is down"),
    (3000, "ExchangeApiDown", "firing", "kraken", "long after"),
]

# (seconds, tenant, AUD, status, reason, exchange, retry queue status or None)
PURCHASES = [
    (-60, "t-early", "11.00", "failed", "Kraken API unavailable", "kraken", None),
    (-30, "t-ok", "99.00", "completed", None, "kraken", None),
    # The run of failures that led up to the incident: in its impact, its first evidence. The
    # first of them was retried and bought since: the platform updated its row in place
    # (platform-integration 3.5), so only its retry queue row says it failed.
    (-12, "t-i", "30.00", "completed", "Kraken API timeout: no answer", "kraken", "succeeded"),
    (-10, "t-h", "20.00", "failed", "Kraken API timeout: no answer", "kraken", None),
    (2, "t-a", "100.00", "completed", "Kraken API unavailable: down", "kraken", "succeeded"),
    (3, "t-b", "200.00", "failed", "Kraken API timeout: no answer", "kraken", "failed"),
    (4, "t-a", "300.00", "failed", "Kraken API network_error: refused", "kraken", "queued"),
    (4, "t-c", "50.00", "failed", "Request timed out", "kraken", None),
    (4, "t-d", "70.00", "failed", "EOrder:Insufficient funds", "kraken", None),
    (4, "t-e", "40.00", "failed", "IR API error", "independent_reserve", None),
    (4, "t-f", "25.00", "refunded", "Kraken API unavailable", "kraken", None),
    (4, "t-ok", "99.00", "completed", None, "kraken", None),
    (1200, "t-g", "10.00", "failed", "Kraken API unavailable", "kraken", None),
    (1260, "t-late", "13.00", "failed", "Kraken API unavailable", "kraken", None),
]


async def _seed(conn: asyncpg.Connection) -> None:
    await conn.execute(
        """INSERT INTO liquid_abt.incident_periods (exchange, cause, started_at, ended_at)
           VALUES ('kraken', 'unavailable', $1, $2),
                  ('independent_reserve', 'maintenance', $3, NULL)""",
        T0, END, at(3600),
    )  # fmt: skip
    for seconds, actor, action, exchange, result, cause, detail in AUDIT:
        await conn.execute(
            """INSERT INTO liquid_abt.audit_log (at, actor, action, exchange, result, cause, detail)
               VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)""",
            at(seconds), actor, action, exchange, result, cause, json.dumps(detail),
        )  # fmt: skip
    for n, (seconds, alertname, status, exchange, summary) in enumerate(PAGES):
        await conn.execute(
            """INSERT INTO liquid_abt.notifications (fingerprint, status, starts_at, alertname,
                   exchange, labels, received_at, processed_at, summary)
               VALUES ($1, $2, $3, $4, $5, '{}', $6, $6, $7)""",
            f"fp{n}", status, at(seconds), alertname, exchange, at(seconds), summary,
        )  # fmt: skip
    for seconds, tenant, amount, status, reason, exchange, queued in PURCHASES:
        purchase = await conn.fetchval(
            """INSERT INTO bitcoin_purchases (tenant_id, amount_aud, status, failure_reason,
                   exchange_provider, created_at) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id""",
            tenant, Decimal(amount), status, reason, exchange, at(seconds),
        )  # fmt: skip
        if queued:
            await conn.execute(
                """INSERT INTO liquid_abt.retry_queue (purchase_id, exchange, tenant_id,
                       next_attempt_at, status) VALUES ($1, $2, $3, $4, $5)""",
                str(purchase), exchange, tenant, at(seconds), queued,
            )  # fmt: skip


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def database(pg_server_dsn: str, template_db: str) -> AsyncIterator[Connection]:
    name = await create_database(pg_server_dsn, template_db, prefix="review")
    dsn = with_database(pg_server_dsn, name)
    conn = await asyncpg.connect(dsn)
    try:
        # The module starts without a notice outbox (the report says so), whether or not the
        # migrations have one; a test creates one of the outbox's shape below.
        await conn.execute("DROP TABLE IF EXISTS liquid_abt.customer_notices CASCADE")
        await _seed(conn)
    finally:
        await conn.close()
    yield Connection(dsn)
    await drop_database(pg_server_dsn, name)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool(database: Connection) -> AsyncIterator[asyncpg.Pool]:
    created = await asyncpg.create_pool(database.dsn, min_size=1, max_size=4)
    assert created is not None
    yield created
    await created.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(database: Connection) -> AsyncIterator[TestClient]:
    started = TestClient(TestServer(create_app(CONFIG, database, Secrets(admin_token=TOKEN))))
    await started.start_server()
    yield started
    await started.close()


async def load(pool: asyncpg.Pool, reference: int | str = 1) -> review.Review:
    return await review.load_review(pool, reference, CLASSIFIER)


def runbook_query() -> str:
    """The exchange runbook's impact query as docs/incident-review.md quotes it."""
    text = (REPO / "docs" / "incident-review.md").read_text()
    [sql] = [b for b in re.findall(r"```sql\n(.*?)```", text, re.S) if "$INCIDENT_START" in b]
    return sql.replace("$INCIDENT_START", "$1").replace("$INCIDENT_END", "$2").rstrip().rstrip(";")


# ---- the figures ----


async def test_impact_equals_the_runbook_query_on_the_same_rows(pool: asyncpg.Pool) -> None:
    found = await load(pool)
    expected = await pool.fetchrow(runbook_query(), at(-12), END)
    runbook = found.runbook_impact
    assert (runbook.affected_purchases, runbook.total_amount_affected,
            runbook.affected_customers) == tuple(expected)  # fmt: skip
    # Not vacuous: the rows around the window are left out (a failure before the last success
    # that preceded the incident too), the end is in (BETWEEN), another exchange's API failure
    # is in, a reason without "API", a refunded purchase and the failures a retry has bought
    # since are not (the runbook's query counts what is still failed).
    assert tuple(expected) == (5, Decimal("570.00"), 5)
    assert (found.impact_start, found.impact_end) == (at(-12), END)


async def test_the_exchange_figures_and_what_became_of_each_purchase(pool: asyncpg.Pool) -> None:
    found = await load(pool)
    totals = found.exchange_impact.totals
    assert (totals.affected_purchases, totals.total_amount_aud, totals.affected_tenants) == (
        6, Decimal("665.00"), 6,
    )  # fmt: skip
    assert found.exchange_impact.by_reason["insufficient_funds"].affected_purchases == 1
    r = found.retries
    assert (r.failed_purchases, r.queued, r.succeeded, r.pending, r.exhausted, r.not_queued,
            r.refunded, r.still_failed) == (8, 4, 2, 1, 1, 3, 1, 4)  # fmt: skip


async def test_times_to_stop_pause_and_resume(pool: asyncpg.Pool) -> None:
    d = (await load(pool)).durations
    assert d.first_evidence == at(-12)  # the first failed purchase of the run, retried since
    assert d.time_to_stop == timedelta(seconds=17)
    assert d.time_paused == timedelta(seconds=1195)
    assert (
        d.evidence_clear == HEALTHY
        and d.evidence_clear_from == "the health the incident model recorded"
    )
    assert d.time_to_resume == END - HEALTHY


# ---- the timeline ----


async def test_the_timeline_is_in_order_with_each_source(pool: asyncpg.Pool) -> None:
    found = await load(pool)
    entries = found.timeline
    assert [e.at for e in entries] == sorted(e.at for e in entries)
    texts = [(e.source, e.text) for e in entries]
    assert texts[:2] == [
        (EVIDENCE, "first failed purchase on kraken of the run that led to the incident: Kraken "
         "API timeout: no answer"),
        (EVIDENCE, "kraken failing (unavailable): the incident's start, from the probes and the "
         "platform's calls"),
    ]  # fmt: skip
    assert {s for s, _ in texts} == {EVIDENCE, DECISION, PAGE, VERIFICATION, RESUME}
    joined = "\n".join(t for _, t in texts)
    assert "breaker CLOSED -> OPEN: kraken refuses connections on 2 of 2 replicas for 5 s" in joined
    assert (PAGE, "ExchangeApiDown firing: Kraken API is down") in texts
    assert (PAGE, "ExchangeApiDown resolved: Kraken API is down") in texts
    assert (VERIFICATION, "recovery verification passed: ticker ok (bid 150000); balance ok "
            "(AUD 10000)") in texts  # fmt: skip
    assert (DECISION, "3 failed purchase(s) queued for retry (3 eligible)") in texts
    assert any(s == DECISION and t.startswith("API rate x1 -> x0.5 by admin") for s, t in texts)
    assert any(s == RESUME and t.startswith("purchases resumed") for s, t in texts)
    # Outside the window, of another exchange, or changing nothing: left out.
    for absent in ("long before", "long after", "not ours", "already paused"):
        assert absent not in joined


# ---- the Markdown ----


def sections(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.startswith("#")]


async def test_the_markdown_has_every_section_in_order(pool: asyncpg.Pool) -> None:
    text = review.markdown(await load(pool))
    assert sections(text) == [
        "# Incident 1: kraken, unavailable", "## Times", "## Timeline", "## Impact",
        "### The runbook's query", "### Failed purchases on kraken, any reason", "### Retries",
        "## Customer notices", "## Root cause analysis",
        '### bitcoin-purchase-failures.md, "Post-Incident Actions" (Root Cause Analysis, '
        "Customer Follow-up, Update Documentation)",
        '### exchange-api-failures.md, "Post-Incident Review" (Improvements)',
    ]  # fmt: skip
    cells = [[c.strip() for c in line.strip("|").split("|")]
             for line in text.splitlines() if line.startswith("|")]  # fmt: skip
    assert ["5", "570.00", "5"] in cells  # the runbook's query
    assert ["Time to stop", "first evidence", "purchases stopped", "17.0 s"] in cells
    assert ["4", "2", "1", "1", "0", "3", "1", "4"] in cells  # retries
    timeline = [c for c in cells if len(c) == 4 and c[2] in {EVIDENCE, DECISION, PAGE}]
    assert timeline[0][1:3] == ["+0:00:00.0", EVIDENCE]
    # Every question of the runbooks, each with its item and a blank answer.
    questions = re.findall(r"^\d+\. (.+)\n\s+- Answer:\s*$", text, re.M)
    assert len(questions) == 11
    assert 'What was the primary cause? (runbook: "Identify primary and contributing factors")' in (
        questions
    )
    assert "No customer notice outbox in this database" in text


# ---- notices, where the outbox exists ----


async def test_the_notices_section_reads_the_outbox_when_it_exists(
    pool: asyncpg.Pool, database: Connection
) -> None:
    # Created here, last but for the API tests: the tests above saw no outbox.
    conn = await asyncpg.connect(database.dsn)
    try:
        await conn.execute(
            """CREATE TABLE liquid_abt.customer_notices (
                   id bigserial PRIMARY KEY,
                   incident_id bigint REFERENCES liquid_abt.incident_periods(id),
                   exchange text NOT NULL, kind text NOT NULL, seq integer NOT NULL DEFAULT 0,
                   tenant_id text, channels text[] NOT NULL DEFAULT '{}', message text,
                   state text NOT NULL, created_at timestamptz NOT NULL,
                   ready_at timestamptz, claimed_at timestamptz, sent_at timestamptz,
                   attempts integer NOT NULL DEFAULT 0, last_error text)"""
        )
        rows = [("incident_started", None, "sent", at(20), at(25)),
                ("purchase_failed", "t-a", "sent", at(30), at(31)),
                ("purchase_failed", "t-b", "failed", at(30), None),
                ("incident_resolved", None, "queued", at(1201), None)]  # fmt: skip
        for kind, tenant, state, created, sent in rows:
            await conn.execute(
                """INSERT INTO liquid_abt.customer_notices (incident_id, exchange, kind, tenant_id,
                       channels, message, state, created_at, sent_at)
                   VALUES (1, 'kraken', $1, $2, '{app_notification,email}', 'm', $3, $4, $5)""",
                kind, tenant, state, created, sent,
            )  # fmt: skip
    finally:
        await conn.close()
    found = await load(pool, 1)
    assert found.notices is not None and len(found.notices) == 4
    text = review.markdown(found)
    cells = [[c.strip() for c in line.strip("|").split("|")]
             for line in text.splitlines() if line.startswith("|")]  # fmt: skip
    header = ["kind", "queued", "held", "claimed", "sent", "failed", "cancelled", "tenants",
              "first sent"]  # fmt: skip
    assert header in cells
    assert [
        "purchase_failed",
        "0",
        "0",
        "0",
        "1",
        "1",
        "0",
        "2",
        "2025-01-10 10:00:31 UTC",
    ] in cells
    assert ("notice", "incident_started sent") in [(e.source, e.text) for e in found.timeline]
    assert found.as_json()["notices"][0]["channels"] == ["app_notification", "email"]


# ---- references and errors ----


async def test_a_reference_is_an_id_or_latest() -> None:
    assert review.parse_reference("latest") == "latest"
    assert review.parse_reference(" 12 ") == 12
    for bad in ("0", "-1", "abc", "1.5", ""):
        with pytest.raises(ValueError, match=re.escape(f"incident {bad!r}: give an incident id")):
            review.parse_reference(bad)


async def test_unknown_ids_and_latest_without_incidents_say_so(pool: asyncpg.Pool) -> None:
    with pytest.raises(review.IncidentNotFound, match=r"^no incident 99: the newest is 2 "):
        await load(pool, 99)

    class Rollback(Exception):
        pass

    with pytest.raises(Rollback):
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("TRUNCATE liquid_abt.incident_periods CASCADE")
            with pytest.raises(
                review.IncidentNotFound, match="^incident latest: no incidents recorded yet"
            ):
                await review.load_review(conn, "latest", CLASSIFIER)
            raise Rollback  # the rows stay for the other tests
    assert (await load(pool, "latest")).incident.id == 2


# ---- the admin API and the operator CLI ----

AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def test_the_admin_api_lists_incidents_and_serves_the_review(client: TestClient) -> None:
    response = await client.get("/api/admin/incidents", headers=AUTH)
    assert response.status == 200
    listed = await response.json()
    assert [e["id"] for e in listed["entries"]] == [2, 1] and listed["total"] == 2
    first = listed["entries"][1]
    assert first == {
        "id": 1, "exchange": "kraken", "cause": "unavailable", "state": "resolved",
        "startedAt": T0.isoformat(), "stoppedAt": at(5).isoformat(),
        "resumedAt": END.isoformat(), "endedAt": END.isoformat(), "durationSeconds": 1200.0,
    }  # fmt: skip
    assert listed["entries"][0]["state"] == "open" and listed["entries"][0]["resumedAt"] is None

    response = await client.get("/api/admin/incidents/1", headers=AUTH)
    assert response.status == 200
    answer = await response.json()
    assert set(answer) == {"incident", "generatedAt", "timeline", "impact", "durations",
                           "notices", "rcaChecklist"}  # fmt: skip
    assert set(answer["impact"]) == {"start", "end", "runbookQuery", "exchange", "retries"}
    assert answer["impact"]["runbookQuery"] == {
        "affectedPurchases": 5, "totalAmountAffected": "570.00", "affectedCustomers": 5,
    }  # fmt: skip
    assert answer["impact"]["retries"]["stillFailed"] == 4
    assert answer["durations"]["timeToStopSeconds"] == 17.0
    assert set(answer["timeline"]["entries"][0]) == {"at", "source", "actor", "text"}
    assert all(q["answer"] is None for s in answer["rcaChecklist"] for q in s["questions"])

    response = await client.get("/api/admin/incidents/latest?format=markdown", headers=AUTH)
    assert response.status == 200 and response.content_type == "text/markdown"
    assert (await response.text()).startswith("# Incident 2: independent_reserve, maintenance\n")


@pytest.mark.parametrize(
    ("path", "status", "error"),
    [
        ("incidents/99", 404, "no incident 99: the newest is 2 (`admin incidents` lists them)"),
        ("incidents/abc", 400, "incident 'abc': give an incident id (a whole number from 1, as "
                               "`admin incidents` lists them) or latest"),
        ("incidents/1?format=pdf", 400, None),
        ("incidents?limit=0", 400, None),
    ],
)  # fmt: skip
async def test_the_admin_api_names_the_bad_value(
    client: TestClient, path: str, status: int, error: str | None
) -> None:
    response = await client.get(f"/api/admin/{path}", headers=AUTH)
    assert response.status == status
    body = await response.json()
    if error is not None:
        assert body["error"] == error
    else:
        assert "pdf" in body["error"] or "limit" in body["error"]


async def test_the_cli_writes_the_report_through_the_api_and_on_the_database(
    client: TestClient, database: Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setenv("LIQUID_ABT_ADMIN_TOKEN", TOKEN)
    url = str(client.make_url("/")).rstrip("/")
    via_api = tmp_path / "api.md"
    code = await asyncio.to_thread(
        admin, ["--exporter.url", url, "incident-report", "1", "--output", str(via_api)]
    )
    assert code == 0, capsys.readouterr().err
    assert capsys.readouterr().out == f"incident report 1 written to {via_api}\n"
    code = await asyncio.to_thread(admin, ["--exporter.url", url, "incidents"])
    listing = capsys.readouterr().out
    assert code == 0 and listing.splitlines()[0].split() == [
        "ID", "EXCHANGE", "CAUSE", "STARTED", "STOPPED", "RESUMED", "DURATION", "STATE",
    ]  # fmt: skip
    assert "+5.0s" in listing and "+20m00s" in listing

    monkeypatch.delenv("LIQUID_ABT_ADMIN_TOKEN")
    code = await asyncio.to_thread(admin, ["--database-url", database.dsn, "incident-report", "1"])
    direct = capsys.readouterr().out
    assert code == 0
    # The same report, but for the instant it was generated at.
    generated = re.compile(r"^Generated .*? by", re.M)
    assert generated.sub("", direct) == generated.sub("", via_api.read_text()) + "\n"

    code = await asyncio.to_thread(admin, ["--database-url", database.dsn, "incident-report", "7"])
    assert code == 1
    assert capsys.readouterr().err == (
        "error: no incident 7: the newest is 2 (`admin incidents` lists them)\n"
    )
