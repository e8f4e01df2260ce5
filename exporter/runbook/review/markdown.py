"""The review as Markdown, for the closing note of an incident: a pure function of the review."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from exporter.runbook.review.model import Durations, Notice, Review
from exporter.signals.impact import ImpactTotals

NOTICE_STATES = ("queued", "held", "claimed", "sent", "failed", "cancelled")


def markdown(review: Review) -> str:
    incident = review.incident
    parts = [
        f"# Incident {incident.id}: {incident.exchange}, {incident.cause}",
        f"Generated {_time(review.generated_at)} by liquid-abt-exporter from what it recorded "
        "(audit log, Alertmanager notifications, retry queue, purchases"
        + (", customer notices" if review.notices is not None else "")
        + f"). State: **{incident.state}**.",
        _summary(review),
        _times(review.durations),
        _timeline(review),
        _impact(review),
        _notices(review.notices),
        _checklist(review),
    ]
    return "\n\n".join(parts) + "\n"


def _summary(review: Review) -> str:
    i = review.incident
    open_ = i.ended_at is None
    rows = [
        ("Exchange", i.exchange),
        ("Cause", i.cause),
        ("First evidence", _time(review.durations.first_evidence)),
        ("Incident started", _time(i.started_at)),
        ("Purchases stopped", _time(i.stopped_at)),
        ("Purchases resumed", _time(i.resumed_at) if i.resumed_at else _not_resumed(review)),
        ("Ended", _time(i.ended_at) if i.ended_at else "open"),
        ("Duration", span(i.duration(review.generated_at)) + (" so far" if open_ else "")),
    ]  # fmt: skip
    return table(("", ""), rows)


def _not_resumed(review: Review) -> str:
    if review.incident.ended_at is None:
        return "not yet"
    return "not when the incident closed (an admin hold? see the timeline)"


def _times(d: Durations) -> str:
    clear = "evidence clear" + (f" ({d.evidence_clear_from})" if d.evidence_clear_from else "")
    paused = span(d.time_paused) + (" so far" if d.stopped and not d.resumed else "")
    rows = [
        ("Time to stop", "first evidence", "purchases stopped", span(d.time_to_stop)),
        ("Time paused", "purchases stopped", "purchases resumed", paused),
        ("Time to resume", clear, "purchases resumed", span(d.time_to_resume)),
    ]
    return "## Times\n\n" + table(("measure", "from", "to", "time"), rows)


def _timeline(review: Review) -> str:
    start = review.durations.first_evidence
    rows = [(_time(e.at), offset(e.at - start), e.source, e.text) for e in review.timeline]
    head = (
        f"## Timeline\n\nFrom {_time(review.window_start)} to {_time(review.window_end)}. "
        "Sources: evidence (probes, the "
        "platform's calls, alerts), decision (breaker, pause, API rate, retries), page "
        "(notifications received from Alertmanager), verification, resume, notice."
    )
    cut = (
        f"\n\n{review.timeline_cut} later entries left out: `admin audit-log --exchange "
        f"{review.incident.exchange}` has them."
        if review.timeline_cut else ""
    )  # fmt: skip
    headers = ("time (UTC)", "since first evidence", "source", "what")
    return f"{head}\n\n{table(headers, rows)}{cut}"


def _impact(review: Review) -> str:
    i = review.incident
    runbook, ex, retries = review.runbook_impact, review.exchange_impact, review.retries
    window = f"{_time(review.impact_start)} to {_time(review.impact_end)}"
    parts = [
        f"## Impact\n\nPurchases created from {window}"
        + (" (the incident is still open)" if i.ended_at is None else "")
        + (": from the first failed purchase of the run that led up to the incident"
           if review.impact_start < i.started_at else "") + ".",
        '### The runbook\'s query\n\nexchange-api-failures.md, "Post-Incident Review", as written '
        "(failed purchases of every exchange whose reason mentions the API):\n\n"
        + table(("affected purchases", "total AUD affected", "affected customers"),
                [(str(runbook.affected_purchases), str(runbook.total_amount_affected),
                  str(runbook.affected_customers))]),
        f"### Failed purchases on {i.exchange}, any reason\n\nAs `admin impact-report "
        f"--exchange {i.exchange}` counts them over the same window (refunded ones included):"
        "\n\n" + table(("reason class", "purchases", "AUD", "customers", "refunded"),
                       [_totals("all", ex.totals),
                        *(_totals(k, v) for k, v in sorted(ex.by_reason.items()))]),
        "### Retries\n\nWhat became of those purchases (retry queue):\n\n" + table(
            ("queued for retry", "retried and succeeded", "retry pending", "retries exhausted",
             "cancelled", "not queued", "refunded", "still failed"),
            [tuple(str(v) for v in (retries.queued, retries.succeeded, retries.pending,
                   retries.exhausted, retries.cancelled, retries.not_queued, retries.refunded,
                   retries.still_failed))]),
    ]  # fmt: skip
    return "\n\n".join(parts)


def _totals(name: str, t: ImpactTotals) -> tuple[str, ...]:
    return (name, str(t.affected_purchases), str(t.total_amount_aud), str(t.affected_tenants),
            str(t.refunded_purchases))  # fmt: skip


def _notices(notices: Sequence[Notice] | None) -> str:
    head = "## Customer notices"
    if notices is None:
        return f"{head}\n\nNo customer notice outbox in this database: none were sent by it."
    if not notices:
        return f"{head}\n\nNone for this incident."
    kinds = sorted({n.kind for n in notices}, key=[n.kind for n in notices].index)
    rows = []
    for kind in kinds:
        mine = [n for n in notices if n.kind == kind]
        counts = [str(sum(n.state == s for n in mine)) for s in NOTICE_STATES]
        tenants = len({n.tenant_id for n in mine if n.tenant_id})
        first_sent = min((n.sent_at for n in mine if n.sent_at), default=None)
        rows.append((kind, *counts, str(tenants) if tenants else "-", _time(first_sent)))
    return f"{head}\n\n" + table(("kind", *NOTICE_STATES, "tenants", "first sent"), rows)


def _checklist(review: Review) -> str:
    parts = ["## Root cause analysis\n\nThe runbooks' questions, for people to answer."]
    for source, questions in review.checklist:
        items = "\n".join(f"{n}. {q}\n   - Answer:" for n, q in enumerate(questions, 1))
        parts.append(f"### {source}\n\n{items}")
    return "\n\n".join(parts)


# ---- formatting ----


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [_row(headers), "|" + "---|" * len(headers)]
    lines += [_row(r) for r in rows]
    return "\n".join(lines)


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _time(at: datetime | None) -> str:
    if at is None:
        return "-"
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def span(value: timedelta | None) -> str:
    """`4.2 s`, `12 min 30 s`, `2 h 5 min`; `-` for none."""
    if value is None:
        return "-"
    seconds = value.total_seconds()
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


def offset(value: timedelta) -> str:
    """`+0:01:02.5`, `-0:00:04.0`: signed time from the first evidence."""
    sign = "-" if value < timedelta(0) else "+"
    seconds = abs(value.total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{sign}{int(hours)}:{int(minutes):02d}:{secs:04.1f}"
