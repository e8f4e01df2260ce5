"""Simulated LIQUID ABT platform traffic for demos, dashboards and drills.

Writes `bitcoin_purchases` and one `api_call_logs` row per exchange call, at a steady rate with a
failure mix that follows the runbook scenarios, or backfills history at once. Live, it behaves
like the platform towards the exporter's controls: it buys nothing while automatic purchases are
paused and fails fast, without calling the exchange, while the circuit breaker is open.

It refuses a database that holds purchases of tenants it did not create (its tenants are
`sim-*`): fake purchases in production would page people and could be retried for real.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Final

import asyncpg

from exporter import retry_queue
from exporter.classify import ReasonClassifier
from exporter.config import (
    Config,
    ConfigError,
    RetryConfig,
    format_duration,
    load_config,
    parse_duration,
)
from exporter.labels import REASON_CLASSES
from exporter.logs import FORMATS, LEVELS, setup_logging
from exporter.secrets import SecretError

log = logging.getLogger("exporter.simulate")

TENANT_PREFIX: Final = "sim-"
PRICE, BALANCE, DEPTH, ORDER = "getCurrentPrice", "getBalance", "getOrderBook", "placeOrder"
# Median response times (ms) of healthy calls, by the platform's endpoint names.
_HEALTHY_MS: Final = {PRICE: 180.0, BALANCE: 260.0, DEPTH: 230.0, ORDER: 450.0}
_HEALTHY_SIGMA: Final = 0.45


class SimulateError(Exception):
    """The simulation cannot start: no tables, a database that looks like production, bad flags."""


@dataclass(frozen=True)
class Failure:
    """One way a purchase fails, in the words Kraken, the network or the platform use."""

    reason: str  # the class the exporter's classifier must map `text` to
    text: str  # written to failure_reason and to the failing call's error_message
    stage: str  # the failing call: price, balance (private), order, any, or none (no call made)
    latency_ms: tuple[float, float]  # (median, sigma) of the failing call; sigma 0 is fixed


FAILURES: Final[tuple[Failure, ...]] = (
    # Purchase runbook scenario A / exchange runbook: Kraken itself failing.
    Failure("exchange_unavailable", "EService:Unavailable", "any", (350, 0.5)),
    Failure("exchange_unavailable", "EService:Busy", "order", (900, 0.4)),
    Failure("exchange_unavailable", "Kraken API error: HTTP 502 Bad Gateway", "any", (60, 0.3)),
    Failure(
        "exchange_unavailable", "Kraken API error: HTTP 503 Service Unavailable", "any", (40, 0.3)
    ),
    # Exchange runbook scenario B.
    Failure("rate_limited", "EAPI:Rate limit exceeded", "any", (120, 0.3)),
    Failure("rate_limited", "EGeneral:Too many requests", "any", (110, 0.3)),
    Failure("rate_limited", "HTTP 429 Too Many Requests", "any", (30, 0.3)),
    # Exchange runbook scenario C: only private calls are signed.
    Failure("auth", "EAPI:Invalid signature", "balance", (150, 0.3)),
    Failure("auth", "EAPI:Invalid key", "balance", (140, 0.3)),
    Failure("auth", "EAPI:Invalid nonce", "order", (160, 0.3)),
    Failure("auth", "EGeneral:Permission denied", "order", (170, 0.3)),
    Failure("auth", "EGeneral:Temporary lockout", "balance", (130, 0.3)),
    # Purchase runbook scenario C / exchange runbook scenario D: network and infrastructure.
    Failure(
        "network_timeout", "Request to api.kraken.com timed out after 30000ms", "any", (30000, 0)
    ),
    Failure("network_timeout", "connect ETIMEDOUT 104.17.185.205:443", "any", (10000, 0)),
    Failure("network_timeout", "read ECONNRESET", "any", (1500, 0.8)),
    Failure("network_timeout", "getaddrinfo EAI_AGAIN api.kraken.com", "any", (5000, 0.2)),
    Failure("network_timeout", "socket hang up", "order", (2500, 0.6)),
    Failure("network_timeout", "EService:Deadline elapsed", "order", (10000, 0.1)),
    # Purchase runbook scenario B.
    Failure("insufficient_funds", "EOrder:Insufficient funds", "order", (420, 0.4)),
    Failure(
        "insufficient_funds",
        "Insufficient funds: Kraken AUD balance below order total",
        "balance",
        (260, 0.4),
    ),
    # Rejected before or by the exchange: never retried (runbook retry criteria).
    Failure("invalid_amount", "EOrder:Order minimum not met", "order", (400, 0.4)),
    Failure("invalid_amount", "EGeneral:Invalid arguments:volume", "order", (380, 0.4)),
    # Exchange runbook scenario A: maintenance and restricted trading.
    Failure("maintenance", "EService:Market in cancel_only mode", "order", (300, 0.4)),
    Failure("maintenance", "EService:Market in post_only mode", "order", (300, 0.4)),
    Failure("maintenance", "Kraken system status: maintenance", "price", (200, 0.4)),
    # Whatever else the platform reports.
    Failure("other", "EOrder:Trading agreement required", "order", (410, 0.4)),
    Failure("other", "Order rejected: unknown order state after placement", "order", (600, 0.5)),
)
# The platform's own refusal while the breaker is open: no exchange call, so no api_call_logs row.
BREAKER_OPEN: Final = Failure(
    "exchange_unavailable", "Circuit breaker OPEN for kraken: request not sent", "none", (0, 0)
)
CATALOGUE: Final[tuple[Failure, ...]] = (*FAILURES, BREAKER_OPEN)
_BY_CLASS: Final = {c: [f for f in FAILURES if f.reason == c] for c in REASON_CLASSES}


@dataclass(frozen=True)
class Scenario:
    mix: Mapping[str, float]  # probability, per purchase, of failing with each reason class
    slowdown: float  # multiplier on the response times of calls that succeed
    summary: str


SCENARIOS: Final[dict[str, Scenario]] = {
    "normal": Scenario(
        {
            "exchange_unavailable": 0.004,
            "rate_limited": 0.002,
            "network_timeout": 0.004,
            "insufficient_funds": 0.002,
            "invalid_amount": 0.001,
            "auth": 0.0005,
            "other": 0.001,
        },
        1.0,
        "a healthy day: about 1.5 percent of purchases fail, for the usual mix of reasons",
    ),
    "kraken-outage": Scenario(
        {"exchange_unavailable": 0.80, "network_timeout": 0.10},
        8.0,
        "Kraken failing (purchase runbook scenario A): mostly EService:Unavailable and 5xx",
    ),
    "maintenance": Scenario(
        {"maintenance": 0.85, "exchange_unavailable": 0.10},
        2.0,
        "Kraken maintenance or cancel_only (exchange runbook scenario A)",
    ),
    "rate-limiting": Scenario(
        {"rate_limited": 0.25, "exchange_unavailable": 0.01},
        1.5,
        "Kraken rate limiting us (exchange runbook scenario B)",
    ),
    "auth-failure": Scenario(
        {"auth": 0.95},
        1.0,
        "Kraken rejecting our API key or signatures (exchange runbook scenario C)",
    ),
    "network": Scenario(
        {"network_timeout": 0.15, "exchange_unavailable": 0.02},
        3.0,
        "timeouts and resets between us and Kraken (purchase C / exchange D)",
    ),
    "insufficient-funds": Scenario(
        {"insufficient_funds": 0.15, "invalid_amount": 0.005},
        1.0,
        "the Kraken AUD balance ran low (purchase runbook scenario B)",
    ),
}


def parse_mix(text: str) -> dict[str, float]:
    """`exchange_unavailable=0.02,rate_limited=0.01` into probabilities per reason class."""
    mix: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in REASON_CLASSES:
            raise SimulateError(
                f"--failure-mix {part!r}: expected CLASS=PROBABILITY, CLASS one of "
                f"{', '.join(REASON_CLASSES)}"
            )
        try:
            probability = float(value)
        except ValueError:
            raise SimulateError(f"--failure-mix {part!r}: {value!r} is not a number") from None
        if not 0 <= probability <= 1:
            raise SimulateError(f"--failure-mix {part!r}: a probability is between 0 and 1")
        mix[name] = probability
    if sum(mix.values()) > 1 + 1e-9:
        raise SimulateError(f"--failure-mix adds up to {sum(mix.values()):g}, more than 1")
    return mix


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

    def purchase(self, *, breaker_open: bool = False, rate_multiplier: float = 1.0) -> Purchase:
        rng = self.rng
        amount = min(max(rng.lognormvariate(math.log(250), 1.0), 10.0), 50_000.0)
        failure = BREAKER_OPEN if breaker_open else self._draw_failure(rate_multiplier)
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
            calls=self._calls(plan, failure),
        )

    def _draw_failure(self, rate_multiplier: float) -> Failure | None:
        draw, total = self.rng.random(), 0.0
        for reason, probability in self.mix.items():
            # Lowering the call rate (the runbook's 0.5) is what makes rate limiting go away.
            total += probability * (rate_multiplier if reason == "rate_limited" else 1.0)
            if draw < total:
                return self.rng.choice(_BY_CLASS[reason])
        return None

    def _calls(self, plan: list[str], failure: Failure | None) -> tuple[Call, ...]:
        """The calls the purchase makes, up to and including the one that fails."""
        if failure is None:
            return self._timed([(e, None) for e in plan])
        if failure.stage == "none":
            return ()
        failing = {
            "price": PRICE,
            "order": ORDER,
            "balance": BALANCE if BALANCE in plan else ORDER,
            "any": self.rng.choice(plan),
        }[failure.stage]
        made = plan[: plan.index(failing) + 1]
        return self._timed([(e, failure if e == failing else None) for e in made])

    def _timed(self, steps: list[tuple[str, Failure | None]]) -> tuple[Call, ...]:
        calls, offset = [], 0.0
        for endpoint, failure in steps:
            if failure is None:
                ms = self._latency(_HEALTHY_MS[endpoint] * self.slowdown, _HEALTHY_SIGMA)
            else:
                ms = self._latency(*failure.latency_ms)
            offset += ms / 1000 + 0.005  # the platform's own time between calls
            error = failure.text if failure else None
            calls.append(Call(endpoint, failure is None, ms, error, offset))
        return tuple(calls)

    def _latency(self, median: float, sigma: float) -> int:
        value = median if sigma == 0 else self.rng.lognormvariate(math.log(median), sigma)
        return max(1, round(value))


# --- Writing ---------------------------------------------------------------------------------

_PURCHASE_COLUMNS: Final = (
    "tenant_id",
    "amount_aud",
    "status",
    "failure_reason",
    "exchange_provider",
    "retry_count",
    "created_at",
)
_CALL_COLUMNS: Final = (
    "provider",
    "endpoint",
    "success",
    "response_time",
    "error_message",
    "created_at",
)


async def check_database(conn: asyncpg.Connection, *, force: bool = False) -> None:
    """The platform tables exist, and hold no purchases of tenants the simulator did not create."""
    missing = [
        t
        for t in ("bitcoin_purchases", "api_call_logs", "tenant_accounts")
        if await conn.fetchval("SELECT to_regclass($1)", t) is None
    ]
    if missing:
        raise SimulateError(
            f"table(s) {', '.join(missing)} missing: create them with "
            "`liquid-abt-exporter migrate --with-platform-schema` (development databases only)"
        )
    real = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM bitcoin_purchases WHERE tenant_id NOT LIKE $1)",
        f"{TENANT_PREFIX}%",
    )
    if real and not force:
        raise SimulateError(
            "the database holds purchases of tenants the simulator did not create: it looks like "
            "a real platform database, so nothing was written (--force writes anyway)"
        )


async def _create_tenants(conn: asyncpg.Connection, simulator: Simulator) -> None:
    await conn.executemany(
        "INSERT INTO tenant_accounts (tenant_id, balance_aud) VALUES ($1, $2) "
        "ON CONFLICT (tenant_id) DO NOTHING",
        [(t, Decimal("25000.00")) for t in simulator.tenants],
    )


def _call_rows(exchange: str, purchase: Purchase, created: datetime) -> list[tuple]:
    return [
        (
            exchange,
            c.endpoint,
            c.success,
            c.response_ms,
            c.error,
            created + timedelta(seconds=c.offset_s),
        )
        for c in purchase.calls
    ]


async def backfill(
    conn: asyncpg.Connection,
    simulator: Simulator,
    *,
    seconds: float,
    rate_per_minute: float,
    exchange: str = "kraken",
    batch: int = 5000,
) -> Summary:
    """Write `seconds` of history ending at the database's now(), in batches (COPY).

    A period that already holds purchases is left alone (returns an empty summary): restarting
    `--backfill 1h --follow` must not write the last hour twice.
    """
    summary = Summary()
    now: datetime = await conn.fetchval("SELECT now()")
    if await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM bitcoin_purchases WHERE created_at > $1)",
        now - timedelta(seconds=seconds),
    ):
        log.info("backfill skipped: the period already holds purchases")
        return summary
    await _create_tenants(conn, simulator)
    at = now - timedelta(seconds=seconds)
    purchases: list[tuple] = []
    calls: list[tuple] = []
    while True:
        at += timedelta(seconds=simulator.interval(rate_per_minute))
        if at >= now:
            break
        purchase = simulator.purchase()
        summary.add(purchase)
        purchases.append(
            (
                purchase.tenant_id,
                purchase.amount_aud,
                purchase.status,
                purchase.failure_reason,
                exchange,
                purchase.retry_count,
                at,
            )
        )
        calls += _call_rows(exchange, purchase, at)
        if len(purchases) >= batch:
            await _copy(conn, purchases, calls)
            purchases, calls = [], []
    await _copy(conn, purchases, calls)
    return summary


async def _copy(conn: asyncpg.Connection, purchases: list[tuple], calls: list[tuple]) -> None:
    async with conn.transaction():
        if purchases:
            await conn.copy_records_to_table(
                "bitcoin_purchases", records=purchases, columns=_PURCHASE_COLUMNS
            )
        if calls:
            await conn.copy_records_to_table("api_call_logs", records=calls, columns=_CALL_COLUMNS)


Connect = Callable[[], Awaitable[asyncpg.Connection]]


@dataclass(frozen=True)
class Controls:
    paused: bool = False
    breaker_open: bool = False
    rate_multiplier: float = 1.0


_CONTROLS_SQL: Final = """
SELECT coalesce(c.purchases_paused, false), coalesce(b.state, 'closed'),
       coalesce(c.api_rate_multiplier, 1)::float8
