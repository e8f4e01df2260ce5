"""Draws simulated purchases and the exchange calls each makes, without touching a database."""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Final

from exporter.labels import REASON_CLASSES

from .scenarios import BREAKER_OPEN, BY_CLASS, Failure, SimulateError

TENANT_PREFIX: Final = "sim-"
PRICE, BALANCE, DEPTH, ORDER = "getCurrentPrice", "getBalance", "getOrderBook", "placeOrder"
# Median response times (ms) of healthy calls, by the platform's endpoint names.
_HEALTHY_MS: Final = {PRICE: 180.0, BALANCE: 260.0, DEPTH: 230.0, ORDER: 450.0}
_HEALTHY_SIGMA: Final = 0.45


@dataclass(frozen=True)
class Call:
    endpoint: str
    success: bool
    response_ms: int
    error: str | None
    offset_s: float  # when the call was logged, after the purchase was created


@dataclass(frozen=True)
class Purchase:
    tenant_id: str
    amount_aud: Decimal
    failure: Failure | None
    retry_count: int
    calls: tuple[Call, ...]

    @property
    def status(self) -> str:
        return "failed" if self.failure else "completed"

    @property
    def failure_reason(self) -> str | None:
        return self.failure.text if self.failure else None

    @property
    def duration_s(self) -> float:
        return self.calls[-1].offset_s if self.calls else 0.05


@dataclass
class Summary:
    purchases: Counter[str] = field(default_factory=Counter)  # by status
    failures: Counter[str] = field(default_factory=Counter)  # by intended reason class
    calls: int = 0
    failed_calls: int = 0
    skipped_paused: int = 0
    retried: Counter[str] = field(default_factory=Counter)  # queued retries bought again, by status

    def add(self, purchase: Purchase) -> None:
        self.purchases[purchase.status] += 1
        if purchase.failure:
            self.failures[purchase.failure.reason] += 1
        self.calls += len(purchase.calls)
        self.failed_calls += sum(not c.success for c in purchase.calls)

    def describe(self) -> dict[str, object]:
        return {
            "purchases": sum(self.purchases.values()),
            "failed": self.purchases["failed"],
            "failures": ",".join(f"{k}={v}" for k, v in sorted(self.failures.items())) or "none",
            "api_calls": self.calls,
            "failed_api_calls": self.failed_calls,
            "skipped_paused": self.skipped_paused,
            "retries": ",".join(f"{k}={v}" for k, v in sorted(self.retried.items())) or "none",
        }


class Simulator:
    """Draws purchases: Poisson arrivals, skewed tenants, log-normal amounts and latencies."""

    def __init__(
        self,
        mix: Mapping[str, float],
        *,
        slowdown: float = 1.0,
        tenants: int = 40,
        seed: int | None = None,
    ) -> None:
        unknown = set(mix) - set(REASON_CLASSES)
        if unknown or sum(mix.values()) > 1 + 1e-9 or tenants < 1:
            raise SimulateError(f"invalid failure mix {dict(mix)} or tenant count {tenants}")
        self.mix = {c: p for c, p in mix.items() if p > 0}
        self.slowdown = slowdown
        self.rng = random.Random(seed)
        self.tenants = [f"{TENANT_PREFIX}tenant-{i:04d}" for i in range(1, tenants + 1)]
        # A few tenants buy far more often than most (Zipf-like), as on a real platform.
        self._weights = [1 / (i**0.8) for i in range(1, tenants + 1)]

    def interval(self, rate_per_minute: float) -> float:
        """Seconds to the next purchase."""
        return self.rng.expovariate(rate_per_minute / 60)

    def purchase(
        self,
        *,
        breaker_open: bool = False,
        rate_multiplier: float = 1.0,
        exchange_failure: Failure | None = None,
        delay_ms: float = 0.0,
    ) -> Purchase:
        """One purchase; `exchange_failure` and `delay_ms` are what the exchange does right now
        (ExchangeWatch in a drill): every purchase fails that way, every call is that slower."""
        rng = self.rng
        amount = min(max(rng.lognormvariate(math.log(250), 1.0), 10.0), 50_000.0)
        if breaker_open:
            failure: Failure | None = BREAKER_OPEN
        else:
            failure = exchange_failure or self._draw_failure(rate_multiplier)
        plan = [PRICE]
        if amount > 1000 or rng.random() < 0.1:
            plan.append(BALANCE)
        if amount > 5000:
            plan.append(DEPTH)
        plan.append(ORDER)
        retries = rng.choices((0, 1, 2, 3), (60, 20, 10, 10))[0] if failure else 0
        return Purchase(
            tenant_id=rng.choices(self.tenants, self._weights)[0],
            amount_aud=Decimal(f"{amount:.2f}"),
            failure=failure,
            retry_count=retries,
            calls=self._calls(plan, failure, delay_ms),
        )

    def _draw_failure(self, rate_multiplier: float) -> Failure | None:
        draw, total = self.rng.random(), 0.0
        for reason, probability in self.mix.items():
            # Lowering the call rate (the runbook's 0.5) is what makes rate limiting go away.
            total += probability * (rate_multiplier if reason == "rate_limited" else 1.0)
            if draw < total:
                return self.rng.choice(BY_CLASS[reason])
        return None

    def _calls(
        self, plan: list[str], failure: Failure | None, delay_ms: float = 0.0
    ) -> tuple[Call, ...]:
        """The calls the purchase makes, up to and including the one that fails."""
        if failure is None:
            return self._timed([(e, None) for e in plan], delay_ms)
        if failure.stage == "none":
            return ()
        failing = {
            "price": PRICE,
            "order": ORDER,
            "balance": BALANCE if BALANCE in plan else ORDER,
            "any": self.rng.choice(plan),
        }[failure.stage]
        made = plan[: plan.index(failing) + 1]
        return self._timed([(e, failure if e == failing else None) for e in made], delay_ms)

    def _timed(
        self, steps: list[tuple[str, Failure | None]], delay_ms: float = 0.0
    ) -> tuple[Call, ...]:
        calls, offset = [], 0.0
        for endpoint, failure in steps:
            if failure is None:
                ms = self._latency(_HEALTHY_MS[endpoint] * self.slowdown, _HEALTHY_SIGMA)
                ms += round(delay_ms)
            else:
                ms = self._latency(*failure.latency_ms)
            offset += ms / 1000 + 0.005  # the platform's own time between calls
            error = failure.text if failure else None
            calls.append(Call(endpoint, failure is None, ms, error, offset))
        return tuple(calls)

    def _latency(self, median: float, sigma: float) -> int:
        value = median if sigma == 0 else self.rng.lognormvariate(math.log(median), sigma)
        return max(1, round(value))
