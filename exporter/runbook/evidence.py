"""Evidence about an exchange, and the verdict the incident model decides on.

Evidence comes from every replica's probe rounds (one `probe_observations` row per replica,
upserted after each round) and from the platform's own calls (`api_call_logs`). `judge` turns
it into a Verdict, a pure function so that the rules read in one place:

- down: every live replica saw the API not answer `failure_threshold` rounds in a row (a
  replica that alone sees failures is isolated, not evidence), or every live replica's last
  round went unanswered while the platform's latest `platform_min_calls` calls all failed for
  want of an answer (two witnesses of the same outage: one round each is enough); with no live
  replica, the platform's latest calls all failing for want of an answer.
- healthy: every live replica's last round was answered with system status online, and the
  platform's latest calls are not failing.
- maintenance / trading_restricted: every live replica that read the system status read it;
  a replica whose last round got no answer at all (timeout, network error: its own network may
  be cut off) read nothing, whatever status its row still holds.
- rate_limited: any replica's last round, or enough of the platform's recent calls, were
  rate limited (the API answered: this lowers the call rate, it never stops purchases).

A verdict says itself in words first (`reason`, `rate_reason`: "refuses connections on 2 of 2
replicas for 18 s"), for the audit log and the operator, and then in evidence (`detail`).
`observe_round` is RECORD_SQL as a pure function, for the simulator and the tests.
"""

from __future__ import annotations

import socket
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from exporter.signals.classify import ReasonClassifier
from exporter.signals.exchange import RoundResult

# This process's name among the replicas: a restart is a new replica (the old row goes stale).
REPLICA = f"{socket.gethostname()}:{uuid.uuid4().hex[:8]}"

UNAVAILABLE_REASONS = frozenset({"exchange_unavailable", "network_timeout"})
# Round outcomes that got no answer at all: such a round read no system status.
NO_ANSWER = frozenset({"timeout", "network_error"})
MAINTENANCE = "maintenance"
# limit_only: BTC Markets takes no market orders either (signals/market_probe.py).
RESTRICTED = frozenset({"cancel_only", "post_only", "limit_only"})

RECORD_SQL = """
INSERT INTO liquid_abt.probe_observations AS o
    (exchange, replica, observed_at, available, outcome, system_status, consecutive_failures,
     failing_since, rate_limited, auth_failed)
VALUES ($1, $2, $8::timestamptz, $3, $4, $5, CASE WHEN $3 THEN 0 ELSE 1 END,
        CASE WHEN $3 THEN NULL ELSE $8::timestamptz END, $6, $7)
ON CONFLICT (exchange, replica) DO UPDATE SET
    observed_at = excluded.observed_at,
    available = excluded.available,
    outcome = excluded.outcome,
    -- An unknown status (the call failed) keeps the last one read.
    system_status = coalesce(excluded.system_status, o.system_status),
    consecutive_failures = CASE WHEN excluded.available THEN 0 ELSE o.consecutive_failures + 1 END,
    failing_since = CASE WHEN excluded.available THEN NULL
                         ELSE coalesce(o.failing_since, excluded.failing_since) END,
    rate_limited = excluded.rate_limited,
    auth_failed = excluded.auth_failed
"""

LIVE_SQL = """
SELECT replica, observed_at, available, outcome, system_status, consecutive_failures,
       failing_since, rate_limited, auth_failed
FROM liquid_abt.probe_observations
WHERE exchange = $1 AND observed_at > $3::timestamptz - make_interval(secs => $2::float8)
ORDER BY replica
"""

PLATFORM_SQL = """
SELECT success, error_message, created_at
FROM api_call_logs
WHERE provider = $1 AND created_at > $4::timestamptz - make_interval(secs => $2::float8)
ORDER BY created_at DESC
LIMIT $3
"""


@dataclass(frozen=True)
class Observation:
    """One replica's latest probe round."""

    replica: str
    observed_at: datetime
    available: bool
    outcome: str
    system_status: str | None
    consecutive_failures: int
    failing_since: datetime | None
    rate_limited: bool
    auth_failed: bool

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Observation:
        return cls(**dict(row))


