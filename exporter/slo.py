"""Purchase-success SLO rules: Prometheus recording and multi-window, multi-burn-rate alerting
rules generated from the objectives in the configuration (`liquid-abt-exporter slo-rules`).

Every window is derived in Prometheus from the exporter's 5-minute purchase counts, so no window
costs a query on the database: the count over a window W is the mean of the 5-minute counts
sampled during W, times W / 5m (`avg_over_time`). Each purchase is seen in every sample of its
first five minutes, so the ratio of two such sums is the exact ratio over W except at the edges:
purchases of the last five minutes weigh less, and those of the five minutes before W a little
(docs/slo.md works out how exact that is).

A window holds only the data Prometheus has: on a fresh Prometheus (or for a new exchange) a few
minutes of samples are not an hour. Each window's coverage (the share of it the samples cover,
from the first sample in it; the first 5-minute count covers the 5 minutes before it) scales
its counts to the purchases really seen, so the volume guard counts those; a page needs both its
windows covered in full, a ticket its short window (issue 19, point 4).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from exporter.config import (
    SLO_BASE_WINDOW,
    Config,
    PurchaseObjective,
    format_duration,
    parse_duration,
)

# The windows of the Google SRE workbook's multi-window, multi-burn-rate alerts.
WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
BASE = format_duration(SLO_BASE_WINDOW)
SETTLED = 'status=~"completed|failed|refunded"'
RUNBOOK = (
    '{{ with $externalLabels.runbook_base_url }}{{ reReplaceAll "/+$" "" . }}'
    "{{ else }}https://github.com/liquid-abt/liquid-abt-exporter/blob/main/docs/runbooks"
    "{{ end }}/bitcoin-purchase-failures.md#"
)


@dataclass(frozen=True)
class Burn:
    """One window pair: the alert fires when both windows burn faster than `factor`."""

    factor: float
    long: str
    short: str


@dataclass(frozen=True)
class BurnAlert:
    """An alert over window pairs; each firing series is labelled with its pair's long window."""

    name: str
    severity: str
    escalation: str
    for_: str
    burns: tuple[Burn, ...]
    what: str
    # Each cause pages as itself, once (DESIGN.md): a pair stays quiet on an exchange where one
    # of these runbook alerts fired within the pair's long window, since that alert has already
    # paged the same failures. Inhibition alone is not enough: the failures stay in the long
    # window after the runbook alert resolves, and the pair would page then.
    paged_by: tuple[str, ...] = ()
    # Which windows of a pair must hold their whole length of data: both for a page (a few
    # minutes of data are not an hour); the short one for a ticket, which may then read what the
    # long window has so far (a ticket after 2 or 6 hours of evidence, not after 3 days).
    covered: str = "both"


ALERTS = (
    BurnAlert(
        "BitcoinPurchaseErrorBudgetBurnHigh", "critical", "5m", "2m",
        (Burn(14.4, "1h", "5m"), Burn(6, "6h", "30m")),
        "pages: at this rate the budget is gone within days",
        paged_by=("BitcoinPurchaseFailureRateHigh",),
    ),
    BurnAlert(
        "BitcoinPurchaseErrorBudgetBurnWarning", "warning", "none", "15m",
        (Burn(3, "1d", "2h"), Burn(1, "3d", "6h")),
        "a ticket: at this rate the budget is gone before the period ends",
        covered="short",
    ),
)  # fmt: skip


def name(metric: str, window: str) -> str:
    """A recorded series of this module: level:metric:window."""
    return f"exchange:liquid_abt_purchase_slo_{metric}:{window}"


def _number(value: float) -> str:
    return f"{value:.10g}"


@dataclass(frozen=True)
class _Objective:
    """One objective with the selector of the exchanges it covers."""

    objective: PurchaseObjective
    selector: str  # `exchange=~"a|b"` (named) or `exchange!~"other|a|b"` (the others)

    @property
    def budget(self) -> str:
        return _number(1 - self.objective.objective / 100)

    @property
    def period(self) -> str:
        return format_duration(self.objective.period)

    def series(self, metric: str, window: str) -> str:
        braces = f"{{{self.selector}}}" if self.selector else ""
        return name(metric, window) + braces

    def raw(self, metric: str, matchers: str) -> str:
        return f"{metric}{{{', '.join(m for m in (matchers, self.selector) if m)}}}"


