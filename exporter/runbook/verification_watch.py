"""Keeps failover's evidence fresh: each secondary's recovery check every `verify_interval`, and
the primary's last good market, in liquid_abt.exchange_verifications (controls/verifications.py).

Every replica runs the watch; whichever is due first writes, the others skip the write (and
learn when the row is next due), so the database sees about one statement per exchange and
interval from each replica, and one write per interval in all. A secondary's check is the same
recovery check the incident model verifies with (status, price, balance with a read-only key,
order book), with the quote failover's guards read. The primary is not checked here (its probe
already calls it every few seconds, and Kraken limits calls per IP): its good probe rounds and
passing recovery checks are noted as they happen (`ObservedProbe`) and written when due, so its
row holds its last good mid through an outage.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import asyncpg
from prometheus_client import CollectorRegistry, Gauge

from exporter.controls import verifications
from exporter.controls.verifications import Evidence, RowState
from exporter.database.background import Wakeup, run_forever
from exporter.signals.exchange import Check, Probe, RecoveryResult, RoundResult

log = logging.getLogger(__name__)

# Another replica's row younger than this share of the interval is fresh enough: skip the write.
SKIP_SHARE = 0.8
# Spread replicas' checks over this share of the interval after the row is due.
JITTER_SHARE = 0.1
# Between steps when nothing is due sooner (a lost schedule costs at most this).
LONGEST_SLEEP = 60.0

Clock = Callable[[], float]


@dataclass
class Target:
    """One exchange the watch keeps fresh: a secondary with its `check`, or a primary (noted)."""

    exchange: str
    interval: float
    # A secondary's recovery check and its time limit; None for a primary.
    check: Callable[[], Awaitable[RecoveryResult]] | None = None
    time_limit: float = 30.0
    due: float = 0.0  # monotonic time of the next attempt
    noted: Evidence | None = field(default=None, repr=False)
    noted_at: float = 0.0  # monotonic time the noted evidence was seen
    last_ok: bool | None = None  # the shared row's `ok` as last seen, for the logs


ROLES = ("primary", "secondary")


class VerificationMetrics:
    """The verification families of docs/metrics.md: the shared row's state, pre-initialised,
    and each exchange's role (so that rules and dashboards can tell a secondary's outage)."""

    def __init__(self, registry: CollectorRegistry, roles: Mapping[str, str]) -> None:
        role = Gauge(
            "liquid_abt_exchange_role",
            "The exchange's role in the config as a state set: 1 for its role (a secondary is "
            "where purchases may fail over to).",
            ["exchange", "role"], registry=registry,
        )  # fmt: skip
        for exchange, configured in roles.items():
            for name in ROLES:
                role.labels(exchange, name).set(1 if name == configured else 0)
        exchanges = list(roles)
        self.verified = Gauge(
            "liquid_abt_exchange_verified_timestamp_seconds",
            "Unix time of the exchange's newest passing verification (failover's evidence; the "
            "primary's newest good market), as the shared row says; 0 before the first.",
            ["exchange"], registry=registry,
        )  # fmt: skip
        self.ok = Gauge(
            "liquid_abt_exchange_verification_ok",
            "1 when the exchange's newest verification passed, as the shared row says.",
            ["exchange"], registry=registry,
        )  # fmt: skip
        for exchange in exchanges:
            self.verified.labels(exchange)
            self.ok.labels(exchange)

    def set(self, exchange: str, state: RowState) -> None:
        self.ok.labels(exchange).set(1 if state.ok else 0)
        self.verified.labels(exchange).set(state.verified or 0)


class VerificationWatch:
    """One loop for every configured secondary and the primary; `step()` is one pass."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        replica: str,
        targets: Sequence[Target],
        metrics: VerificationMetrics,
        *,
        clock: Clock = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._pool = pool
        self._replica = replica
        self._targets = {t.exchange: t for t in targets}
        self._metrics = metrics
        self._clock = clock
        self._rng = rng or random.Random()
        self._wakeup = Wakeup()

    @property
    def exchanges(self) -> list[str]:
        return list(self._targets)

    def note(self, exchange: str, evidence: Evidence) -> None:
        """Good evidence of a primary, as it happens (a good round, a passing check); the loop
        wakes when the row is due and was waiting for it."""
        target = self._targets.get(exchange)
        if target is not None and target.check is None and evidence.ok:
            target.noted, target.noted_at = evidence, self._clock()
            if target.due <= target.noted_at:
                self._wakeup.wake()

    async def step(self) -> float:
        """Check and write every exchange that is due; seconds until the next one is (a due
        primary with nothing new waits for its next good evidence, which wakes the loop)."""
        now = self._clock()
        due = [t for t in self._targets.values() if t.due <= now]
        await asyncio.gather(*(self._refresh(t) for t in due))
        now = self._clock()
        waiting = [t.due - now for t in self._targets.values() if t.due > now]
        return min(min(waiting, default=LONGEST_SLEEP), LONGEST_SLEEP)

    async def run(self) -> None:
        await run_forever("verification-watch", self.step, wakeup=self._wakeup, retry_after=5.0)

    async def _refresh(self, target: Target) -> None:
        noted = target.noted
        evidence = await self._evidence(target)
        if evidence is None:  # a primary with nothing new since the last write: stays due
            return
        state = await verifications.record(
            self._pool, target.exchange, self._replica, evidence,
            skip_within=target.interval * SKIP_SHARE,
        )  # fmt: skip
        newer_row = state.written or state.age <= evidence.age
        if target.check is None and newer_row and target.noted is noted:
            target.noted = None  # written, or another replica's row is newer: nothing to add
        self._metrics.set(target.exchange, state)
        jitter = self._rng.uniform(0, JITTER_SHARE * target.interval)
        target.due = self._clock() + max(target.interval - state.age, 0.0) + jitter
        self._log_change(target, evidence, state)

    def _log_change(self, target: Target, evidence: Evidence, state: RowState) -> None:
        """One line when the shared row turns failed, one when it passes again."""
        if state.ok == target.last_ok:
            return
        if not state.ok:
            checks = _failed(evidence.checks) if state.written else "(another replica's check)"
            log.warning(
                "exchange verification failed: not a failover target until it passes",
                extra={"exchange": target.exchange, "checks": checks},
            )
        elif target.last_ok is not None:
            log.info("exchange verification passes again", extra={"exchange": target.exchange})
        target.last_ok = state.ok

    async def _evidence(self, target: Target) -> Evidence | None:
        if target.check is None:
            if target.noted is None:
                return None
            age = self._clock() - target.noted_at
            return Evidence(True, target.noted.checks, target.noted.quote, age)
        try:
            async with asyncio.timeout(target.time_limit):
                result = await target.check()
        except TimeoutError:
            detail = f"no answer within {target.time_limit:g}s"
            return Evidence(False, (Check("verifier", False, detail),), None)
        return Evidence(result.ok, result.checks, result.quote)


def _failed(checks: Iterable[Check]) -> str:
    return "; ".join(f"{c.name}: {c.detail}" for c in checks if not c.ok)


class ObservedProbe:
    """A primary's probe, unchanged, that tells the watch of its good rounds and passing checks:
    the incident loop runs it as ever, and the watch writes the primary's last good market."""

    def __init__(self, probe: Probe, exchange: str, watch: VerificationWatch) -> None:
        self._probe = probe
        self._exchange = exchange
        self._watch = watch

    async def run_once(self) -> RoundResult:
        result = await self._probe.run_once()
        if result.ok and result.quote is not None:
            detail = "good probe round: " + ", ".join(c.endpoint for c in result.calls)
            check = Check("probe_round", True, detail)
            self._watch.note(self._exchange, Evidence(True, (check,), result.quote))
        return result

    async def recovery_check(self) -> RecoveryResult:
        result = await self._probe.recovery_check()
        if result.ok and result.quote is not None:
            self._watch.note(self._exchange, Evidence(True, result.checks, result.quote))
        return result