@dataclass(frozen=True)
class PlatformCalls:
    """The platform's latest calls to the exchange, newest first, as reason classes (None: ok)."""

    reasons: tuple[str | None, ...]
    at: tuple[datetime, ...] = ()

    def since(self, when: datetime | None) -> PlatformCalls:
        """Only the calls made after `when`: newer probe evidence supersedes older calls (a
        paused platform makes no calls, so its last failures would otherwise linger)."""
        if when is None or not self.at:
            return self
        keep = [i for i, at in enumerate(self.at) if at > when]
        return PlatformCalls(tuple(self.reasons[i] for i in keep), tuple(self.at[i] for i in keep))

    def failing(self, min_calls: int) -> bool:
        latest = self.reasons[:min_calls]
        return len(latest) >= min_calls and all(r in UNAVAILABLE_REASONS for r in latest)

    @property
    def answered(self) -> bool:
        """Any of these calls was answered (a rate limit or an auth error is an answer)."""
        return any(r not in UNAVAILABLE_REASONS for r in self.reasons)

    def rate_limited_share(self, latest: int = 5) -> float:
        """Among the latest calls only, so the evidence clears a few calls after it stops."""
        recent = self.reasons[:latest]
        if not recent:
            return 0.0
        return sum(r == "rate_limited" for r in recent) / len(recent)


@dataclass(frozen=True)
class Verdict:
    down: bool
    healthy: bool
    status: str | None  # maintenance, cancel_only, post_only when every reader agrees
    rate_limited: bool
    isolated: bool  # this replica sees failures that another live replica does not
    voters: int
    failing_voters: int
    failing_since: datetime | None
    last_failure_at: datetime | None
    last_success_at: datetime | None
    detail: str  # the evidence, counted
    # The verdict in words, without the exchange's name: "refuses connections on 2 of 2
    # replicas for 18 s", "is in maintenance (every replica reads status maintenance)".
    reason: str = ""
    rate_reason: str = (
        ""  # why the rate is lowered ("rate limits 3 of the platform's last 5 calls")
    )

    @property
    def cause(self) -> str | None:
        """Why purchases must stop, or None."""
        if self.status == MAINTENANCE:
            return "maintenance"
        if self.down:
            return "unavailable"
        if self.status in RESTRICTED:
            return "trading_restricted"
        return None


# A failed round in words, by the outcome most failing replicas saw.
_FAILING_WORDS = {
    "network_error": "refuses connections",
    "timeout": "does not answer in time",
    "service_unavailable": "says it is unavailable",
    "server_error": "answers with server errors",
}


def duration_words(seconds: float) -> str:
    """18 s, 12 min, 3.5 h: how long, for a person reading the audit log."""
    if seconds < 120:
        return f"{max(0, round(seconds))} s"
    if seconds < 7200:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def judge(
    live: list[Observation],
    platform: PlatformCalls,
    *,
    failure_threshold: int,
    platform_min_calls: int,
    replica: str = REPLICA,
    now: datetime | None = None,
) -> Verdict:
    failing = [o for o in live if o.consecutive_failures >= failure_threshold]
    answering = [o for o in live if o.available]
    # The platform's own failing calls corroborate one unanswered round on every replica.
    corroborated = (
        bool(live) and len(failing) < len(live) and not answering
        and platform.failing(platform_min_calls)
    )  # fmt: skip
    if corroborated:
        failing = list(live)
    newest_answer = max((o.observed_at for o in answering), default=None)
    # Since when every failing replica has been failing: the newest of their starts.
    all_failing_since = max((o.failing_since for o in failing if o.failing_since), default=None)
    if live:
        # The platform vetoes "down" with any call answered since every replica was failing:
        # sporadic hangs on one replica while another is cut off are not an outage.
        down = len(failing) == len(live) and not platform.since(all_failing_since).answered
    else:
        down = platform.failing(platform_min_calls)
    statuses = {o.system_status for o in live
                if o.system_status is not None and o.outcome not in NO_ANSWER}  # fmt: skip
    status = statuses.pop() if len(statuses) == 1 else None
    healthy = (
        bool(live)
        and len(answering) == len(live)
        and status == "online"
        and not platform.since(newest_answer).failing(platform_min_calls)
    )
    mine = next((o for o in live if o.replica == replica), None)
    isolated = mine is not None and not mine.available and bool(answering)
    rate_limited = any(o.rate_limited for o in live) or platform.rate_limited_share() >= 0.1
    since = [o.failing_since for o in live if o.failing_since is not None]
    rounds = (
        f"1+ unanswered rounds, and the platform's latest {platform_min_calls} calls failed"
        if corroborated else f"{failure_threshold}+ failed rounds in a row"
    )  # fmt: skip
    detail = (
        f"{len(failing)} of {len(live)} live replicas saw {rounds}; replicas answered: {len(answering)}; status: {status or 'mixed/unknown'}; "
        f"platform's latest calls: {', '.join(r or 'ok' for r in platform.reasons) or 'none'}"
    )
    words = _Words(live, failing, answering, platform, status, platform_min_calls, now)
    return Verdict(
        down=down,
        healthy=healthy,
        status=status if status in RESTRICTED or status == MAINTENANCE else None,
        rate_limited=rate_limited,
        isolated=isolated,
        voters=len(live),
        failing_voters=len(failing),
        failing_since=min(since) if since else None,
        last_failure_at=max((o.observed_at for o in live if not o.available), default=None),
        last_success_at=max((o.observed_at for o in answering), default=None),
        detail=detail,
        reason=words.reason(down, healthy),
        rate_reason=words.rate() if rate_limited else "",
    )


