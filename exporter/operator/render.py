"""The admin API's answers as text for a person: aligned tables, times as UTC with their age,
long causes cut to fit a terminal. `--json` bypasses all of this."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from exporter.config import format_duration

CAUSE_WIDTH = 60


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [
        max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)
    ]
    lines = [headers, *rows]
    return "\n".join(
        "  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def cut(text: str | None, width: int = CAUSE_WIDTH) -> str:
    if not text:
        return "-"
    text = " ".join(text.split())
    if len(text) > width:
        # Automatic causes lead with the cause in words; the evidence after it gives way first.
        text = text.split("; evidence: ")[0]
    return text if len(text) <= width else text[: width - 1] + "…"


def ago(iso: str | None, now: datetime) -> str:
    """`12m ago`, `3h ago`, `in 90s` for a time still to come; `-` for no time."""
    if not iso:
        return "-"
    seconds = int((now - datetime.fromisoformat(iso)).total_seconds())
    span = _span(abs(seconds))
    return f"{span} ago" if seconds >= 0 else f"in {span}"


def _span(seconds: int) -> str:
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= 2 * size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def when(iso: str | None, now: datetime) -> str:
    """`2025-01-10 10:00:00 UTC (12m ago)`."""
    if not iso:
        return "-"
    at = datetime.fromisoformat(iso).astimezone(UTC)
    return f"{at:%Y-%m-%d %H:%M:%S} UTC ({ago(iso, now)})"


def now() -> datetime:
    return datetime.now(UTC)


# ---- status ----


def status(answer: dict[str, Any], at: datetime) -> str:
    dry = "on: actions are only recorded" if answer["dryRun"] else "off"
    head = f"liquid-abt-exporter {answer['version']}, dry run {dry}"
    rows = [_status_row(exchange, at) for exchange in answer["exchanges"]]
    # REPLICAS DOWN: replicas that see the API not answering, of those probing it.
    headers = ["EXCHANGE", "INCIDENT", "BREAKER", "REPLICAS DOWN", "PURCHASES", "API RATE",
               "RETRY QUEUE", "LAST VERIFICATION"]  # fmt: skip
    parts = [head, "", table(headers, rows)]
    for exchange in answer["exchanges"]:
        parts += ["", *_exchange_detail(exchange, at)]
    return "\n".join(parts)


def _status_row(exchange: dict[str, Any], at: datetime) -> list[str]:
    breaker, purchases, queue = exchange["breaker"], exchange["purchases"], exchange["retryQueue"]
    held = " (held)" if breaker["manualHold"] else ""
    paused = "flowing"
    if purchases["paused"]:
        paused = (
            f"PAUSED{' (held)' if purchases['manualHold'] else ''} {ago(purchases['since'], at)}"
        )
    verified = exchange["lastVerification"]
    verification = f"{_verdict(verified)} {ago(verified['at'], at)}" if verified else "never"
    return [
        exchange["exchange"], exchange["incident"]["phase"], f"{breaker['state']}{held}",
        f"{breaker['failureCount']}/{breaker['callCount']}", paused,
        f"{exchange['apiRateMultiplier'] * 100:g}%", _queue(queue, at), verification,
    ]  # fmt: skip


def _queue(queue: dict[str, Any], at: datetime) -> str:
    waiting = queue["queued"] + queue["inProgress"]
    text = (
        f"{waiting} waiting, oldest {ago(queue['oldestWaitingSince'], at)}" if waiting else "empty"
    )
    return text + (f", {queue['failed']} gave up" if queue["failed"] else "")


def _verdict(verification: dict[str, Any]) -> str:
    return "passed" if verification["passed"] else "failed"


def _exchange_detail(exchange: dict[str, Any], at: datetime) -> list[str]:
    name, purchases, incident = exchange["exchange"], exchange["purchases"], exchange["incident"]
    lines = [f"{name}:"]
    if incident["phase"] != "normal":
        why = incident.get("reason") or incident["cause"]
        lines.append(f"  incident {incident['phase']} since {when(incident['since'], at)}: "
                     f"{why}, {incident['relapses']} relapse(s)")  # fmt: skip
    if incident["probationUntil"]:
        lines.append(f"  on probation until {when(incident['probationUntil'], at)}")
    if purchases["paused"]:
        estimate = f", expected to last {purchases['estimatedDuration']}" if purchases[
            "estimatedDuration"] else ""  # fmt: skip
        lines.append(
            f"  paused since {when(purchases['since'], at)}: {purchases['reason']}{estimate}"
        )
    if incident["nextVerificationAt"]:
        lines.append(f"  next recovery verification at {when(incident['nextVerificationAt'], at)}")
    route = exchange.get("route")
    if route and (route["routedTo"] or route["blockedGuard"] or route["override"]):
        lines.append(f"  {route_line(route, at)}")
    verified = exchange["lastVerification"]
    if verified:
        failed = [
            f"{c['name']}: {c['detail']}" for c in verified.get("checks") or [] if not c["ok"]
        ]
        why = f": {cut('; '.join(failed), 100)}" if failed else ""
        lines.append(
            f"  last recovery verification {_verdict(verified)} {ago(verified['at'], at)}{why}"
        )
    if not exchange["recentActions"]:
        return [*lines, "  no actions recorded"]
    return [*lines, _indent(actions(exchange["recentActions"], at, with_exchange=False))]


def route_line(route: dict[str, Any], at: datetime) -> str:
    """Failover's line: where purchases go, since when, why (docs/failover.md)."""
    override = f" (admin: --to {route['override']})" if route["override"] else ""
    reason = cut(route["reason"], 100) if route["reason"] else ""
    if route["to"] not in ("primary", "none"):
        return (f"route: purchases go to {route['to']} since {when(route['since'], at)}"
                f"{override}: {reason}")  # fmt: skip
    if route["blockedGuard"]:
        return f"route: not routed, {route['blockedGuard']} guard{override}: {reason}"
    return f"route: {route['to']}{override}"


