"""How fast purchases stop, measured in the incident simulator (tests/simulator/) with the shipped
config: issue 18's moonshot. No database, no process: simulated time, the production's decide().

For each kind of evidence, the fault starts at many phases of the replicas' probe cadence (their
first rounds and jitter drawn from a seed), and the time from the fault's start to purchases
stopped is collected: p50, p95, max.

- platform: the platform buys at 1 purchase/s and its calls fail with the exchange;
- probe alone: the platform buys nothing (no platform evidence), only the probes see it;
each for an exchange that answers errors at once (503) and one that hangs (client timeouts).

Then the stops in long runs of 4 % hangs and 10 % rate limits (target: 0). Targets (issue 18):
at most 10 s with the platform's evidence, 25 s on probe evidence alone.

The shipped config's table comes first; then the same code with one shipped choice undone at a
time (the runbook's 30 s probe interval, a 10 s call timeout, no platform watch), to show what
each is worth. `--shipped-only` stops after the first table.

    .venv/bin/python bench/stop_times.py [--phases 200] [--hours 20] [--shipped-only]

A hanging exchange's platform calls fail only when the platform's own timeout (10 s here) ends
them: subtract it from the "hangs" rows for the time after the platform's calls start failing.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Iterable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.simulator import Fault, Kind, Params, World  # noqa: E402
from tests.simulator.invariants import INVARIANTS, Invariants  # noqa: E402

WARM_UP = 300.0  # the cadence is steady by then
TARGETS = {"platform": 10.0, "probe alone": 25.0}


def simulate(params: Params, faults: list[Fault], seed: int, horizon: float) -> World:
    """A run that counts, not judges: a needless stop is a figure here, not a failure."""
    quiet = Invariants(skip=frozenset(INVARIANTS))
    return World(params, faults, seed, invariants=quiet).run(horizon)


def stop_times(params: Params, kind: Kind, phases: int, seed: int = 0) -> list[float]:
    """Fault start to purchases stopped, over `phases` starts spread over one probe interval."""
    rng = random.Random(seed)
    span = params.probe_interval * (1 + params.probe_jitter)
    times = []
    for i in range(phases):
        start = WARM_UP + span * (i + rng.random()) / phases
        world = simulate(params, [Fault(kind, start, start + 900.0)], rng.randrange(2**32),
                         start + 240.0)  # fmt: skip
        stops = [t for t in world.record.stops if t >= start]
        times.append(stops[0] - start if stops else float("inf"))
    return times


def stops_under(params: Params, fault: Fault, hours: int) -> int:
    """Stops in `hours` separate hours of the fault (each its own seed)."""
    return sum(len(simulate(params, [fault], seed, 3600.0).record.stops) for seed in range(hours))


def quantiles(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return statistics.median(ordered), p95, ordered[-1]


def table(params: Params, phases: int) -> Iterable[tuple[str, str, float, float, float, str]]:
    for evidence, rate in (("platform", 1.0), ("probe alone", 0.0)):
        for kind in (Kind.OUTAGE, Kind.HANG):
            p50, p95, worst = quantiles(stop_times(params.but(purchase_rate=rate), kind, phases))
            target = TARGETS[evidence]
            # With the platform's evidence the clock may start at its first failed call: a hang
            # is logged when the platform's own timeout ends it.
            late = params.platform_timeout if rate and kind is Kind.HANG else 0.0
            verdict = "meets" if worst - late <= target else f"misses (target {target:g} s)"
            name = "503 at once" if kind is Kind.OUTAGE else "hangs (timeouts)"
            if late:
                name += f"; max {worst - late:.1f} s after its first failed call"
            yield evidence, name, p50, p95, worst, verdict


def report(title: str, params: Params, phases: int, hours: int) -> None:
    started = time.perf_counter()
    print(f"\n## {title}\n")
    print("| evidence | exchange | p50 | p95 | max | target |")
    print("|---|---|---|---|---|---|")
    for evidence, name, p50, p95, worst, verdict in table(params, phases):
        print(f"| {evidence} | {name} | {p50:.1f} s | {p95:.1f} s | {worst:.1f} s | {verdict} |")
    if hours:
        hang = Fault(Kind.SPORADIC_HANG, 0.0, 3600.0, share=0.04)
        hangs = stops_under(params, hang, hours)
        quiet = stops_under(params.but(purchase_rate=0.0), hang, hours)
        limits = stops_under(params, Fault(Kind.RATE_LIMIT, 0.0, 3600.0, share=0.1), hours)
        print(f"\nstops in {hours} h of 4 % hangs: {hangs} ({quiet} with no purchases, so no "
              f"platform evidence); of 10 % rate limits: {limits} (target 0)")  # fmt: skip
    print(f"\n({phases} fault start phases per row; {time.perf_counter() - started:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phases", type=int, default=200)
    parser.add_argument("--hours", type=int, default=20)
    parser.add_argument("--shipped-only", action="store_true",
                        help="only the shipped config's table, not the comparisons")  # fmt: skip
    args = parser.parse_args()
    shipped = Params.shipped()
    print(
        f"shipped: probe every {shipped.probe_interval:g} s (+-{shipped.probe_jitter:.0%}), "
        f"doubt {shipped.doubt_interval:g} s, timeout {shipped.timeout:g} s, failure_threshold "
        f"{shipped.failure_threshold}, platform_min_calls {shipped.platform_min_calls}, "
        f"{shipped.replicas} replicas, the platform's own timeout {shipped.platform_timeout:g} s"
    )
    report("Shipped config", shipped, args.phases, args.hours)
    if args.shipped_only:
        return
    # What each shipped change is worth: the same code with one default as it was.
    report("For comparison: kraken.probe_interval 30 s (the runbook's health check)",
           shipped.but(probe_interval=30.0), args.phases, args.hours)  # fmt: skip
    report("For comparison: kraken.timeout 10 s", shipped.but(timeout=10.0), args.phases,
           args.hours)  # fmt: skip
    report("For comparison: no platform watch (a failing platform wakes no replica)",
           shipped.but(watch_interval=float("inf")), args.phases, args.hours)  # fmt: skip


if __name__ == "__main__":
    main()
