"""Purchase-success SLO rules: Prometheus recording and multi-window, multi-burn-rate alerting
rules generated from the objectives in the configuration (`liquid-abt-exporter slo-rules`).

Every window is derived in Prometheus from the exporter's 5-minute purchase counts, so no window
costs a query on the database: the count over a window W is the mean of the 5-minute counts
sampled during W, times W / 5m (`avg_over_time`). Each purchase is seen in every sample of its
first five minutes, so the ratio of two such sums is the exact ratio over W except at the edges:
purchases of the last five minutes weigh less, and those of the five minutes before W a little
(docs/slo.md works out how exact that is).
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
    name: str
    severity: str
    escalation: str
    for_: str
    burns: tuple[Burn, ...]
    what: str


ALERTS = (
    BurnAlert(
        "BitcoinPurchaseErrorBudgetBurnHigh", "critical", "5m", "2m",
        (Burn(14.4, "1h", "5m"), Burn(6, "6h", "30m")),
        "pages: at this rate the budget is gone within days",
    ),
    BurnAlert(
        "BitcoinPurchaseErrorBudgetBurnWarning", "warning", "none", "15m",
        (Burn(3, "1d", "2h"), Burn(1, "3d", "6h")),
        "a ticket: at this rate the budget is gone before the period ends",
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
    selector: str  # `exchange=~"a|b"`, `exchange!~"a|b"`, or empty: every exchange

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
            selector = f'exchange!~"{"|".join(named)}"' if named else ""
        found.append(_Objective(objective, selector))
    return found


def _record(record: str, expr: str) -> list[str]:
    lines = [f"      - record: {record}"]
    if "\n" in expr:
        lines.append("        expr: |")
        lines += [f"          {line}".rstrip() for line in expr.splitlines()]
    else:
        lines.append(f"        expr: {expr}")
    return lines


def _base_counts(o: _Objective) -> list[str]:
    window = f'window="{BASE}"'
    handled = o.raw("liquid_abt_purchase_handled_failures", window)
    return [
        "      # The 5-minute counts every window is derived from (replicas de-duplicated).",
        *_record(
            name("settled", BASE),
            "sum by (exchange) (\n"
            f"  max by (exchange, status) ({o.raw('liquid_abt_purchases', f'{window}, {SETTLED}')})\n"
            ")",
        ),
        *_record(
            name("failed", BASE),
            f"max by (exchange) ({o.raw('liquid_abt_purchases', f'{window}, status={chr(34)}failed{chr(34)}')})",
        ),
        "      # Failures no handled outage explains, as the runbook alerts count them",
        "      # (recording.rules.yml): the burn-rate alerts read these, the budget every failure.",
        *_record(
            name("unhandled_failed", BASE),
            "clamp_min(\n"
            f"  {o.series('failed', BASE)}\n"
            f"    - on (exchange)\n  max by (exchange) ({handled}),\n  0\n)\n"
            f"or\n{o.series('failed', BASE)}",
        ),
    ]


def _derived_counts(o: _Objective, window: str, metrics: Iterable[str]) -> list[str]:
    scale = _number(parse_duration(window) / SLO_BASE_WINDOW)
    return [
        line
        for metric in metrics
        for line in _record(
            name(metric, window),
            f"avg_over_time({o.series(metric, BASE)}[{window}]) * {scale}",
        )
    ]


def _ratios(o: _Objective, window: str) -> list[str]:
    settled = f"clamp_min({o.series('settled', window)}, 1)"
    return [
        *_record(name("error_ratio", window), f"{o.series('failed', window)} / {settled}"),
        *_record(name("burn_rate", window), f"{o.series('error_ratio', window)} / {o.budget}"),
        *_record(
            name("unhandled_burn_rate", window),
            f"{o.series('unhandled_failed', window)} / {settled} / {o.budget}",
        ),
    ]


def _budget(o: _Objective) -> list[str]:
    period = o.period
    lines = [
        f"      # The error budget over the {period} period: every failure spends it, handled or not."
    ]
    if period not in WINDOWS:  # else its counts and ratio are recorded with the alert windows
        lines += _derived_counts(o, period, ("settled", "failed"))
        lines += _record(
            name("error_ratio", period),
            f"{o.series('failed', period)} / clamp_min({o.series('settled', period)}, 1)",
        )
    return [
        *lines,
        *_record(
            name("error_budget_remaining", period),
            f"1 - {o.series('error_ratio', period)} / {o.budget}",
        ),
        *_record(
            name("objective", "ratio"),
            f"0 * {o.series('settled', BASE)} + {_number(o.objective.objective / 100)}",
        ),
    ]


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


def _alert_expr(o: _Objective, alert: BurnAlert) -> str:
    branches = []
    for burn in alert.burns:
        factor = _number(burn.factor)
        branches.append(
            "label_replace(\n"
            f"  {o.series('unhandled_burn_rate', burn.long)} > {factor}\n"
            f"  and on (exchange)\n  {o.series('unhandled_burn_rate', burn.short)} > {factor}\n"
            f"  and on (exchange)\n  {o.series('settled', burn.long)} >= {o.objective.min_settled},\n"
            f'  "window", "{burn.long}", "", ""\n)'
        )
    return "\nor\n".join(branches)


def _alert(o: _Objective, alert: BurnAlert) -> list[str]:
    pairs = " or ".join(
        f"{_number(b.factor)}x over {b.long} and {b.short}" for b in alert.burns
    )
    objective = f"{_number(o.objective.objective)}% over {o.period}"
    lines = [
        f"      # {pairs}: {alert.what}.",
        f"      - alert: {alert.name}",
        "        expr: |",
        *(f"          {line}" for line in _alert_expr(o, alert).splitlines()),
        f"        for: {alert.for_}",
    ]
    if alert.severity == "critical":
        lines.append("        keep_firing_for: 3m")
    lines += [
        "        labels:",
        f"          severity: {alert.severity}",
        f"          escalation: {alert.escalation}",
        "        annotations:",
        "          summary: >-",
        f"            Bitcoin purchases on {{{{ $labels.exchange }}}} spend their error budget",
        f'            {{{{ $value | humanize }}}}x too fast over {{{{ $labels.window }}}} (objective {objective})',
        "          description: >-",
        f"            {_window_query('unhandled_failed', WHOLE)}",
        f"            of {_window_query('settled', WHOLE)}",
        "            Bitcoin purchases settled on {{ $labels.exchange }} in the last {{ $labels.window }}",
        "            failed outside any outage the exporter handled. At this rate the whole",
        f"            {o.period} error budget lasts {{{{ with printf \"{_number(o.objective.period / 86400)}"
        " / exchange:liquid_abt_purchase_slo_unhandled_burn_rate:%s{exchange=%q}\" $labels.window"
        ' $labels.exchange | query }}{{ . | first | value | printf "%.1f" }}{{ else }}unknown{{ end }}'
        " days. Error budget remaining over",
        f"            {o.period}: {_query('error_budget_remaining', o.period, 'humanizePercentage')}.",
        f"          runbook_url: >-\n            {RUNBOOK}{alert.name.lower()}",
    ]
    return lines


def _group(index: int, o: _Objective) -> list[str]:
    covers = f"exchanges matching {o.selector}" if o.selector else "every exchange"
    lines = [
        f"  # Objective {index}: {_number(o.objective.objective)}% of the settled purchases succeed over"
        f" {o.period}, on {covers}.",
        f"  - name: liquid_abt.slo.{index}",
        "    rules:",
        *_base_counts(o),
    ]
    for window in WINDOWS:
        lines.append(f"      # {window}")
        if window != BASE:
            lines += _derived_counts(o, window, ("settled", "failed", "unhandled_failed"))
        lines += _ratios(o, window)
    lines += _budget(o)
    for alert in ALERTS:
        lines += _alert(o, alert)
    return lines


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
    """The rule file for the objectives of `config` (empty groups when there are none)."""
    lines = [line for i, o in enumerate(_objectives(config)) for line in _group(i, o)]
    if not lines:
        return HEADER.replace("groups:\n", "groups: []\n")
    return HEADER + "\n".join(lines) + "\n"