def _objectives(config: Config) -> list[_Objective]:
    objectives = config.slo.purchases
    named = [n for o in objectives for n in o.exchanges or []]
    found = []
    for objective in objectives:
        if objective.exchanges is not None:
            selector = f'exchange=~"{"|".join(objective.exchanges)}"'
        else:
            # `other` is the exporter's catch-all for providers not configured: no objective.
            selector = f'exchange!~"{"|".join(["other", *named])}"'
        found.append(_Objective(objective, selector))
    return found


@dataclass(frozen=True)
class _Record:
    """One recording rule of one objective; objectives' records of one name are merged."""

    name: str
    expr: str
    comment: tuple[str, ...] = ()


def _record_lines(record: str, exprs: list[str], comment: tuple[str, ...]) -> list[str]:
    # The objectives' selectors are disjoint, so their expressions join with `or` into one
    # rule per series (two rules recording one name would be a conflict waiting to happen).
    expr = "\nor\n".join(exprs)
    lines = [f"      # {line}" for line in comment] + [f"      - record: {record}"]
    if "\n" in expr:
        lines.append("        expr: |")
        lines += [f"          {line}".rstrip() for line in expr.splitlines()]
    else:
        lines.append(f"        expr: {expr}")
    return lines


def _base_counts(o: _Objective) -> list[_Record]:
    window = f'window="{BASE}"'
    failed = o.raw("liquid_abt_purchases", f'{window}, status="failed"')
    handled = o.raw("liquid_abt_purchase_handled_failures", window)
    return [
        _Record(
            name("settled", BASE),
            "sum by (exchange) (\n"
            f"  max by (exchange, status) ({o.raw('liquid_abt_purchases', f'{window}, {SETTLED}')})\n"
            ")",
            ("The 5-minute counts every window is derived from (replicas de-duplicated).",),
        ),
        _sampled_at(o),
        _Record(name("failed", BASE), f"max by (exchange) ({failed})"),
        _Record(
            name("unhandled_failed", BASE),
            "clamp_min(\n"
            f"  {o.series('failed', BASE)}\n"
            f"    - on (exchange)\n  max by (exchange) ({handled}),\n  0\n)\n"
            f"or\n{o.series('failed', BASE)}",
            (
                "Failures no handled outage explains, as the runbook alerts count them",
                "(recording.rules.yml): the burn-rate alerts read these, the budget every failure.",
            ),
        ),
    ]


def _sampled_at(o: _Objective) -> _Record:
    return _Record(
        name("sampled_at", "timestamp"),
        f"timestamp({o.series('settled', BASE)})",
        ("When each 5-minute count was sampled: how much of a window the data covers.",),
    )


def _coverage(o: _Objective, window: str) -> _Record:
    """The share of `window` the samples cover, at most 1: from the first sample in the window,
    plus the 5 minutes the first count looks back (the exporter counts from the database)."""
    seconds = _number(parse_duration(window))
    return _Record(
        name("coverage", window),
        f"clamp_max((time() - min_over_time({o.series('sampled_at', 'timestamp')}[{window}])"
        f" + {_number(SLO_BASE_WINDOW)}) / {seconds}, 1)",
    )


def _derived_counts(o: _Objective, window: str, metrics: Iterable[str]) -> list[_Record]:
    scale = _number(parse_duration(window) / SLO_BASE_WINDOW)
    coverage = o.series("coverage", window)
    return [_coverage(o, window)] + [
        _Record(
            name(metric, window),
            f"avg_over_time({o.series(metric, BASE)}[{window}]) * {scale}"
            f" * on (exchange) {coverage}",
        )
        for metric in metrics
    ]


def _ratios(o: _Objective, window: str) -> list[_Record]:
    settled = f"clamp_min({o.series('settled', window)}, 1)"
    return [
        _Record(name("error_ratio", window), f"{o.series('failed', window)} / {settled}"),
        _Record(name("burn_rate", window), f"{o.series('error_ratio', window)} / {o.budget}"),
        _Record(
            name("unhandled_burn_rate", window),
            f"{o.series('unhandled_failed', window)} / {settled} / {o.budget}",
        ),
    ]