def _indent(text: str) -> str:
    return "\n".join(f"  {line}" for line in text.splitlines())


def actions(entries: list[dict[str, Any]], at: datetime, *, with_exchange: bool = True) -> str:
    headers = ["ID", "WHEN", "ACTOR", "ACTION", "RESULT", *(["EXCHANGE"] if with_exchange else []),
               "CAUSE"]  # fmt: skip
    rows = [
        [str(e["id"]), ago(e["at"], at), e["actor"], e["action"], e["result"],
         *([e["exchange"] or "-"] if with_exchange else []), cut(e["cause"])]
        for e in entries
    ]  # fmt: skip
    return table(headers, rows)


# ---- actions ----


def transition(answer: dict[str, Any], exchange: str) -> str:
    status = answer["status"]
    moved = answer["transition"]
    held = " (manual hold: automation will not close it)" if status["manualHold"] else ""
    if moved is None:
        return f"{exchange}: breaker already {status['state']}{held}; nothing changed"
    return f"{exchange}: breaker {moved['from']} -> {moved['to']}{held} (audit entry {moved['auditId']})"


def breaker_config(answer: dict[str, Any]) -> str:
    config = answer["config"]
    window, recovery = (
        format_duration(config[k] / 1000) for k in ("monitoringWindow", "recoveryTimeout")
    )
    return (
        f"{answer['exchange']}: the breaker opens after {config['failureThreshold']} probe rounds "
        f"in a row unanswered, verifies recovery after {recovery} of health, and counts a "
        f"re-open within {window} of closing as a relapse"
    )


def paused(answer: dict[str, Any], at: datetime) -> str:
    status = answer["status"]
    verb = "paused" if answer["changed"] else "already paused"
    held = " (manual hold: only `admin resume` lifts it)" if status["manualHold"] else ""
    return f"{status['exchange']}: purchases {verb} since {when(status['since'], at)}{held}"


