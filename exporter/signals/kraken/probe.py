"""Live probe of the Kraken REST API, and the recovery checks the incident model runs; its results
are the exchange-neutral ones of exporter/signals/exchange.py.

A round calls SystemStatus, Ticker, Depth, Time (and Balance when keys are configured) one after
the other, never in parallel: Kraken throttles public calls per IP, and that IP may be the one the
platform buys from. A round stops at its first unanswered call (timeout, network_error, 503 and
other 5xx) and on rate_limited: the host is not answering or asks us to back off, and further
calls would only wait or make it worse. So a hanging exchange costs one client timeout per round,
not one per endpoint, and an exchange answering 503 is known down in one call, not five.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from exporter.signals.exchange import (
    RATE_LIMITED_OUTCOMES,
    UNAVAILABLE_OUTCOMES,
    CallResult,
    Check,
    RecoveryResult,
    RoundResult,
)

from .client import ENDPOINTS, SYSTEM_STATUSES, KrakenClient, KrakenError, OrderBook
from .outcomes import OUTCOMES, Outcome

# Buckets bracket the runbook's thresholds: 3 s (slow warning) and 5 s (slow response).
DURATION_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0)
# A round stops at its first unanswered call, or when asked to back off.
ABORTING: Final = UNAVAILABLE_OUTCOMES | RATE_LIMITED_OUTCOMES
# Failed rounds with the same outcome in a row are logged at warning once every this many.
REPEAT_LOG_EVERY: Final = 30


class ProbeMetrics:
    """The "Live Kraken probe" families of docs/metrics.md, every series pre-initialised."""

    def __init__(self, registry: CollectorRegistry, exchange: str) -> None:
        self.duration = Histogram(
            "liquid_abt_exchange_request_duration_seconds",
            "Duration of probe calls to the exchange API, failed calls included.",
            ["exchange", "endpoint"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.requests = Counter(
            "liquid_abt_exchange_requests_total",
            "Probe calls to the exchange API by outcome.",
            ["exchange", "endpoint", "outcome"],
            registry=registry,
        )
        self.up = Gauge(
            "liquid_abt_exchange_up",
            "1 when the exchange API answered the last probe round (rate limits and auth errors "
            "are answers; timeouts, network errors and 5xx are not).",
            ["exchange"],
            registry=registry,
        )
        self.status = Gauge(
            "liquid_abt_exchange_status",
            "Exchange system status as a state set: 1 for the current status.",
            ["exchange", "status"],
            registry=registry,
        )
        self.consecutive_failures = Gauge(
            "liquid_abt_exchange_consecutive_failures",
            "Probe rounds in a row in which the exchange API did not answer.",
            ["exchange"],
            registry=registry,
        )
        self.last_success = Gauge(
            "liquid_abt_exchange_last_success_timestamp_seconds",
            "Unix time of the last fully successful probe round (0 before the first).",
            ["exchange"],
            registry=registry,
        )
        self.invalid_nonce = Gauge(
            "liquid_abt_exchange_invalid_nonce",
            "1 while the exchange rejects this replica's nonces (the last probe round): a "
            "configuration fault, replicas share a key or the clock went back; not an auth error.",
            ["exchange"],
            registry=registry,
        )
        self._exchange = exchange
        for endpoint in ENDPOINTS:
            self.duration.labels(exchange, endpoint)
            for outcome in OUTCOMES:
                self.requests.labels(exchange, endpoint, outcome)
        for status in SYSTEM_STATUSES:
            self.status.labels(exchange, status)
        for gauge in (self.up, self.consecutive_failures, self.last_success, self.invalid_nonce):
            gauge.labels(exchange)

    def observe(self, endpoint: str, outcome: str, seconds: float) -> None:
        self.duration.labels(self._exchange, endpoint).observe(seconds)
        self.requests.labels(self._exchange, endpoint, str(outcome)).inc()

    def set_status(self, status: str) -> None:
        for state in SYSTEM_STATUSES:
            self.status.labels(self._exchange, state).set(1 if state == status else 0)


class ExchangeProbe:
    """Probes one exchange, a round at a time, and keeps its metrics current.

    The incident loop (exporter/runbook/probing.py) decides when the next round runs.

    `exchange_up` means "the API answered every call"; whether Kraken accepts orders is the
    `status` state set (cancel_only keeps the API up but stops purchases), so alert on both.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        client: KrakenClient,
        exchange: str = "kraken",
        slow_threshold: float = 5.0,
        logger: logging.Logger | None = None,
        *,
        pair: str = "XBTAUD",
        call_spacing: float = 1.0,
    ) -> None:
        self._client = client
        self._exchange = exchange
        self._slow_threshold = slow_threshold
        self._logger = logger or logging.getLogger(__name__)
        self._pair = pair
        # Kraken asks for about one public call per second per IP; keep well inside it.
        self._call_spacing = call_spacing
        self._metrics = ProbeMetrics(registry, exchange)
        self._failures = 0
        # The outcome of the failed rounds in a row, and how many repeated it (for the logs).
        self._failed_rounds_logged: tuple[str | None, int] = (None, 0)
        # Rounds refused for their nonce, in a row: the warning is logged once per episode.
        self._nonce_episode = False
        self._lock = asyncio.Lock()
        self.last_round: RoundResult | None = None

    @property
    def exchange(self) -> str:
        return self._exchange

    @property
    def consecutive_failures(self) -> int:
        """Rounds in a row in which the API did not answer."""
        return self._failures

    async def run_once(self) -> RoundResult:
        """Run one round and update the metrics; rounds never overlap each other or a check."""
        async with self._lock:
            result = await self._round()
            self._record(result)
            self.last_round = result
        return result

    async def recovery_check(self) -> RecoveryResult:
        """The runbook's recovery tests: status online, price, balance (with keys), order book.

        Stops at the first failure, as the runbook does; later checks are reported as skipped.
        """
        steps: list[tuple[str, str, Callable[[], Awaitable[Any]], Callable[[Any], Check]]] = [
            ("system_status", "SystemStatus", self._client.system_status, _judge_status),
            ("price", "Ticker", lambda: self._client.ticker(self._pair), _judge_price),
        ]
        if self._client.has_credentials:
            steps.append(("balance", "Balance", self._client.balance, _judge_balance))
        steps.append(("order_book", "Depth", lambda: self._client.depth(self._pair), _judge_book))
        checks: list[Check] = []
        async with self._lock:
            for name, endpoint, call, judge in steps:
                if checks and not checks[-1].ok:
                    checks.append(Check(name, False, f"skipped: {checks[-1].name} failed"))
                    continue
                await self._space(first=not checks)
                done = await self._call(endpoint, call)
                ok = done.outcome is Outcome.SUCCESS
                checks.append(judge(done.value) if ok else Check(name, False, done.detail))
        return RecoveryResult(all(c.ok for c in checks), tuple(checks))

    async def _round(self) -> RoundResult:
        calls: list[tuple[str, Callable[[], Awaitable[Any]]]] = [
            ("SystemStatus", self._client.system_status),
            ("Ticker", lambda: self._client.ticker(self._pair)),
            ("Depth", lambda: self._client.depth(self._pair)),
            ("Time", self._client.server_time),
        ]
        if self._client.has_credentials:
            calls.append(("Balance", self._client.balance))
        done: list[CallResult] = []
        for endpoint, call in calls:
            await self._space(first=not done)
            done.append(await self._call(endpoint, call))
            if done[-1].outcome in ABORTING:
                break
        failures = [c for c in done if c.outcome is not Outcome.SUCCESS]
        status = done[0].value if done[0].outcome is Outcome.SUCCESS else None
        outcome = str(failures[0].outcome) if failures else Outcome.SUCCESS.value
        return RoundResult(not failures, outcome, tuple(done), status)

    async def _space(self, *, first: bool) -> None:
        if not first and self._call_spacing > 0:
            await asyncio.sleep(self._call_spacing)

    async def _call(self, endpoint: str, call: Callable[[], Awaitable[Any]]) -> CallResult:
        started = time.monotonic()
        try:
            result = CallResult(endpoint, Outcome.SUCCESS, await call())
        except KrakenError as exc:
            result = CallResult(endpoint, exc.outcome, detail=str(exc))
        elapsed = time.monotonic() - started
        self._metrics.observe(endpoint, result.outcome, elapsed)
        if elapsed > self._slow_threshold:
            self._logger.warning(
                "slow exchange API response",
                extra=self._extra(endpoint=endpoint, seconds=round(elapsed, 3)),
            )
        return result

    def _record(self, result: RoundResult) -> None:
        m, ex = self._metrics, self._exchange
        if result.status is not None:
            if result.status not in SYSTEM_STATUSES:
                self._logger.warning(
                    "unknown exchange status", extra=self._extra(status=result.status)
                )
            m.set_status(result.status)
        m.up.labels(ex).set(1 if result.available else 0)
        if result.ok:
            m.last_success.labels(ex).set(time.time())
        if result.available:
            if self._failures:
                self._logger.info(
                    "exchange API answers again", extra=self._extra(rounds=self._failures)
                )
            self._failures = 0
        else:
            self._failures += 1
        self._log_failed_round(result)
        self._note_nonce(result)
        m.consecutive_failures.labels(ex).set(self._failures)

    def _note_nonce(self, result: RoundResult) -> None:
        """One warning when the exchange starts refusing our nonces, one line when it stops."""
        self._metrics.invalid_nonce.labels(self._exchange).set(1 if result.invalid_nonce else 0)
        if result.invalid_nonce and not self._nonce_episode:
            self._logger.warning(
                "exchange refuses our nonces: replicas share a key or the clock went back; "
                "give each replica its own API key",
                extra=self._extra(outcome=Outcome.INVALID_NONCE.value),
            )
        elif self._nonce_episode and not result.invalid_nonce:
            self._logger.info("exchange accepts our nonces again", extra=self._extra())
        self._nonce_episode = result.invalid_nonce

    def _log_failed_round(self, result: RoundResult) -> None:
        """A warning when rounds start failing or fail differently, then one every
        REPEAT_LOG_EVERY rounds: an hour-long outage probed every 2 s is not 1,800 warnings."""
        if result.ok:
            self._failed_rounds_logged = (None, 0)
            return
        failed = next(c for c in result.calls if c.outcome is not Outcome.SUCCESS)
        outcome, repeats = self._failed_rounds_logged
        repeats = repeats + 1 if outcome == result.outcome else 0
        self._failed_rounds_logged = (result.outcome, repeats)
        level = logging.WARNING if repeats % REPEAT_LOG_EVERY == 0 else logging.DEBUG
        self._logger.log(
            level,
            "exchange probe round failed",
            extra=self._extra(
                outcome=result.outcome, detail=failed.detail, consecutive=self._failures
            ),
        )

    def _extra(self, **fields: object) -> dict[str, object]:
        return {"exchange": self._exchange, **fields}


def _judge_status(status: str) -> Check:
    return Check("system_status", status == "online", f"status {status}")


def _judge_price(price: Any) -> Check:
    return Check("price", price > 0, f"last trade price {price}")


def _judge_balance(balances: dict[str, Any]) -> Check:
    # Amounts stay out of the detail: it ends up in the audit log.
    return Check("balance", True, f"balance readable ({len(balances)} assets)")


def _judge_book(book: OrderBook) -> Check:
    if not book.bids or not book.asks:
        return Check("order_book", False, f"{book.pair}: empty side in the order book")
    bid, ask = book.bids[0].price, book.asks[0].price
    return Check("order_book", bid < ask, f"{book.pair}: best bid {bid}, best ask {ask}")