def _windows(o: _Objective) -> list[_Record]:
    records = []
    for window in WINDOWS:
        derived = (
            _derived_counts(o, window, ("settled", "failed", "unhandled_failed"))
            if window != BASE
            else []
        )
        first, *rest = [*derived, *_ratios(o, window)]
        records += [_Record(first.name, first.expr, (window,)), *rest]
    return records


def _budget(o: _Objective) -> list[_Record]:
    period = o.period
    records = []
    if period not in WINDOWS:  # else its counts and ratio are recorded with the alert windows
        records += _derived_counts(o, period, ("settled", "failed"))
        records.append(
            _Record(
                name("error_ratio", period),
                f"{o.series('failed', period)} / clamp_min({o.series('settled', period)}, 1)",
            )
        )
    records += [
        _Record(
            name("error_budget_remaining", period),
            f"1 - {o.series('error_ratio', period)} / {o.budget}",
        ),
        _Record(
            name("objective", "ratio"),
            f"0 * {o.series('settled', BASE)} + {_number(o.objective.objective / 100)}",
        ),
    ]
    first, *rest = records
    comment = (
        f"The error budget over the {period} period: every failure spends it, handled or not.",
    )
    return [_Record(first.name, first.expr, comment), *rest]


def _query(metric: str, window: str, pipe: str) -> str:
    return (
        f'{{{{ with printf "{name(metric, window)}{{exchange=%q}}" $labels.exchange | query }}}}'
        f"{{{{ . | first | value | {pipe} }}}}{{{{ else }}}}unknown{{{{ end }}}}"
    )


def _window_query(metric: str, pipe: str) -> str:
    return (
        f'{{{{ with printf "exchange:liquid_abt_purchase_slo_{metric}:%s{{exchange=%q}}" '
        f"$labels.window $labels.exchange | query }}}}"
        f"{{{{ . | first | value | {pipe} }}}}{{{{ else }}}}unknown{{{{ end }}}}"
    )


WHOLE = 'printf "%.0f"'  # counts: derived ones are estimates, never a fraction of a purchase


def _paged(alert: BurnAlert, burn: Burn) -> str:
    """The `unless` that keeps a pair quiet where a runbook alert already paged in its window."""
    if not alert.paged_by:
        return ""
    names = "|".join(alert.paged_by)
    match = f'="{names}"' if len(alert.paged_by) == 1 else f'=~"{names}"'
    return (
        "\n  unless on (exchange)\n  max_over_time(ALERTS{"
        f'alertname{match}, alertstate="firing"}}[{burn.long}])'
    )


def _covered(o: _Objective, alert: BurnAlert, burn: Burn) -> str:
    """The conditions that the pair's windows hold their whole length of data."""
    windows = (burn.long, burn.short) if alert.covered == "both" else (burn.short,)
    return "".join(
        f"\n  and on (exchange)\n  {o.series('coverage', w)} >= 1" for w in windows if w != BASE
    )


def _alert_expr(o: _Objective, alert: BurnAlert) -> str:
    branches = []
    for burn in alert.burns:
        factor = _number(burn.factor)
        branches.append(
            "label_replace(\n"
            f"  {o.series('unhandled_burn_rate', burn.long)} > {factor}\n"
            f"  and on (exchange)\n  {o.series('unhandled_burn_rate', burn.short)} > {factor}\n"
            f"  and on (exchange)\n  {o.series('settled', burn.long)} >= {o.objective.min_settled}"
            f"{_covered(o, alert, burn)}{_paged(alert, burn)},\n"
            f'  "window", "{burn.long}", "", ""\n)'
        )
    return "\nor\n".join(branches)


