"""What every exchange's probe shares: the probe metric families (one set per registry, labelled
by exchange), a round of calls made one after the other, the runbook's recovery checks stopping
at the first failure, and logs that stay quiet through a long outage.

An exchange's probe (exporter/signals/<exchange>/probe.py) subclasses `RoundProbe` and says which
calls make a round, which checks a recovery, and how its replies give a system status and a
`Quote`; its results are the neutral ones of exporter/signals/exchange.py.

A round stops at its first unanswered call (timeout, network_error, 503 and other 5xx) and on
rate_limited: the host is not answering or asks us to back off, and further calls would only wait
or make it worse. So a hanging exchange costs one client timeout per round, not one per endpoint.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .exchange import (
    RATE_LIMITED_OUTCOMES,
    SUCCESS,
    UNAVAILABLE_OUTCOMES,
    CallResult,
    Check,
    Quote,
    RecoveryResult,
    RoundResult,
)
from .outcomes import OUTCOMES, Outcome

# Buckets bracket the runbook's thresholds: 3 s (slow warning) and 5 s (slow response).
DURATION_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0)
# A round stops at its first unanswered call, or when asked to back off.
ABORTING: Final = UNAVAILABLE_OUTCOMES | RATE_LIMITED_OUTCOMES
# Failed rounds with the same outcome in a row are logged at warning once every this many.
REPEAT_LOG_EVERY: Final = 30

Call = Callable[[], Awaitable[Any]]


@dataclass(frozen=True)
class CheckStep:
    """One recovery check: its name, the endpoint it calls, and how the reply is judged."""

    name: str
    endpoint: str
    call: Call
    judge: Callable[[Any], Check]


class _Book(Protocol):
    @property
    def pair(self) -> str: ...

    @property
    def bids(self) -> Sequence[Any]: ...

    @property
    def asks(self) -> Sequence[Any]: ...


def judge_book(book: _Book) -> Check:
    """Both sides present and not crossed: the book a market purchase needs."""
    if not book.bids or not book.asks:
        return Check("order_book", False, f"{book.pair}: empty side in the order book")
    bid, ask = book.bids[0].price, book.asks[0].price
    return Check("order_book", bid < ask, f"{book.pair}: best bid {bid}, best ask {ask}")


def judge_balance(balances: Mapping[str, Any]) -> Check:
    # Amounts stay out of the detail: it ends up in the audit log (the quote carries the AUD).
    return Check("balance", True, f"balance readable ({len(balances)} assets)")


class _Families:
    """The probe families of one registry: every exchange's probe shares them."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.duration = Histogram(
            "liquid_abt_exchange_request_duration_seconds",
            "Duration of probe calls to the exchange API, failed calls included.",
            ["exchange", "endpoint"], buckets=DURATION_BUCKETS, registry=registry,
        )  # fmt: skip
        self.requests = Counter(
            "liquid_abt_exchange_requests_total",
            "Probe calls to the exchange API by outcome.",
            ["exchange", "endpoint", "outcome"], registry=registry,
        )  # fmt: skip
        self.up = Gauge(
            "liquid_abt_exchange_up",
            "1 when the exchange API answered the last probe round (rate limits and auth errors "
            "are answers; timeouts, network errors and 5xx are not).",
            ["exchange"], registry=registry,
        )  # fmt: skip
        self.status = Gauge(
            "liquid_abt_exchange_status",
            "Exchange system status as a state set: 1 for the current status.",
            ["exchange", "status"], registry=registry,
        )  # fmt: skip
        self.consecutive_failures = Gauge(
            "liquid_abt_exchange_consecutive_failures",
            "Probe rounds in a row in which the exchange API did not answer.",
            ["exchange"], registry=registry,
        )  # fmt: skip
        self.last_success = Gauge(
            "liquid_abt_exchange_last_success_timestamp_seconds",
            "Unix time of the last fully successful probe round (0 before the first).",
            ["exchange"], registry=registry,
        )  # fmt: skip
        self.invalid_nonce = Gauge(
            "liquid_abt_exchange_invalid_nonce",
            "1 while the exchange rejects this replica's nonces (the last probe round): a "
            "configuration fault, replicas share a key or the clock went back; not an auth error.",
            ["exchange"], registry=registry,
        )  # fmt: skip


# One set of families per registry, made by the first probe on it: a family registered twice
# is an error, and every exchange's probe reports into the same families.
_FAMILIES: weakref.WeakKeyDictionary[CollectorRegistry, _Families] = weakref.WeakKeyDictionary()


