"""What goes wrong, and when: a fault timeline, and generators of timelines.

A fault is an interval of simulated time. The exchange-wide ones change what every call sees
(the probe's and the platform's); `ISOLATED` and `RESTART` touch one replica; `HOLD` is an
admin's; `VERIFY_FAILS` leaves the API answering while the recovery checks fail (a crossed book).
The replies are Kraken's own words, classified by the production code (outcomes.classify_error,
the configured ReasonClassifier), so a change of classification shows here.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    OUTAGE = "outage"  # every call answered 503 / EService:Unavailable at once
    HANG = "hang"  # every call times out
    SPORADIC_HANG = "sporadic_hang"  # `share` of the calls time out
    RATE_LIMIT = "rate_limit"  # `share` of the calls are rate limited (1.0: all)
    MAINTENANCE = "maintenance"  # SystemStatus says maintenance, market data is unavailable
    CANCEL_ONLY = "cancel_only"
    POST_ONLY = "post_only"
    AUTH = "auth"  # the exporter's read-only key is refused (EAPI:Invalid key)
    NONCE = "nonce"  # EAPI:Invalid nonce: replicas share a key, or a clock went back
    ISOLATED = "isolated"  # one replica's network: its calls fail, nobody else's
    RESTART = "restart"  # one replica's process restarts at `start` (a new replica name)
    HOLD = "hold"  # an admin holds purchases (pause + breaker forced open) until `end`
    VERIFY_FAILS = "verify_fails"  # the API answers, the recovery checks fail (crossed book)


# The causes a page may name for each fault (the alert that should page for it).
PAGE_CAUSES: dict[Kind, frozenset[str]] = {
    Kind.OUTAGE: frozenset({"unavailable"}),
    Kind.HANG: frozenset({"unavailable"}),
    Kind.MAINTENANCE: frozenset({"maintenance"}),
    Kind.CANCEL_ONLY: frozenset({"trading_restricted"}),
    Kind.POST_ONLY: frozenset({"trading_restricted"}),
    Kind.AUTH: frozenset({"auth"}),
    Kind.RATE_LIMIT: frozenset({"rate_limited"}),
}

# Faults that must never stop purchases on their own.
HARMLESS = frozenset({
    Kind.SPORADIC_HANG, Kind.RATE_LIMIT, Kind.AUTH, Kind.NONCE, Kind.ISOLATED, Kind.RESTART,
    Kind.VERIFY_FAILS,
})  # fmt: skip


@dataclass(frozen=True)
class Fault:
    kind: Kind
    start: float
    end: float
    replica: int | None = None  # ISOLATED, RESTART
    share: float = 1.0  # SPORADIC_HANG, RATE_LIMIT

    def active(self, t: float) -> bool:
        return self.start <= t < self.end

    def __str__(self) -> str:
        who = f" replica {self.replica}" if self.replica is not None else ""
        share = f" {self.share:.0%}" if self.share < 1 else ""
        return f"{self.kind}{share}{who} [{self.start:.1f}, {self.end:.1f})"


def outage_lengths(rng: random.Random) -> float:
    """Outages of any length: blips under a probe interval to half an hour."""
    return rng.choice((1.0, 3.0, 8.0, 20.0, 45.0, 120.0, 400.0, 1800.0)) * rng.uniform(0.5, 1.5)


def random_timeline(
    rng: random.Random,
    horizon: float,
    replicas: int,
    kinds: tuple[Kind, ...] = tuple(Kind),
    longest: float = float("inf"),
) -> list[Fault]:
    """One to four faults, overlapping as they like; flapping is several short outages."""
    faults: list[Fault] = []
    for _ in range(rng.randint(1, 4)):
        kind = rng.choice(kinds)
        start = rng.uniform(0.0, horizon * 0.7)
        length = min(longest, outage_lengths(rng))
        if kind is Kind.OUTAGE and rng.random() < 0.3:  # flapping: short outages in a row
            at = start
            for _ in range(rng.randint(3, 8)):
                down = rng.uniform(1.0, 20.0)
                faults.append(Fault(Kind.OUTAGE, at, at + down))
                at += down + rng.uniform(2.0, 60.0)
            continue
        replica = rng.randrange(replicas) if kind in (Kind.ISOLATED, Kind.RESTART) else None
        share = 1.0
        if kind is Kind.SPORADIC_HANG:
            share = rng.choice((0.01, 0.02, 0.04))  # the target: 0 stops at 4 %
        elif kind is Kind.RATE_LIMIT:
            share = rng.choice((0.1, 0.5, 1.0))
        if kind is Kind.VERIFY_FAILS and faults:  # a crossed book as an outage ends
            start, length = faults[-1].end + rng.uniform(-5.0, 30.0), rng.uniform(30.0, 400.0)
        end = start + (0.0 if kind is Kind.RESTART else length)
        faults.append(Fault(kind, start, end, replica, share))
    return sorted(faults, key=lambda f: f.start)
