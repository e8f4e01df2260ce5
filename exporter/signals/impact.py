"""The runbook's post-incident impact report: purchases, AUD and tenants hit in a time range.

The runbook filters `failure_reason LIKE '%API%'`; here the free-text reason is classified into
the closed reason classes (the same classifier as the metrics), and an optional `reason` class
narrows the report. Failed purchases that were refunded since (the runbook's manual override sets
status 'refunded') still count as affected, so the report reads the same before and after refunds.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from exporter.database.transactions import Executor
from exporter.signals.classify import ReasonClassifier

# Grouped by tenant so distinct tenants can be counted per exchange and per class after the
# reason is classified in Python (the patterns are Python regexes, not PostgreSQL ones).
# The range is half-open, [start, end), so consecutive reports never count a purchase twice.
IMPACT_SQL = """
SELECT lower(p.exchange_provider) AS exchange, p.failure_reason, p.tenant_id,
       count(*) AS purchases,
       count(*) FILTER (WHERE p.status = 'refunded') AS refunded,
       coalesce(sum(p.amount_aud), 0) AS amount_aud,
       coalesce(sum(p.refund_amount) FILTER (WHERE p.status = 'refunded'), 0) AS refund_amount
FROM bitcoin_purchases p
WHERE (p.status = 'failed' OR (p.status = 'refunded' AND p.failure_reason IS NOT NULL))
  AND p.created_at >= $1 AND p.created_at < $2
  AND ($3::text IS NULL OR lower(p.exchange_provider) = $3)
GROUP BY 1, 2, 3
"""


@dataclass
class ImpactTotals:
    """Affected purchases, their AUD, distinct tenants; refunded ones counted apart as well."""

    affected_purchases: int = 0
    total_amount_aud: Decimal = Decimal("0.00")
    refunded_purchases: int = 0
    refunded_amount_aud: Decimal = Decimal("0.00")
    tenants: set[str] = field(default_factory=set)

    def add(
        self, purchases: int, amount: Decimal, refunded: int, refund: Decimal, tenant: str
    ) -> None:
        self.affected_purchases += purchases
        self.total_amount_aud += amount
        self.refunded_purchases += refunded
        self.refunded_amount_aud += refund
        self.tenants.add(tenant)

    @property
    def affected_tenants(self) -> int:
        return len(self.tenants)

    def as_json(self) -> dict[str, Any]:
        # The admin API's names (camelCase, as the runbook's calls); money as decimal strings,
        # since a float would round cents.
        return {
            "affectedPurchases": self.affected_purchases,
            "totalAmountAud": str(self.total_amount_aud),
            "affectedTenants": self.affected_tenants,
            "refundedPurchases": self.refunded_purchases,
            "refundedAmountAud": str(self.refunded_amount_aud),
        }


@dataclass
class ImpactReport:
    start: datetime
    end: datetime
    exchange: str | None
    reason: str | None
    totals: ImpactTotals = field(default_factory=ImpactTotals)
    by_exchange: dict[str, ImpactTotals] = field(default_factory=lambda: defaultdict(ImpactTotals))
    by_reason: dict[str, ImpactTotals] = field(default_factory=lambda: defaultdict(ImpactTotals))

    def as_json(self) -> dict[str, Any]:
        return {
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "filters": {"exchange": self.exchange, "reason": self.reason},
            **self.totals.as_json(),
            "byExchange": {k: v.as_json() for k, v in sorted(self.by_exchange.items())},
            "byReason": {k: v.as_json() for k, v in sorted(self.by_reason.items())},
        }


async def impact_report(
    db: Executor,
    *,
    start: datetime,
    end: datetime,
    classifier: ReasonClassifier,
    exchange: str | None = None,
    reason: str | None = None,
) -> ImpactReport:
    """Purchases that failed with created_at in [start, end), optionally of one exchange and one
    reason class; totals plus a breakdown by exchange and by reason class."""
    if start >= end:
        raise ValueError(f"start ({start.isoformat()}) must be before end ({end.isoformat()})")
    report = ImpactReport(start, end, exchange, reason)
    for row in await db.fetch(IMPACT_SQL, start, end, exchange):
        reason_class = classifier.classify(row["failure_reason"])
        if reason is not None and reason_class != reason:
            continue
        values = (row["purchases"], row["amount_aud"], row["refunded"], row["refund_amount"],
                  row["tenant_id"])  # fmt: skip
        groups = (report.by_exchange[row["exchange"]], report.by_reason[reason_class])
        for totals in (report.totals, *groups):
            totals.add(*values)
    return report