@dataclass(frozen=True)
class _Words:
    live: list[Observation]
    failing: list[Observation]
    answering: list[Observation]
    platform: PlatformCalls
    status: str | None
    min_calls: int
    now: datetime | None

    def reason(self, down: bool, healthy: bool) -> str:
        n = len(self.live)
        readers = sum(o.system_status is not None and o.outcome not in NO_ANSWER
                      for o in self.live)  # fmt: skip
        if self.status == MAINTENANCE:
            return f"is in maintenance ({self._every(readers, 'reads')} status maintenance)"
        if down and self.live:
            return f"{self._failing()} on {len(self.failing)} of {n} replicas{self._for()}"
        if down:
            latest = self.platform.reasons[: self.min_calls]
            return (
                f"fails the platform's last {len(latest)} calls ({', '.join(map(str, latest))}); "
                "no replica probes it"
            )
        if self.status in RESTRICTED:
            return (
                f"accepts no market orders ({self._every(readers, 'reads')} status {self.status})"
            )
        if healthy:
            return f"answers on {n} of {n} replicas with status online"
        if not self.live:
            return "is not probed by any replica"
        return (
            f"answers on {len(self.answering)} of {n} replicas; {len(self.failing)} of {n} see it "
            f"fail; status {self.status or 'mixed or unknown'}"
        )

    def rate(self) -> str:
        limited = sum(o.rate_limited for o in self.live)
        if limited:
            return f"rate limits the probe on {limited} of {len(self.live)} replicas"
        recent = self.platform.reasons[:5]
        count = sum(r == "rate_limited" for r in recent)
        return f"rate limits {count} of the platform's last {len(recent)} calls"

    def _every(self, count: int, verb: str) -> str:
        if count == len(self.live):
            return f"every replica {verb}" if count > 1 else f"the one replica {verb}"
        return f"{count} of {len(self.live)} replicas {verb.removesuffix('s')}"

    def _failing(self) -> str:
        outcomes = Counter(o.outcome for o in self.failing)
        outcome, _ = outcomes.most_common(1)[0]
        return _FAILING_WORDS.get(outcome, "does not answer")

    def _for(self) -> str:
        starts = [o.failing_since for o in self.failing if o.failing_since is not None]
        if self.now is None or not starts:
            return ""
        return f" for {duration_words((self.now - min(starts)).total_seconds())}"


def observe_round(
    previous: Observation | None, result: RoundResult, replica: str, now: datetime
) -> Observation:
    """A replica's observation after its round: RECORD_SQL, as a pure function."""
    available = result.available
    failures = 0 if available else (previous.consecutive_failures + 1 if previous else 1)
    since = None if available else ((previous.failing_since if previous else None) or now)
    status = result.status
    if status is None and previous is not None:
        status = previous.system_status  # an unknown status keeps the last one read
    return Observation(
        replica, now, available, result.outcome, status, failures, since, result.rate_limited,
        result.auth_failed,
    )  # fmt: skip


async def record_round(
    connection: asyncpg.Connection, exchange: str, result: RoundResult, replica: str,
    now: datetime,
) -> None:  # fmt: skip
    await connection.execute(
        RECORD_SQL, exchange, replica, result.available, result.outcome, result.status,
        result.rate_limited, result.auth_failed, now,
    )  # fmt: skip


async def live_observations(
    connection: asyncpg.Connection, exchange: str, stale_after: float, now: datetime
) -> list[Observation]:
    rows = await connection.fetch(LIVE_SQL, exchange, stale_after, now)
    return [Observation.from_row(r) for r in rows]


async def platform_calls(
    connection: asyncpg.Connection,
    exchange: str,
    classifier: ReasonClassifier,
    window: float,
    now: datetime,
    limit: int = 10,
) -> PlatformCalls:
    rows = await connection.fetch(PLATFORM_SQL, exchange, window, limit, now)
    reasons = tuple(
        None if r["success"] else classifier.classify(r["error_message"] or "") for r in rows
    )
    return PlatformCalls(reasons, tuple(r["created_at"] for r in rows))
