"""The YAML configuration: strict structure, runbook defaults, one ConfigError per problem.

Durations are written the Prometheus way (`30s`, `5m`, `1h`, `1h30m`) and held as seconds.
Secrets are never part of this file: they come from the environment or from files (see secrets.py).
"""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from exporter.labels import REASON_CLASSES

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class ConfigError(Exception):
    """A configuration that cannot be used; the message lists every problem with its location."""


def parse_duration(value: Any) -> float:
    """Parse `15s`, `5m`, `1h30m` (or a bare number of seconds) into seconds."""
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and value and _DURATION_PART.sub("", value) == "":
        seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(value))
    else:
        raise ValueError(
            f"invalid duration {value!r}: use a number with a unit, like 30s, 5m or 1h"
        )
    if seconds <= 0:
        raise ValueError(f"invalid duration {value!r}: must be greater than zero")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest Prometheus-style spelling of a duration, used for the `window` label."""
    for unit in ("d", "h", "m", "s"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds * 1000)}ms"


Duration = Annotated[float, BeforeValidator(parse_duration)]


def _distinct_sorted(windows: list[float]) -> list[float]:
    if len(set(windows)) != len(windows):
        raise ValueError("windows must be distinct")
    return sorted(windows)


# The `window` label values: distinct durations, shortest first.
Windows = Annotated[list[Duration], AfterValidator(_distinct_sorted)]


DSN_SCHEMES = ("postgresql", "postgres")
_DSN_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#\s]*", re.IGNORECASE)


def dsn_password_span(dsn: str) -> tuple[int, int] | None:
    """Where the inline password of a `scheme://user:password@host/...` DSN is, if it has one.

    The user part ends at the last `@`, so a password holding an unencoded `/` or `@` (which a
    URL parser would cut short) is still found whole.
    """
    scheme_end = dsn.find("://")
    at = dsn.rfind("@")
    if scheme_end < 0 or at < scheme_end:
        return None
    colon = dsn.find(":", scheme_end + 3, at)
    return (colon + 1, at) if 0 <= colon < at - 1 else None


def dsn_problem(dsn: str) -> str | None:
    """Why a DSN cannot be used (never quoting it: it may hold a password), or None."""
    scheme = dsn.partition("://")[0] if "://" in dsn else ""
    if scheme.lower() not in DSN_SCHEMES:
        shown = f"{scheme!r}" if scheme and scheme.isalnum() else "none"
        return (
            f"not a PostgreSQL DSN (scheme {shown}): expected postgresql://user@host:5432/database"
        )
    if dsn_password_span(dsn) or _DSN_QUERY_PASSWORD.search(dsn):
        return (
            "the DSN contains a password: put it in DATABASE_PASSWORD or "
            "DATABASE_PASSWORD_FILE instead"
        )
    return None


def mask_dsn(dsn: str) -> str:
    """The DSN with any password replaced, fit for logs."""
    span = dsn_password_span(dsn)
    if span:
        dsn = dsn[: span[0]] + "***" + dsn[span[1] :]
    dsn = _DSN_QUERY_PASSWORD.sub(r"\1***", dsn)
    return re.sub(r"(password\s*=\s*)[^&\s]*", r"\1***", dsn, flags=re.IGNORECASE)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseConfig(_Model):
    # The DSN may also come from DATABASE_URL; its password only from the environment or a file.
    dsn: str | None = None
    pool_min_size: int = Field(default=0, ge=0)
    pool_max_size: int = Field(default=20, ge=2)
    connect_timeout: Duration = 5.0
    health_interval: Duration = 5.0
    # Time limits of every statement on the exporter's connections (metric queries may ask for
    # `collectors.timeout` instead): no loop waits on the database without a limit, and a row lock
    # held by a replica that lost its connection stalls the others for `lock_timeout` at most.
    statement_timeout: Duration = 5.0
    lock_timeout: Duration = 2.0

    @model_validator(mode="after")
    def _pool_bounds(self) -> DatabaseConfig:
        if self.pool_min_size > self.pool_max_size:
            raise ValueError(
                f"pool_min_size ({self.pool_min_size}) is larger than "
                f"pool_max_size ({self.pool_max_size})"
            )
        if self.lock_timeout > self.statement_timeout:
            raise ValueError(
                f"lock_timeout ({format_duration(self.lock_timeout)}) is longer than "
                f"statement_timeout ({format_duration(self.statement_timeout)})"
            )
        return self

    @field_validator("dsn")
    @classmethod
    def _postgresql_without_password(cls, dsn: str | None) -> str | None:
        if dsn:
            problem = dsn_problem(dsn)
            if problem:
                raise ValueError(problem)
        return dsn


class CollectorConfig(_Model):
    interval: Duration = 15.0
    timeout: Duration = 10.0
    # Snapshots older than this are dropped from /metrics; null keeps the last values forever.
    snapshot_expiry: Duration | None = 300.0

    @model_validator(mode="after")
    def _timeout_within_interval(self) -> CollectorConfig:
        if self.timeout > self.interval:
            raise ValueError(
                f"timeout ({format_duration(self.timeout)}) is longer than "
                f"interval ({format_duration(self.interval)}): refreshes would overlap"
            )
        return self


def _default_reason_patterns() -> dict[str, list[str]]:
    # Ordered: the first class whose pattern matches wins, so specific causes come before
    # generic words such as "timeout" or "unavailable".
    return {
        "insufficient_funds": [r"insufficient[\s_-]*(funds|balance)"],
        "invalid_amount": [
            r"invalid[\s_-]*(amount|volume|arguments:volume)",
            r"volume minimum not met",
            r"order minimum not met",
        ],
        "auth": [
            r"invalid[\s_-]*(signature|key|nonce)",
            r"permission denied",
            r"temporary lockout",
            r"unauthori[sz]ed",
            r"forbidden",
            r"authentication",
            r"\b40[13]\b",
        ],
        "rate_limited": [r"rate[\s_-]*limit", r"too many requests", r"\b429\b"],
        "maintenance": [r"maintenance", r"cancel[\s_-]*only", r"post[\s_-]*only"],
        "network_timeout": [
            r"time[\s_-]*d?[\s_-]*out",
            r"deadline elapsed",
            r"etimedout|econnreset|econnrefused|enotfound|eai_again",
            r"socket hang up",
            r"connection (refused|reset|closed|aborted|error)",
            # aiohttp's and the OS's words for a lost or refused connection
            r"server[\s_-]*disconnected",
            r"client[\s_-]*connector[\s_-]*error",
            r"cannot connect to host",
            r"name or service not known|temporary failure in name resolution",
            r"broken pipe",
            r"network",
            r"dns",
        ],
        "exchange_unavailable": [
            r"eservice:(unavailable|busy)",
            r"service unavailable",
            r"bad gateway",
            r"\b50[0234]\b",
            r"(exchange|kraken)[\s_-]*(api[\s_-]*)?(down|unavailable|error)",
            # Kraken's own 500 ("EGeneral:Internal error") and generic server errors
            r"egeneral:internal error",
            r"internal[\s_-]*(server[\s_-]*)?error",
            r"circuit[\s_-]*breaker",
            r"api[\s_-]*(error|failure)",
        ],
    }


class PurchasesConfig(_Model):
    windows: Windows = Field(default_factory=lambda: [300.0, 900.0, 3600.0], min_length=1)
    # Failure-reason classes in match order; every pattern is a case-insensitive regex.
    failure_reasons: dict[str, list[str]] = Field(default_factory=_default_reason_patterns)
    # The runbook's retry criteria.
    retry_window: Duration = 3600.0
    retry_max_count: int = Field(default=3, ge=1)
    retry_excluded_reasons: list[str] = Field(
        default_factory=lambda: ["insufficient_funds", "invalid_amount"]
    )

    @field_validator("failure_reasons")
    @classmethod
    def _known_classes_and_valid_patterns(cls, reasons: dict[str, list[str]]) -> dict:
        for name, patterns in reasons.items():
            if name not in REASON_CLASSES or name == "other":
                allowed = ", ".join(c for c in REASON_CLASSES if c != "other")
                raise ValueError(f"unknown failure reason class {name!r}: use one of {allowed}")
            for pattern in patterns:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise ValueError(f"invalid pattern {pattern!r} for {name!r}: {exc}") from exc
        return reasons

    @field_validator("retry_excluded_reasons")
    @classmethod
    def _known_excluded(cls, reasons: list[str]) -> list[str]:
        for name in reasons:
            if name not in REASON_CLASSES:
                raise ValueError(f"unknown failure reason class {name!r}")
        return reasons


class ApiCallsConfig(_Model):
    windows: Windows = Field(default_factory=lambda: [300.0, 900.0, 3600.0], min_length=1)
    # `endpoint` label values; anything else in api_call_logs counts as `other`.
    endpoints: list[str] = Field(
        default_factory=lambda: ["getCurrentPrice", "getBalance", "getOrderBook", "placeOrder"]
    )


def _base_url(url: str) -> str:
    if not re.match(r"^https?://[^/\s]+", url):
        raise ValueError(f"invalid base_url {url!r}: expected http(s)://host[:port]")
    return url.rstrip("/")


# An exchange API's base URL, without a trailing slash.
BaseUrl = Annotated[str, AfterValidator(_base_url)]


class KrakenConfig(_Model):
    base_url: BaseUrl = "https://api.kraken.com"
    # A hanging exchange costs one timeout per round: 5 s is 10 times Kraken's usual answer, and
    # keeps a round on a hanging exchange inside the stop-time targets (docs/incidents.md).
    timeout: Duration = 5.0
    # The runbook's health check runs every 30 seconds; the probe runs three times as often, so
    # an outage seen by the probe alone stops purchases within 25 s (docs/incidents.md).
    probe_interval: Duration = 10.0
    # In doubt the probe does not wait the full interval: the next round follows a failed one
    # after `doubt_interval`, and rounds follow each other every `incident_interval` while an
    # incident is open (so recovery is seen, and relapses too, within seconds).
    doubt_interval: Duration = 2.0
    incident_interval: Duration = 5.0
    # Between the calls of one round: Kraken asks for about one public call a second per IP,
    # and that IP may be the one the platform buys from.
    call_spacing: Duration = 1.0
    slow_threshold: Duration = 5.0  # the runbook warns above 5000 ms
    enabled: bool = True
    # How often its good rounds (or passing checks) refresh its row in exchange_verifications:
    # the primary's last good mid, failover's reference price.
    verify_interval: Duration = 15.0


class ExchangeSectionConfig(_Model):
    """What every probed exchange's section shares beside Kraken's: where its API is, the pair,
    the probe's cadence, and how often a secondary's recovery check refreshes its evidence."""

    enabled: bool = False
    base_url: BaseUrl
    # The exporter's spelling (BTC/AUD); each client turns it into the exchange's own.
    pair: str = "BTC/AUD"
    timeout: Duration = 5.0
    probe_interval: Duration = 10.0
    doubt_interval: Duration = 2.0
    incident_interval: Duration = 5.0
    # Between the calls of a round or check: about one call a second, as ccxt's own throttle
    # for these exchanges (docs/exchanges.md), from an IP the platform may buy from.
    call_spacing: Duration = 1.0
    slow_threshold: Duration = 5.0
    # A secondary's recovery check (status, price, balance, order book) runs this often and
    # updates liquid_abt.exchange_verifications: failover's evidence (docs/exchanges.md).
    verify_interval: Duration = 15.0

    @field_validator("pair")
    @classmethod
    def _aud_pair(cls, pair: str) -> str:
        if not re.match(r"^[A-Z]{3,5}/AUD$", pair):
            raise ValueError(
                f"invalid pair {pair!r}: BASE/AUD in upper case, like BTC/AUD (purchases are "
                "in AUD)"
            )
        return pair

    @property
    def base(self) -> str:
        """The asset bought: BTC in BTC/AUD."""
        return self.pair.partition("/")[0]


class IndependentReserveConfig(ExchangeSectionConfig):
    base_url: BaseUrl = "https://api.independentreserve.com"


class BtcMarketsConfig(ExchangeSectionConfig):
    base_url: BaseUrl = "https://api.btcmarkets.net"


ROLES = ("primary", "secondary")
# The config sections of the exchanges that can be probed, and so verified as a secondary.
PROBED_SECTIONS = ("kraken", "independentreserve", "btcmarkets")


def _exchange_roles(entries: dict[Any, Any]) -> dict[str, str]:
    """`{name: {role: primary|secondary}}` as {name: role}; ValueError naming the bad entry."""
    roles: dict[str, str] = {}
    for name, entry in entries.items():
        if not isinstance(entry, dict) or set(entry) != {"role"}:
            raise ValueError(
                f"exchanges.{name}: expected {{role: primary}} or {{role: secondary}}, "
                f"got {entry!r}"
            )
        role = entry["role"]
        if role not in ROLES:
            raise ValueError(
                f"exchanges.{name}.role: unknown role {role!r}: use primary or secondary"
            )
        roles[str(name)] = role
    primaries = [name for name, role in roles.items() if role == "primary"]
    if not primaries:
        raise ValueError("exchanges: no exchange has role primary: give exactly one")
    if len(primaries) > 1:
        raise ValueError(
            f"exchanges: {len(primaries)} exchanges have role primary ({', '.join(primaries)}): "
            "give exactly one"
        )
    return roles


class BreakerConfig(_Model):
    """Defaults for a breaker row created on first use; the admin API changes them per exchange.

    The incident model reads them: `failure_threshold` probe rounds failed in a row on every
    replica mean the exchange is down; `recovery_timeout` of unbroken health comes before a
    recovery verification; a re-open within `monitoring_window` of a close is a relapse.
    """

    failure_threshold: int = Field(default=2, ge=1)
    recovery_timeout: Duration = 30.0
    monitoring_window: Duration = 600.0


class IncidentConfig(_Model):
    """The incident model's patience (exporter/runbook/incident/)."""

    # Health after a verified recovery before purchases resume (breaker closed, still paused).
    probation: Duration = 90.0
    # The wait before verifying again after a relapse or a failed verification doubles each
    # time, from `recovery_timeout`, up to this.
    backoff_max: Duration = 600.0
    # A replica whose last probe round is older than this no longer votes (gone or cut off):
    # longer than a steady probe interval plus a round, short enough that a killed replica's
    # last vote does not hold back a decision for long.
    replica_stale_after: Duration = 60.0
    # The API rate comes back once no call was rate limited for this long.
    rate_restore_after: Duration = 20.0
    # Platform calls (api_call_logs) read as evidence: this recent, at least this many.
    platform_window: Duration = 60.0
    platform_min_calls: int = Field(default=3, ge=1)

    @model_validator(mode="after")
    def _positive(self) -> IncidentConfig:
        for name in ("probation", "backoff_max", "replica_stale_after", "platform_window"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be above 0")
        return self


class FailoverConfig(_Model):
    """Failover: while the primary's incident stops purchases, route them to a verified secondary
    (exporter/runbook/incident/routing.py; docs/failover.md). Off unless `exchanges` gives an
    exchange the role secondary.

    The roles in `exchanges` are the one place that names the primary and the secondaries; the
    config fills `primary` and `secondaries` from them once it is read."""

    # Off by default; on once a secondary is configured, unless set to false.
    enabled: bool | None = None
    # The secondaries purchases may be routed to, most preferred first: a reordering of the
    # exchanges with role secondary (default: all of them, in the order `exchanges` names them).
    secondaries: list[str] = Field(default_factory=list)
    # A secondary may take purchases only while its latest passing check is this recent.
    verified_within: Duration = 60.0
    # Its best ask within this fraction of the reference price (0.015: 1.5 %).
    max_price_deviation: float = Field(default=0.015, gt=0, lt=1)
    # The primary's last good mid is the reference for this long; after it, the median mid of
    # the configured exchanges whose checks are this recent, when at least
    # `reference_min_sources` of them answer.
    reference_max_age: Duration = 600.0
    reference_min_sources: int = Field(default=2, ge=1)

    # The exchange whose purchases are routed while its incident stops them: the one with role
    # primary (None when the list form of `exchanges` names several: no failover).
    _primary: str | None = PrivateAttr(default=None)

    @property
    def primary(self) -> str | None:
        return self._primary

    @property
    def active(self) -> bool:
        """Whether purchases may be routed at all."""
        return bool(self.secondaries) and self._primary is not None and self.enabled is not False

    def resolved(self, primary: str | None, secondaries: list[str]) -> FailoverConfig:
        """This section with the roles' primary, and the roles' secondaries where none is named."""
        copy = self.model_copy(update={"secondaries": self.secondaries or secondaries})
        copy._primary = primary
        return copy

    @field_validator("secondaries")
    @classmethod
    def _distinct_names(cls, names: list[str]) -> list[str]:
        for name in names:
            if not _LABEL_VALUE.match(name) or name in ("other", "none", "primary", "auto"):
                raise ValueError(
                    f"invalid secondary {name!r}: lower-case letters, digits and _, not "
                    "'other', 'none', 'primary' or 'auto'"
                )
        if len(set(names)) != len(names):
            raise ValueError(f"secondaries must be distinct, got {', '.join(names)}")
        return names


class RetryConfig(_Model):
    """Exponential backoff of queued purchases: base * factor^attempt, jittered, capped."""

    base_delay: Duration = 60.0
    factor: float = Field(default=2.0, ge=1.0)
    max_delay: Duration = 3600.0  # the runbook's maxRetryDelay: 1 hour
    jitter: float = Field(default=0.2, ge=0.0, le=1.0)
    max_attempts: int = Field(default=3, ge=1)  # the runbook retries at most 3 times
    # How often every replica queues the failed purchases that became retry-eligible since
    # (runbook/retry_filler.py): the longest a failure waits to be queued, whatever fires.
    fill_interval: Duration = Field(default=5.0, gt=0)
    # Finished queue entries (succeeded, failed, cancelled) older than this are deleted.
    retention: Duration = 30 * 86400.0


ACTIONS = ("open_breaker", "pause_purchases", "queue_retries", "lower_api_rate")


def _default_actions() -> dict[str, list[str]]:
    # Firing does the action; resolved undoes it once recovery is verified (see actions.py).
    outage = ["open_breaker", "pause_purchases", "queue_retries"]
    return {
        "ExchangeApiDown": outage,
        "ExchangeMaintenance": outage,
        # cancel_only / post_only: market buys cannot go through, the API itself is fine.
        "ExchangeTradingRestricted": ["pause_purchases", "queue_retries"],
        "BitcoinPurchaseFailureRateHigh": ["queue_retries"],
        "ExchangeApiRateLimited": ["lower_api_rate"],
    }


class ReceiverConfig(_Model):
    path: str = "/webhook/alertmanager"
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    # Record what would be done, change nothing.
    dry_run: bool = False
    # Alert name -> actions; alerts not listed are recorded and otherwise ignored.
    actions: dict[str, list[str]] = Field(default_factory=_default_actions)
    pause_estimated_duration: str = "30 minutes"
    lowered_rate_multiplier: float = Field(default=0.5, gt=0, le=1)  # the runbook's 50%
    # Alertmanager v2 API, to resume when a resolved notification was lost; optional.
    alertmanager_url: str | None = None
    reconcile_interval: Duration = 60.0
    # The notification work queue: a transient failure is retried after 1 s, 2 s, 4 s ... up
    # to `retry_max_delay`; after `max_attempts` the alert state is dead-lettered (an alert
    # fires) so it never holds back the states recorded after it.
    max_attempts: int = Field(default=8, ge=1)
    retry_max_delay: Duration = 60.0
    # Processed notifications older than this are deleted (the audit log keeps what was done).
    retention: Duration = 7 * 86400.0

    @field_validator("actions")
    @classmethod
    def _known_actions(cls, actions: dict[str, list[str]]) -> dict[str, list[str]]:
        for alertname, names in actions.items():
            for name in names:
                if name not in ACTIONS:
                    raise ValueError(
                        f"unknown action {name!r} for alert {alertname!r}: use {', '.join(ACTIONS)}"
                    )
        return actions

    @field_validator("path")
    @classmethod
    def _absolute_path(cls, path: str) -> str:
        if not path.startswith("/") or path.startswith(("/api/admin", "/metrics", "/-/")):
            raise ValueError(
                f"invalid webhook path {path!r}: absolute, outside the other endpoints"
            )
        return path


class AdminConfig(_Model):
    # Longest start-to-end range of one impact report: it bounds the query over
    # bitcoin_purchases; a longer review is several reports.
    impact_report_max_range: Duration = 31 * 86400.0


# The kinds of customer notices (the runbooks' "Customer Communication"), and the template
# variants for an incident whose purchases continue on a secondary exchange (failover).
NOTICE_KINDS = ("incident_started", "incident_ongoing", "incident_resolved", "purchase_failed")
NOTICE_TEMPLATES = (*NOTICE_KINDS, "incident_started_routed", "incident_ongoing_routed")
NOTICE_CHANNELS = ("app_notification", "email")
# What a template may name, in braces: the planner fills every one, the others are refused.
NOTICE_FIELDS = (
    "exchange", "routed_to", "estimated_resolution", "next_retry", "support_contact", "started_at",
)  # fmt: skip
_BOTH = ["app_notification", "email"]


class NoticeTemplate(_Model):
    channels: list[str] = Field(min_length=1)
    message: str = Field(min_length=1)

    @field_validator("channels")
    @classmethod
    def _known_channels(cls, channels: list[str]) -> list[str]:
        for name in channels:
            if name not in NOTICE_CHANNELS:
                raise ValueError(f"unknown channel {name!r}: use {', '.join(NOTICE_CHANNELS)}")
        return channels

    @field_validator("message")
    @classmethod
    def _known_fields(cls, message: str) -> str:
        try:
            names = [
                name for _, name, _, _ in string.Formatter().parse(message) if name is not None
            ]
        except ValueError as exc:
            raise ValueError(f"invalid template {message!r}: {exc}") from None
        for name in names:
            if name not in NOTICE_FIELDS:
                raise ValueError(
                    f"unknown field {{{name}}} in template {message!r}: use "
                    + ", ".join(f"{{{f}}}" for f in NOTICE_FIELDS)
                )
        return message


def _default_templates() -> dict[str, NoticeTemplate]:
    # The runbooks' wording (exchange-api-failures.md "Customer Communication"; the purchase
    # runbook's bitcoin_purchase_failure with nextRetry and supportContact).
    started = (
        "We are experiencing temporary issues with Bitcoin purchases. Your funds are safe and we "
        "are working to resolve this quickly."
    )
    return {
        "incident_started": NoticeTemplate(channels=_BOTH, message=started),
        "incident_ongoing": NoticeTemplate(
            channels=["app_notification"],
            message="Bitcoin purchase services remain temporarily unavailable. Estimated "
            "resolution: {estimated_resolution}",
        ),
        "incident_resolved": NoticeTemplate(
            channels=_BOTH,
            message="Bitcoin purchase services have been restored. Thank you for your patience.",
        ),
        "purchase_failed": NoticeTemplate(
            channels=_BOTH,
            message="Your Bitcoin purchase could not be completed. Your funds are safe: we will "
            "retry it automatically ({next_retry}). Questions? Contact {support_contact}.",
        ),
        "incident_started_routed": NoticeTemplate(
            channels=_BOTH,
            message="We are experiencing temporary issues with one of our Bitcoin exchanges. "
            "Your purchases continue on {routed_to}, and your funds are safe.",
        ),
        "incident_ongoing_routed": NoticeTemplate(
            channels=["app_notification"],
            message="Your Bitcoin purchases continue on {routed_to} while {exchange} remains "
            "unavailable. Estimated resolution: {estimated_resolution}",
        ),
    }


class NoticesConfig(_Model):
    """Customer notices (exporter/runbook/notices/, docs/customer-notices.md)."""

    enabled: bool = True
    # incident_started is ready once purchases have been stopped this long (an incident that
    # resumes sooner tells nobody): with the planner's interval, within 60 s of the stop.
    started_after: Duration = 45.0
    ongoing_every: Duration = 1800.0  # the runbook's "every 30 minutes"
    # A tenant whose failed purchase succeeded on retry within this gets no purchase_failed.
    blip: Duration = 300.0
    # A closed incident stays in the planner's view this long (purchase_failed after the blip).
    follow_up: Duration = 900.0
    # How often every replica plans while an incident is in view; when none is, one cheap read
    # every `idle_interval`.
    interval: Duration = 5.0
    idle_interval: Duration = 10.0
    support_contact: str = Field(default="support@liquidtreasury.business", min_length=1)
    # New notices wait for an operator's `admin notices release` (state held) instead of queued.
    hold_new: bool = False
    # The notifier's side (docs/platform-integration.md section 5): a claim not completed within
    # `claim_lease` comes back; a notice that failed `max_attempts` times is dead (state failed).
    claim_lease: Duration = 300.0
    max_attempts: int = Field(default=5, ge=1)
    retry_base_delay: Duration = 30.0
    retry_max_delay: Duration = 1800.0
    # The CustomerNoticesNotConsumed alert's delay is in alerts/; finished notices (sent,
    # failed, cancelled) older than this are deleted.
    retention: Duration = 90 * 86400.0
    templates: dict[str, NoticeTemplate] = Field(default_factory=_default_templates)
    # Optional push: every replica claims ready notices and POSTs each, signed (HMAC-SHA256 of
    # the body, key in LIQUID_ABT_NOTICES_WEBHOOK_SECRET), to this URL; a notifier that prefers
    # a push sets it and does not claim (docs/customer-notices.md).
    webhook_url: str | None = None
    webhook_timeout: Duration = 10.0

    @field_validator("webhook_url")
    @classmethod
    def _webhook_http_url(cls, url: str | None) -> str | None:
        if url is not None and not re.match(r"^https?://[^/\s]+", url):
            raise ValueError(f"invalid webhook_url {url!r}: expected http(s)://host/path")
        return url

    @field_validator("templates")
    @classmethod
    def _complete_templates(cls, templates: dict[str, NoticeTemplate]) -> dict:
        unknown = sorted(set(templates) - set(NOTICE_TEMPLATES))
        if unknown:
            raise ValueError(f"unknown template {unknown[0]!r}: use {', '.join(NOTICE_TEMPLATES)}")
        # A partial `templates:` section overrides only what it names.
        return {**_default_templates(), **templates}

    @model_validator(mode="after")
    def _consistent(self) -> NoticesConfig:
        if self.follow_up <= self.blip:
            raise ValueError(
                f"follow_up ({format_duration(self.follow_up)}) must be longer than blip "
                f"({format_duration(self.blip)}): purchase_failed is planned after the blip"
            )
        if self.started_after >= self.ongoing_every:
            raise ValueError(
                f"started_after ({format_duration(self.started_after)}) must be shorter than "
                f"ongoing_every ({format_duration(self.ongoing_every)})"
            )
        if self.retry_base_delay > self.retry_max_delay:
            raise ValueError(
                f"retry_base_delay ({format_duration(self.retry_base_delay)}) is longer than "
                f"retry_max_delay ({format_duration(self.retry_max_delay)})"
            )
        return self


# Where the shipped alerts' runbook_url points unless Prometheus' runbook_base_url overrides it.
DEFAULT_RUNBOOK_BASE = "https://github.com/liquid-abt/liquid-abt-exporter/blob/main/docs/runbooks"


class WebConfig(_Model):
    # Where the landing page's "Documentation" link points (the README and docs/ of this
    # exporter, as your team publishes them); without one the page names the files instead.
    docs_url: str | None = None
    # The runbooks the landing page links each state and firing alert to: the base of the
    # alerts' `runbook_url` (Prometheus' `runbook_base_url` external label, when you set one).
    runbook_base_url: str = DEFAULT_RUNBOOK_BASE

    @field_validator("docs_url", "runbook_base_url")
    @classmethod
    def _http_url(cls, url: str | None, info: ValidationInfo) -> str | None:
        if url is not None and not re.match(r"^https?://[^/\s]+", url):
            raise ValueError(f"invalid {info.field_name} {url!r}: expected http(s)://host/path")
        return url.rstrip("/") if url is not None and info.field_name == "runbook_base_url" else url


# The multi-window, multi-burn-rate alerts (the Google SRE workbook's): the fastest burn the
# alerts look for. An objective whose budget this burn cannot reach (above 100 % failing) would
# never page.
FASTEST_BURN = 14.4
# The longest window a burn-rate alert reads; the period must hold it.
LONGEST_ALERT_WINDOW = 3 * 86400.0
# Every SLO window is derived from this purchase window (exporter/slo.py says how).
SLO_BASE_WINDOW = 300.0


class PurchaseObjective(_Model):
    """`objective` percent of the settled purchases on `exchanges` succeed over `period`."""

    # None: every exchange no other objective names (exchanges added later included).
    exchanges: list[str] | None = Field(default=None, min_length=1)
    # A healthy day fails about 1.5 % of purchases (the drill's `normal` scenario): 98 leaves
    # it a quarter of the budget spare; 99 would be spent by healthy days alone.
    objective: float = Field(default=98.0, gt=0, lt=100)
    period: Duration = 30 * 86400.0
    # Burn-rate alerts need this many settled purchases in their long window (the runbook
    # alerts' volume guard): one failure in two night-time purchases pages nobody.
    min_settled: int = Field(default=10, ge=1)

    @field_validator("objective")
    @classmethod
    def _reachable_by_the_fast_burn(cls, objective: float) -> float:
        lowest = 100 - 100 / FASTEST_BURN
        if objective < lowest:
            raise ValueError(
                f"objective {objective:g} leaves an error budget of {100 - objective:g}%: a "
                f"{FASTEST_BURN:g}x burn would need more than every purchase to fail; use "
                f"{lowest:.2f} or more"
            )
        return objective

    @field_validator("period")
    @classmethod
    def _holds_the_alert_windows(cls, period: float) -> float:
        if period < LONGEST_ALERT_WINDOW or period % SLO_BASE_WINDOW:
            raise ValueError(
                f"period {format_duration(period)}: a whole number of 5m, at least the "
                f"{format_duration(LONGEST_ALERT_WINDOW)} window of the slowest burn alert"
            )
        return period


class SloConfig(_Model):
    """Service level objectives; `liquid-abt-exporter slo-rules` turns them into rules."""

    purchases: list[PurchaseObjective] = Field(default_factory=lambda: [PurchaseObjective()])

    @field_validator("purchases")
    @classmethod
    def _one_objective_per_exchange(
        cls, objectives: list[PurchaseObjective]
    ) -> list[PurchaseObjective]:
        named = [name for o in objectives for name in o.exchanges or []]
        twice = sorted({name for name in named if named.count(name) > 1})
        if twice:
            raise ValueError(f"exchange {twice[0]!r} has more than one objective")
        if sum(o.exchanges is None for o in objectives) > 1:
            raise ValueError("more than one objective without exchanges: name them on all but one")
        return objectives


_LABEL_VALUE = re.compile(r"^[a-z][a-z0-9_]*$")


class Config(_Model):
    exchanges: list[str] = Field(default_factory=lambda: ["kraken"], min_length=1)
    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    collectors: CollectorConfig = Field(default_factory=CollectorConfig)
    purchases: PurchasesConfig = Field(default_factory=PurchasesConfig)
    api_calls: ApiCallsConfig = Field(default_factory=ApiCallsConfig)
    kraken: KrakenConfig = Field(default_factory=KrakenConfig)
    independentreserve: IndependentReserveConfig = Field(default_factory=IndependentReserveConfig)
    btcmarkets: BtcMarketsConfig = Field(default_factory=BtcMarketsConfig)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)
    incident: IncidentConfig = Field(default_factory=IncidentConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    failover: FailoverConfig = Field(default_factory=FailoverConfig)
    receiver: ReceiverConfig = Field(default_factory=ReceiverConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    web: WebConfig = Field(default_factory=WebConfig)
    slo: SloConfig = Field(default_factory=SloConfig)
    notices: NoticesConfig = Field(default_factory=NoticesConfig)

    # Each exchange's role: every listed exchange is primary in the list form of `exchanges`.
    _roles: dict[str, str] = PrivateAttr(default_factory=dict)

    @model_validator(mode="wrap")
    @classmethod
    def _roles_of_exchanges(cls, data: Any, handler: ModelWrapValidatorHandler[Config]) -> Config:
        """`exchanges` is a list of names (all primary) or a mapping of names to roles."""
        roles: dict[str, str] | None = None
        if isinstance(data, dict) and isinstance(data.get("exchanges"), dict):
            roles = _exchange_roles(data["exchanges"])
            data = {**data, "exchanges": list(roles)}
        config = handler(data)
        config._roles = roles or dict.fromkeys(config.exchanges, "primary")
        config._secondaries_are_probed()
        config._failover_follows_roles()
        return config

    def _failover_follows_roles(self) -> None:
        """Fill failover's primary and secondaries from the roles; a named order must name
        secondaries only."""
        for index, name in enumerate(self.failover.secondaries):
            if name not in self.secondaries:
                raise ValueError(
                    f"failover.secondaries.{index}: {name!r} is not a secondary exchange: give "
                    f"it the role in exchanges ({{{name}: {{role: secondary}}}})"
                )
        if self.failover.enabled and not self.secondaries:
            raise ValueError(
                "failover: enabled is true but no secondary is configured: give one the role "
                "secondary in exchanges (e.g. independentreserve: {role: secondary}), or set "
                "enabled to false"
            )
        object.__setattr__(self, "failover", self.failover.resolved(self.primary, self.secondaries))

    @model_serializer(mode="wrap")
    def _dump_roles(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """A dump says the roles as the file did (a reload sees a changed role; a dump parses
        back to the same config)."""
        data: dict[str, Any] = handler(self)
        if self.secondaries:
            data["exchanges"] = {name: {"role": role} for name, role in self._roles.items()}
        return data

    def _secondaries_are_probed(self) -> None:
        for name in self.secondaries:
            section = getattr(self, name) if name in PROBED_SECTIONS else None
            if section is None:
                raise ValueError(
                    f"exchanges.{name}: a secondary is probed and verified: use one of "
                    f"{', '.join(PROBED_SECTIONS)}"
                )
            if not section.enabled:
                raise ValueError(
                    f"exchanges.{name}: role secondary but {name}.enabled is false: enable its "
                    f"section ({name}: {{enabled: true}})"
                )

    def roles(self) -> dict[str, str]:
        """Each configured exchange's role (primary or secondary), in config order."""
        return dict(self._roles)

    @property
    def primary(self) -> str | None:
        """The one primary exchange; None when the list form names several (no failover)."""
        primaries = [name for name, role in self._roles.items() if role == "primary"]
        return primaries[0] if len(primaries) == 1 else None

    @property
    def secondaries(self) -> list[str]:
        """The exchanges purchases may fail over to, in config order (none in the list form)."""
        return [name for name, role in self._roles.items() if role == "secondary"]

    @model_validator(mode="after")
    def _probed_exchange_is_known(self) -> Config:
        for name in PROBED_SECTIONS:
            if getattr(self, name).enabled and name not in self.exchanges:
                raise ValueError(
                    f"{name}.enabled is true but {name!r} is not in exchanges: add it, or "
                    "disable the probe"
                )
        return self

    @model_validator(mode="after")
    def _objectives_have_their_series(self) -> Config:
        for index, objective in enumerate(self.slo.purchases):
            for name in objective.exchanges or []:
                if name not in self.exchanges:
                    raise ValueError(
                        f"slo.purchases.{index}.exchanges: unknown exchange {name!r}: "
                        f"not in exchanges ({', '.join(self.exchanges)})"
                    )
        if self.slo.purchases and SLO_BASE_WINDOW not in self.purchases.windows:
            served = ", ".join(format_duration(w) for w in self.purchases.windows)
            raise ValueError(
                f"slo.purchases: the objectives are derived from the 5m purchase window: add 5m "
                f"to purchases.windows (got {served}), or set slo.purchases to [] for none"
            )
        return self

    @field_validator("exchanges")
    @classmethod
    def _exchange_names(cls, names: list[str]) -> list[str]:
        for name in names:
            if not _LABEL_VALUE.match(name) or name == "other":
                raise ValueError(
                    f"invalid exchange name {name!r}: lower-case letters, digits and _, not 'other'"
                )
        if len(set(names)) != len(names):
            raise ValueError("exchanges must be distinct")
        return names


_SENSITIVE = {"dsn"}


def _location(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def _describe(error: Any) -> str:
    where = _location(error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return f"{where}: unknown key"
    if error["type"] in ("missing",):
        return f"{where}: required"
    bad = error.get("input")
    if error["loc"] and error["loc"][-1] in _SENSITIVE:
        return f"{where}: {message}"  # the value may hold a password: never echo it
    if bad is not None and not isinstance(bad, dict | list) and repr(bad) not in message:
        return f"{where}: {message} (got {bad!r})"
    return f"{where}: {message}"


def parse_config(data: Any, source: str = "config") -> Config:
    """Validate a decoded YAML document."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(data).__name__}")
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        problems = "\n".join(f"  {_describe(e)}" for e in exc.errors())
        raise ConfigError(f"{source}: invalid configuration:\n{problems}") from None


def read_utf8(path: Path) -> str:
    """The file's text; UnicodeDecodeError (see `not_utf8`) when it is not UTF-8."""
    return path.read_bytes().decode("utf-8")


def not_utf8(exc: UnicodeDecodeError) -> str:
    """Where a file stops being UTF-8, for an error message: the byte, its offset, line and column
    (an editor's way to find it), never the text around it (it may hold a secret)."""
    data = bytes(exc.object)
    line = data.count(b"\n", 0, exc.start) + 1
    column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
    return (
        f"not UTF-8: byte 0x{data[exc.start]:02x} at position {exc.start} "
        f"(line {line}, column {column}); save the file as UTF-8"
    )


def load_config(path: Path | None) -> Config:
    """Read and validate the config file; no file means all defaults."""
    if path is None:
        return Config()
    try:
        text = read_utf8(path)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: {not_utf8(exc)}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_config(data, str(path))