class ProbeMetrics:
    """The "Live exchange probe" families of docs/metrics.md for one exchange, pre-initialised."""

    def __init__(
        self,
        registry: CollectorRegistry,
        exchange: str,
        endpoints: Iterable[str],
        statuses: Sequence[str],
    ) -> None:
        families = _FAMILIES.get(registry)
        if families is None:
            families = _FAMILIES[registry] = _Families(registry)
        self.duration, self.requests, self.up = families.duration, families.requests, families.up
        self.status, self.last_success = families.status, families.last_success
        self.consecutive_failures = families.consecutive_failures
        self.invalid_nonce = families.invalid_nonce
        self._exchange = exchange
        self._statuses = tuple(statuses)
        for endpoint in endpoints:
            self.duration.labels(exchange, endpoint)
            for outcome in OUTCOMES:
                self.requests.labels(exchange, endpoint, outcome)
        for status in self._statuses:
            self.status.labels(exchange, status)
        for gauge in (self.up, self.consecutive_failures, self.last_success, self.invalid_nonce):
            gauge.labels(exchange)

    @property
    def statuses(self) -> tuple[str, ...]:
        return self._statuses

    def observe(self, endpoint: str, outcome: str, seconds: float) -> None:
        self.duration.labels(self._exchange, endpoint).observe(seconds)
        self.requests.labels(self._exchange, endpoint, str(outcome)).inc()

    def set_status(self, status: str) -> None:
        for state in self._statuses:
            self.status.labels(self._exchange, state).set(1 if state == status else 0)


class RoundProbe:
    """Probes one exchange, a round at a time, and keeps its metrics current; rounds and recovery
    checks never overlap. The incident loop (exporter/runbook/probing.py) decides when rounds run.

    Subclasses give `round_calls`, `status_of` (the first call's value as a system status),
    `check_steps`, and `quote_of` (the market the successful calls of a round or a check saw).
    `errors` are the client's exception types; each carries the call's `outcome`.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        exchange: str,
        *,
        endpoints: Iterable[str],
        statuses: Sequence[str],
        errors: tuple[type[Exception], ...],
        slow_threshold: float = 5.0,
        call_spacing: float = 1.0,
        logger: logging.Logger | None = None,
    ) -> None:
        self._exchange = exchange
        self._errors = errors
        self._slow_threshold = slow_threshold
        self._call_spacing = call_spacing
        self._logger = logger or logging.getLogger(__name__)
        self._metrics = ProbeMetrics(registry, exchange, endpoints, statuses)
        self._failures = 0
        # The outcome of the failed rounds in a row, and how many repeated it (for the logs).
        self._failed_rounds_logged: tuple[str | None, int] = (None, 0)
        # Rounds refused for their nonce, in a row: the warning is logged once per episode.
        self._nonce_episode = False
        self._lock = asyncio.Lock()
        self.last_round: RoundResult | None = None

    # What each exchange supplies.
    def round_calls(self) -> list[tuple[str, Call]]:
        raise NotImplementedError

    def status_of(self, value: Any) -> str:
        """The system status (online, maintenance, ...) from the first call's reply."""
        raise NotImplementedError

    def check_steps(self) -> list[CheckStep]:
        raise NotImplementedError

    def quote_of(self, values: dict[str, Any]) -> Quote | None:
        """The market seen by the successful calls, by endpoint; None when it says nothing."""
        return None

    # The machinery.
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
        """The runbook's recovery tests, stopping at the first failure as the runbook does;
        later checks are reported as skipped. The quote is what the passing checks read."""
        checks: list[Check] = []
        values: dict[str, Any] = {}
        async with self._lock:
            for step in self.check_steps():
                failed = next((c.name for c in checks if not c.ok), None)
                if failed is not None:
                    checks.append(Check(step.name, False, f"skipped: {failed} failed"))
                    continue
                await self._space(first=not checks)
                done = await self._call(step.endpoint, step.call)
                if done.outcome == SUCCESS:
                    values[step.endpoint] = done.value
                    checks.append(step.judge(done.value))
                else:
                    checks.append(Check(step.name, False, done.detail))
        return RecoveryResult(all(c.ok for c in checks), tuple(checks), self.quote_of(values))

    async def _round(self) -> RoundResult:
        done: list[CallResult] = []
        for endpoint, call in self.round_calls():
            await self._space(first=not done)
            done.append(await self._call(endpoint, call))
            if done[-1].outcome in ABORTING:
                break
        failures = [c for c in done if c.outcome != SUCCESS]
        status = self.status_of(done[0].value) if done[0].outcome == SUCCESS else None
        outcome = str(failures[0].outcome) if failures else SUCCESS
        values = {c.endpoint: c.value for c in done if c.outcome == SUCCESS}
        quote = self.quote_of(values) if not failures else None
        return RoundResult(not failures, outcome, tuple(done), status, quote)

    async def _space(self, *, first: bool) -> None:
        if not first and self._call_spacing > 0:
            await asyncio.sleep(self._call_spacing)

    async def _call(self, endpoint: str, call: Call) -> CallResult:
        started = time.monotonic()
        try:
            result = CallResult(endpoint, SUCCESS, await call())
        except self._errors as exc:
            # The clients' errors carry the outcome; anything else they raise is a bug, not this.
            outcome = getattr(exc, "outcome", Outcome.API_ERROR)
            result = CallResult(endpoint, outcome, detail=str(exc))
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
            if result.status not in m.statuses:
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
                extra=self._extra(outcome="invalid_nonce"),
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
        failed = next(c for c in result.calls if c.outcome != SUCCESS)
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