def _alert(o: _Objective, alert: BurnAlert, *, twin: bool = False) -> list[str]:
    """The alert's rule; `twin`: its escalation twin (a page's, for the escalation path)."""
    pairs = " or ".join(f"{_number(b.factor)}x over {b.long} and {b.short}" for b in alert.burns)
    objective = f"{_number(o.objective.objective)}% over {o.period}"
    comment = (
        [
            f"      # {alert.name}'s escalation: the same alert without keep_firing_for, sent up the",
            "      # escalation path (alertmanager.yml): it resolves when the evidence clears.",
        ]
        if twin
        else [f"      # {pairs}: {alert.what}."]
    )
    lines = [
        *comment,
        f"      - alert: {alert.name}{'Escalation' if twin else ''}",
        "        expr: |",
        *(f"          {line}" for line in _alert_expr(o, alert).splitlines()),
        f"        for: {alert.for_}",
    ]
    if alert.severity == "critical" and not twin:
        # A restart of every exporter resolves no page; its twin resolves (issue 19, point 3).
        lines.append("        keep_firing_for: 3m")
    lines += [
        "        labels:",
        f"          severity: {alert.severity}",
        f"          escalation: {alert.escalation}",
        *(['          escalate: "true"'] if twin else []),
        # Which objective: two objectives' alerts must differ in their labels.
        f"          objective: {objective}",
        "        annotations:",
        "          summary: >-",
        "            Bitcoin purchases on {{ $labels.exchange }} spend their error budget",
        f"            {{{{ $value | humanize }}}}x too fast over {{{{ $labels.window }}}} (objective {objective})",
        "          description: >-",
        f"            {_window_query('unhandled_failed', WHOLE)}",
        f"            of {_window_query('settled', WHOLE)}",
        "            Bitcoin purchases settled on {{ $labels.exchange }} in the last {{ $labels.window }}",
        "            failed outside any outage the exporter handled. At this rate the whole",
        f'            {o.period} error budget lasts {{{{ with printf "{_number(o.objective.period / 86400)}'
        ' / exchange:liquid_abt_purchase_slo_unhandled_burn_rate:%s{exchange=%q}" $labels.window'
        ' $labels.exchange | query }}{{ . | first | value | printf "%.1f" }}{{ else }}unknown{{ end }}'
        " days. Error budget remaining over",
        f"            {o.period}: {_query('error_budget_remaining', o.period, 'humanizePercentage')}.",
        f"          runbook_url: >-\n            {RUNBOOK}{alert.name.lower()}",
    ]
    return lines


def _records(objectives: list[_Objective]) -> list[str]:
    merged: dict[str, tuple[tuple[str, ...], list[str]]] = {}
    for o in objectives:
        for record in [*_base_counts(o), *_windows(o), *_budget(o)]:
            merged.setdefault(record.name, (record.comment, []))[1].append(record.expr)
    return [
        line for n, (comment, exprs) in merged.items() for line in _record_lines(n, exprs, comment)
    ]


def _covers(o: _Objective) -> str:
    named = o.objective.exchanges
    where = ", ".join(named) if named else "every exchange no other objective names"
    return (
        f"{_number(o.objective.objective)}% of the settled purchases succeed over {o.period}, "
        f"on {where}."
    )


HEADER = """\
# Purchase success as an SLO: error budget and multi-window, multi-burn-rate alerts.
#
# GENERATED by `liquid-abt-exporter slo-rules` from the objectives in the configuration
# (`slo.purchases`); do not edit: change the configuration and run `make slo-rules`.
# docs/slo.md explains the windows, how exact they are, and which alert pages when.
#
# Every window is derived from the exporter's 5-minute counts (no query on the database): the
# count over W is the mean of the 5m counts over W times W / 5m. The burn-rate alerts read the
# failures no handled outage explains, like the runbook alerts (purchases.rules.yml); the error
# budget counts every failure.
groups:
"""


def generate(config: Config) -> str:
    """The rule file for the objectives of `config` (no groups when there are none)."""
    objectives = _objectives(config)
    if not objectives:
        return HEADER.replace("groups:\n", "groups: []\n")
    lines = [
        "  # " + "\n  # ".join(f"Objective: {_covers(o)}" for o in objectives),
        "  - name: liquid_abt.slo",
        "    rules:",
        *_records(objectives),
        *(
            line
            for o in objectives
            for alert in ALERTS
            for twin in ((False, True) if alert.severity == "critical" else (False,))
            for line in _alert(o, alert, twin=twin)
        ),
    ]
    return HEADER + "\n".join(lines) + "\n"
