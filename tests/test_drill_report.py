"""The drill's report for issue 19's closing table: each page's summary as its reader saw it, and
failures queued against the runbook's retry-eligible failures.

The summaries are checked on the group shapes tests/rules/test_templates.py renders with amtool
from alerts/liquid-abt.tmpl: the same expectation, so the drill's rebuilding of the text cannot
drift from the template without one of the two tests failing. The eligible/queued count runs its
SQL on a real PostgreSQL with the platform schema; no exporter, no Alertmanager.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from exporter.config import Config
from exporter.signals.classify import ReasonClassifier
from liquid_abt_drill.incidents.pager import Alert, Notification, summary
from liquid_abt_drill.incidents.timeline import RetryCoverage, Timeline, retry_coverage
from liquid_abt_drill.incidents.timing import ESCALATIONS, PAGER, Timing
from tests.rules.shipped import ALERTMANAGER_CONFIG, load
from tests.rules.test_templates import SHAPES, _group

CLASSIFIER = ReasonClassifier(Config().purchases.failure_reasons)


@pytest.mark.parametrize("shape", SHAPES, ids=list(SHAPES))
def test_a_page_summary_is_the_templates(shape: str) -> None:
    alerts, expected = SHAPES[shape]
    payload = _group(alerts)  # what the webhook receives carries the same fields
    built = summary([Alert.from_payload(a) for a in payload["alerts"]], payload["groupLabels"])
    assert built == expected


def test_a_summary_without_annotation_names_the_exchange_and_an_empty_group_its_alertname() -> None:
    assert summary([Alert("ExchangeApiDown", "firing", {"exchange": "kraken"})]) == (
        "ExchangeApiDown on kraken"
    )
    assert summary([], {"alertname": "ExchangeApiDown"}) == "ExchangeApiDown"
    assert summary([]) == "LIQUID ABT alert"


def test_the_report_knows_the_shipped_paging_and_escalation_receivers() -> None:
    critical = next(
        r for r in load(ALERTMANAGER_CONFIG)["route"]["routes"]
        if r.get("matchers") == ['severity="critical"']
    )  # fmt: skip
    levels = {r["receiver"] for r in critical["routes"] if 'escalate="true"' in r["matchers"]}
    pages = {r["receiver"] for r in critical["routes"] if 'escalate!="true"' in r["matchers"]}
    assert (levels, pages) == (set(ESCALATIONS), {PAGER})


def test_the_report_lists_pages_and_escalations_relative_to_the_fix_and_the_resumption() -> None:
    down = Alert("ExchangeApiDown", "firing", {"exchange": "kraken"}, {"summary": "kraken down"})
    timeline = Timeline("refused", Timing(1.0), t0=1000.0)
    timeline.fixed = 300.0
    timeline.first["purchases resumed"] = 400.0
    timeline.retry = RetryCoverage(eligible=12, queued=11)
    timeline.notifications = [
        Notification("oncall-pager", 1070.0, "firing", (down,)),
        Notification("technical-lead", 1310.0, "firing", (down,)),
        Notification("team-chat", 1320.0, "firing", (down,)),  # neither a page nor an escalation
    ]
    rows = [text for _, text in timeline.report_rows()]
    assert rows == [
        "retry queue: queued 11 of 12 eligible (the runbook's retry query, at the end)",
        "page at +70.0s: kraken down",
        "escalation to technical-lead at +310.0s (10.0s after the fix, 90.0s before purchases "
        "resumed): kraken down",
    ]


async def fail(db: asyncpg.Connection, reason: str | None, **overrides: Any) -> str:
    row = {"status": "failed", "retry_count": 0, "seconds_ago": 60.0, **overrides}
    return await db.fetchval(
        """INSERT INTO bitcoin_purchases
               (tenant_id, amount_aud, status, failure_reason, exchange_provider, retry_count,
                created_at)
           VALUES ('t', 100, $1, $2, 'Kraken', $3, now() - make_interval(secs => $4::float8))
           RETURNING id::text""",
        row["status"], reason, row["retry_count"], row["seconds_ago"],
    )  # fmt: skip


async def test_queued_is_counted_among_the_runbooks_eligible_failures(
    db: asyncpg.Connection,
) -> None:
    refused = [await fail(db, "Connection refused by api.kraken.com") for _ in range(3)]
    await fail(db, "EAPI:Rate limit exceeded")  # eligible, not queued
    queued_but_not_eligible = [
        await fail(db, "Insufficient funds in wallet"),  # reason class insufficient_funds
        await fail(db, "Connection refused", retry_count=3),  # retried enough
        await fail(db, "Connection refused", seconds_ago=3700),  # older than an hour
        await fail(db, None, status="completed"),  # not a failure
    ]
    assert CLASSIFIER.classify("Insufficient funds in wallet") == "insufficient_funds"
    for purchase in refused[:2] + queued_but_not_eligible:
        await db.execute(
            """INSERT INTO liquid_abt.retry_queue (purchase_id, exchange, next_attempt_at)
               VALUES ($1, 'kraken', now())""",
            purchase,
        )
    assert await retry_coverage(db, CLASSIFIER) == RetryCoverage(eligible=4, queued=2)