def resumed(answer: dict[str, Any]) -> str:
    return f"{answer['status']['exchange']}: {answer['message']}"


def retry_queue(answer: dict[str, Any], at: datetime) -> str:
    if not answer["entries"]:
        return f"no queued purchases{_paging(answer, empty=True)}"
    headers = ["ID", "PURCHASE", "EXCHANGE", "TENANT", "AUD", "STATUS", "ATTEMPTS", "NEXT ATTEMPT",
               "LAST ERROR"]  # fmt: skip
    rows = [
        [str(e["id"]), e["purchaseId"], e["exchange"], e["tenantId"] or "-", e["amountAud"] or "-",
         e["status"], f"{e['attempts']}/{e['maxAttempts']}", when(e["nextAttemptAt"], at),
         cut(e["lastError"], 40)]
        for e in answer["entries"]
    ]  # fmt: skip
    return f"{table(headers, rows)}\n{_paging(answer)}"


def notices(answer: dict[str, Any], at: datetime) -> str:
    if not answer["entries"]:
        return f"no customer notices{_paging(answer, empty=True)}"
    headers = ["ID", "INCIDENT", "EXCHANGE", "KIND", "TENANT", "STATE", "READY", "ATTEMPTS",
               "MESSAGE"]  # fmt: skip
    rows = [
        [str(n["id"]), str(n["incidentId"] or "-"), n["exchange"],
         n["kind"] + (f" #{n['seq']}" if n["seq"] else ""), n["tenantId"] or "all affected",
         n["state"], when(n["readyAt"], at), str(n["attempts"]),
         cut(n["lastError"] or n["message"], 50)]
        for n in answer["entries"]
    ]  # fmt: skip
    return f"{table(headers, rows)}\n{_paging(answer)}"


def notices_changed(answer: dict[str, Any]) -> str:
    changed = answer["changed"]
    verb = {"hold": "held", "release": "released", "cancel": "cancelled"}[answer["action"]]
    if not changed:
        return f"no notice {verb}: none of them was in a state to be (a claimed one is in flight)"
    return f"{verb} {len(changed)} notice(s): {', '.join(str(i) for i in changed)}"


def audit_log(answer: dict[str, Any], at: datetime) -> str:
    if not answer["entries"]:
        return f"no audit entries{_paging(answer, empty=True)}"
    return f"{actions(answer['entries'], at)}\n{_paging(answer)}"


def _paging(answer: dict[str, Any], empty: bool = False) -> str:
    if empty:  # nothing on this page: say whether there is anything at all
        return (
            f" from offset {answer['offset']} ({answer['total']} in all)" if answer["total"] else ""
        )
    shown = len(answer["entries"])
    text = f"{answer['offset'] + 1}-{answer['offset'] + shown} of {answer['total']}"
    if answer["nextOffset"] is not None:
        text += f"; next page: --offset {answer['nextOffset']}"
    return text


def impact(answer: dict[str, Any]) -> str:
    filters = ", ".join(f"{k} {v}" for k, v in answer["filters"].items() if v) or "no filter"
    lines = [
        f"impact from {answer['start']} to {answer['end']} ({filters})",
        f"affected purchases {answer['affectedPurchases']}, total AUD {answer['totalAmountAud']}, "
        f"affected tenants {answer['affectedTenants']}; refunded {answer['refundedPurchases']} "
        f"(AUD {answer['refundedAmountAud']})",
    ]
    for key, title in (("byExchange", "EXCHANGE"), ("byReason", "REASON")):
        if answer[key]:
            rows = [[name, str(t["affectedPurchases"]), t["totalAmountAud"], str(t["affectedTenants"])]
                    for name, t in answer[key].items()]  # fmt: skip
            lines += ["", table([title, "PURCHASES", "AUD", "TENANTS"], rows)]
    return "\n".join(lines)