FROM (SELECT $1::text AS exchange) x
LEFT JOIN liquid_abt.exchange_controls c ON c.exchange = x.exchange
LEFT JOIN liquid_abt.circuit_breakers b ON b.exchange = x.exchange
"""


async def read_controls(conn: asyncpg.Connection, exchange: str) -> Controls:
    """What the platform obeys: the pause flag, the breaker state, the API rate multiplier."""
    paused, state, multiplier = await conn.fetchrow(_CONTROLS_SQL, exchange)
    return Controls(bool(paused), state == "open", float(multiplier))


# Errors after which a new connection may work: the database restarted, or the network blinked.
_CONNECTION_ERRORS: Final = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
)


class Live:
    """The platform at `rate` purchases a minute: each is `pending` until its calls finish.

    A lost database connection is reopened with backoff; purchases due meanwhile are lost, as
    they would be on a platform without its database, and settlements wait for the connection.
    """

    def __init__(
        self,
        connect: Connect,
        simulator: Simulator,
        *,
        rate_per_minute: float,
        exchange: str,
        honour_controls: bool = True,
        retry_config: RetryConfig | None = None,
    ) -> None:
        self.connect = connect
        self.conn: asyncpg.Connection | None = None
        self.simulator = simulator
        self.rate = rate_per_minute
        self.exchange = exchange
        self.honour_controls = honour_controls
        self.summary = Summary()
        self.controls = Controls()
        self.lost = 0  # purchases that arrived while the database was unreachable
        self.retry_config = retry_config or RetryConfig()
        self._in_flight: list[tuple[float, int, datetime, Purchase]] = []

    async def run(self, stop: asyncio.Event, duration: float | None = None) -> Summary:
        loop = asyncio.get_running_loop()
        end = math.inf if duration is None else loop.time() + duration
        next_purchase = loop.time() + self.simulator.interval(self.rate)
        next_controls = next_retry = loop.time()
        backoff = 0.5
        try:
            while not stop.is_set() and loop.time() < end:
                now = loop.time()
                try:
                    if self.conn is None and now >= next_retry:
                        self.conn = await self.connect()
                        await _create_tenants(self.conn, self.simulator)
                        backoff = 0.5
                    if self.conn is not None:
                        if self.honour_controls and now >= next_controls:
                            await self._refresh_controls(self.conn)
                            await self._process_retries(self.conn)
                            next_controls = now + 1.0
                        await self._settle(self.conn, now)
                    if now >= next_purchase:
                        next_purchase += self.simulator.interval(self.rate)
                        await self._start_purchase(now)
                except _CONNECTION_ERRORS as exc:
                    log.warning(
                        "database connection lost: reconnecting",
                        extra={"error": str(exc) or type(exc).__name__, "retry_in": backoff},
                    )
                    await self._drop_connection()
                    next_retry, backoff = loop.time() + backoff, min(backoff * 2, 10.0)
                # Settlements wait for a connection: without one, their due times are no alarm.
                settling = (due for due, *_ in self._in_flight) if self.conn else ()
                wake = min(
                    next_purchase, end, next_controls if self.conn else next_retry, *settling
                )
                await _sleep_until(stop, wake - loop.time())
            if self.conn is not None:
                await self._settle(self.conn, math.inf)  # nothing stays pending for ever
        finally:
            await self._drop_connection()
        if self._in_flight:
            log.warning(
                "purchases left pending: the database was unreachable at the end",
                extra={"pending": len(self._in_flight)},
            )
        return self.summary

    async def _drop_connection(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.terminate()

    async def _refresh_controls(self, conn: asyncpg.Connection) -> None:
        try:
            controls = await read_controls(conn, self.exchange)
        except asyncpg.UndefinedTableError:
            log.warning("no exporter schema: controls are not honoured (run `migrate`)")
            self.honour_controls = False
            return
        if controls != self.controls:
            log.info(
                "controls changed",
                extra={
                    "paused": controls.paused,
                    "breaker_open": controls.breaker_open,
                    "rate_multiplier": controls.rate_multiplier,
                },
            )
        self.controls = controls

    async def _process_retries(self, conn: asyncpg.Connection) -> None:
        """As the platform does: claim due retries (the claim itself skips paused exchanges and
        open breakers) and buy again; the outcome follows the current scenario."""
        if self.controls.paused or self.controls.breaker_open:
            return
        for entry in await retry_queue.claim_due(conn, limit=10):
            attempt = self.simulator.purchase(rate_multiplier=self.controls.rate_multiplier)
            async with conn.transaction():
                await conn.execute(
                    "UPDATE bitcoin_purchases SET retry_count = retry_count + 1, status = $2, "
                    "failure_reason = $3 WHERE id::text = $1",
                    entry.purchase_id, attempt.status, attempt.failure_reason,
                )  # fmt: skip
                if attempt.status == "completed":
                    await retry_queue.complete(conn, entry.id)
                else:
                    await retry_queue.fail(
                        conn, entry.id, attempt.failure_reason or "failed", self.retry_config
                    )
            self.summary.retried[attempt.status] += 1

    async def _start_purchase(self, now: float) -> None:
        if self.controls.paused:
            self.summary.skipped_paused += 1
            return
        if self.conn is None:
            self.lost += 1
            return
        purchase = self.simulator.purchase(
            breaker_open=self.controls.breaker_open, rate_multiplier=self.controls.rate_multiplier
        )
        row = await self.conn.fetchrow(
            "INSERT INTO bitcoin_purchases (tenant_id, amount_aud, status, exchange_provider) "
            "VALUES ($1, $2, 'pending', $3) RETURNING id, created_at",
            purchase.tenant_id,
            purchase.amount_aud,
            self.exchange,
        )
        self._in_flight.append((now + purchase.duration_s, row["id"], row["created_at"], purchase))

    async def _settle(self, conn: asyncpg.Connection, now: float) -> None:
        """Write the outcome of every purchase whose calls have finished (all or none)."""
        due = [p for p in self._in_flight if p[0] <= now]
        if not due:
            return
        async with conn.transaction():
            await conn.executemany(
                "UPDATE bitcoin_purchases SET status = $2, failure_reason = $3, retry_count = $4 "
                "WHERE id = $1",
                [(pid, p.status, p.failure_reason, p.retry_count) for _, pid, _, p in due],
            )
            calls = [
                row for _, _, created, p in due for row in _call_rows(self.exchange, p, created)
            ]
            if calls:
                await conn.executemany(
                    f"INSERT INTO api_call_logs ({', '.join(_CALL_COLUMNS)}) "
                    "VALUES ($1, $2, $3, $4, $5, $6)",
                    calls,
                )
        self._in_flight = [p for p in self._in_flight if p[0] > now]
        for *_, purchase in due:
            self.summary.add(purchase)


async def _sleep_until(stop: asyncio.Event, seconds: float) -> None:
    if seconds > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)


# --- Command line ----------------------------------------------------------------------------


def _duration(value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _mix(value: str) -> dict[str, float]:
    try:
        return parse_mix(value)
    except SimulateError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = 0.0
    if not number > 0:
        raise argparse.ArgumentTypeError(f"{value!r}: expected a number above 0")
    return number


def build_parser() -> argparse.ArgumentParser:
    scenarios = "; ".join(f"{name}: {s.summary}" for name, s in SCENARIOS.items())
    parser = argparse.ArgumentParser(
        prog="liquid-abt-exporter simulate",
        description="Write simulated Bitcoin purchases and exchange API call logs into the "
        "platform tables (DATABASE_URL, password from DATABASE_PASSWORD[_FILE], or database.dsn "
        "of the config file). Development, demo and drill databases only.",
    )
    parser.add_argument(
        "--rate", type=_positive, default=30.0, help="purchases per minute (default: 30)"
    )
    parser.add_argument(
        "--scenario",
        choices=sorted(SCENARIOS),
        default="normal",
        help=f"failure mix and latencies of a runbook scenario: {scenarios}",
    )
    parser.add_argument(
        "--failure-mix",
        type=_mix,
        metavar="CLASS=P,...",
        help="probability per purchase of each failure class, replacing the "
        "scenario's mix, e.g. exchange_unavailable=0.02,rate_limited=0.01",
    )
    parser.add_argument(
        "--duration",
        type=_duration,
        help="stop after this long (e.g. 10m; default: until SIGINT or SIGTERM)",
    )
    parser.add_argument(
        "--backfill",
        type=_duration,
        metavar="DURATION",
        help="write this much history (e.g. 1h) at once, then exit unless --follow",
    )
    parser.add_argument("--follow", action="store_true", help="after --backfill, go on live")
    parser.add_argument("--tenants", type=int, default=40, help="number of tenants (default: 40)")
    parser.add_argument(
        "--exchange", help="exchange_provider (default: the first configured exchange)"
    )
    parser.add_argument("--seed", type=int, help="random seed, for a reproducible run")
    parser.add_argument(
        "--ignore-controls",
        action="store_true",
        help="live: go on buying while purchases are paused or the breaker is open",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="write even into a database holding purchases of other tenants",
    )
    # The exporter's own variables, so both read one environment in a container.
    env = os.environ.get
    parser.add_argument(
        "--config.file",
        dest="config_file",
        default=env("LIQUID_ABT_CONFIG_FILE"),
        help="the exporter's config file (env LIQUID_ABT_CONFIG_FILE)",
    )
    parser.add_argument(
        "--log.level",
        dest="log_level",
        choices=LEVELS,
        default=env("LIQUID_ABT_LOG_LEVEL", "info"),
        help="env LIQUID_ABT_LOG_LEVEL",
    )
    parser.add_argument(
        "--log.format",
        dest="log_format",
        choices=FORMATS,
        default=env("LIQUID_ABT_LOG_FORMAT", "logfmt"),
        help="env LIQUID_ABT_LOG_FORMAT",
    )
    return parser


def _warn_on_misclassification(config: Config) -> None:
    """Configured patterns may differ from the defaults: say which texts would be misread."""
    classify = ReasonClassifier(config.purchases.failure_reasons).classify
    for failure in CATALOGUE:
        got = classify(failure.text)
        if got != failure.reason:
            log.warning(
                "configured failure_reasons classify a simulated reason differently",
                extra={"text": failure.text, "intended": failure.reason, "classified": got},
            )


async def _simulate(args: argparse.Namespace, config: Config) -> Summary:
    from exporter.cli import database_connection  # the exporter's own rules for finding the DB

    connection = database_connection(config)
    if connection is None:
        raise SimulateError("no database: set DATABASE_URL or database.dsn in the config file")
    scenario = SCENARIOS[args.scenario]
    mix = args.failure_mix if args.failure_mix is not None else dict(scenario.mix)
    simulator = Simulator(mix, slowdown=scenario.slowdown, tenants=args.tenants, seed=args.seed)
    exchange = args.exchange or config.exchanges[0]

    async def connect() -> asyncpg.Connection:
        return await asyncpg.connect(
            connection.dsn,
            password=connection.password,
            timeout=10,
            server_settings={"application_name": "liquid-abt-simulator"},
        )

    conn = await connect()
    try:
        await check_database(conn, force=args.force)
        log.info(
            "simulating",
            extra={
                "database": connection.masked,
                "exchange": exchange,
                "scenario": args.scenario,
                "rate_per_minute": args.rate,
                "mix": ",".join(f"{k}={v:g}" for k, v in mix.items()) or "none",
            },
        )
        if args.backfill:
            started = time.monotonic()
            summary = await backfill(
                conn, simulator, seconds=args.backfill, rate_per_minute=args.rate, exchange=exchange
            )
            log.info(
                "backfill written",
                extra={
                    "period": format_duration(args.backfill),
                    "seconds": round(time.monotonic() - started, 2),
                    **summary.describe(),
                },
            )
            if not args.follow:
                return summary
    finally:
        await conn.close()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    live = Live(
        connect,
        simulator,
        rate_per_minute=args.rate,
        exchange=exchange,
        honour_controls=not args.ignore_controls,
        retry_config=config.retry,
    )
    summary = await live.run(stop, args.duration)
    log.info("simulation stopped", extra={**summary.describe(), "lost": live.lost})
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """`liquid-abt-exporter simulate [--rate N] [--scenario S] [--backfill 1h [--follow]] ...`."""
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    try:
        config = load_config(Path(args.config_file) if args.config_file else None)
        _warn_on_misclassification(config)
        asyncio.run(_simulate(args, config))
    except (SimulateError, ConfigError, SecretError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        print(f"error: database: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
