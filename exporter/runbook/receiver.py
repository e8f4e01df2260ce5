"""The Alertmanager webhook: authenticate, validate, record durably, answer fast.

Alertmanager semantics this module respects:
- every notification is a full snapshot of a group; each alert is recorded with its own status;
- the same notification arrives again (repeat_interval, HA peers, retries): each alert is
  recorded once per (fingerprint, status, startsAt), enforced by a unique constraint;
- 2xx once recorded, 400 for payloads that a retry cannot fix, 401 without credentials, 413 for
  bodies over the limit, 503 only when a retry can help (the database is away), so that
  Alertmanager retries exactly what may succeed later.

One bad alert does not cost the others: each alert is validated on its own (lengths, types,
values PostgreSQL can store) and the valid ones are recorded; the answer is 200 and names every
refused alert, the audit log keeps a row per refusal. Alertmanager does not retry a 4xx, so
refusing the whole notification would drop the valid alerts in it for good. Only a notification
whose envelope is wrong, or whose every alert is refused, is answered 400 and changes nothing.

The runbook actions run afterwards, in the background (worker.py), from the recorded rows.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import asyncpg
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
)

from exporter.controls import audit
from exporter.database.pool import DATABASE_ERRORS
from exporter.database.transactions import transaction
from exporter.secrets import Secrets

log = logging.getLogger(__name__)

RESULTS = ("accepted", "duplicate", "partial", "invalid", "unauthorized", "too_large", "error")

# Lengths in characters. Alertmanager's fingerprints are 16 hex digits; the bounds keep every
# stored key far below PostgreSQL's limit for one index entry (2,704 bytes), even in 4-byte
# UTF-8, for the unique (fingerprint, status, startsAt) key and for indexes on name and exchange.
MAX_FINGERPRINT = 128
MAX_ALERTNAME = 200
MAX_EXCHANGE = 100
MAX_LABEL_NAME = 200
MAX_LABEL_VALUE = 4096
MAX_GROUP_KEY = 16384
# The summary becomes the pause reason people read; a longer one is cut, not refused.
MAX_SUMMARY = 1000
MAX_INT4 = 2**31 - 1


def _storable(text: str) -> str:
    """PostgreSQL's text and jsonb refuse NUL characters and text that is not UTF-8."""
    if "\x00" in text:
        raise ValueError("contains a NUL character, which PostgreSQL cannot store")
    try:
        text.encode()
    except UnicodeEncodeError:
        raise ValueError("is not valid UTF-8 (a lone surrogate)") from None
    return text


def _check_label(name: str, value: str) -> None:
    where = _shorten(name, 40)
    if len(name) > MAX_LABEL_NAME:
        raise ValueError(f"label name {where} is longer than {MAX_LABEL_NAME} characters")
    if len(value) > MAX_LABEL_VALUE:
        raise ValueError(
            f"label {where} is longer than {MAX_LABEL_VALUE} characters ({len(value)})"
        )
    for text, what in ((name, "label name"), (value, f"label {where}")):
        try:
            _storable(text)
        except ValueError as exc:
            raise ValueError(f"{what} {exc}") from None


def _label_set(labels: dict[str, str]) -> dict[str, str]:
    for name, value in labels.items():
        _check_label(name, value)
    alertname = labels.get("alertname")
    if not alertname:
        raise ValueError("alertname is missing")
    if len(alertname) > MAX_ALERTNAME:
        raise ValueError(f"alertname is longer than {MAX_ALERTNAME} characters")
    if len(labels.get("exchange", "")) > MAX_EXCHANGE:
        raise ValueError(f"exchange is longer than {MAX_EXCHANGE} characters")
    return labels


def _in_utc(value: datetime) -> datetime:
    """Stored as timestamptz: the time must exist in UTC too (year 1 at +14:00 does not)."""
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of the range of dates") from None


def _end(value: datetime | None) -> datetime | None:
    # Alertmanager sends 0001-01-01T00:00:00Z for "no end yet".
    if value is None or value.year <= 1:
        return None
    return _in_utc(value)


StorableText = Annotated[str, AfterValidator(_storable)]


def _rfc3339(value: Any) -> Any:
    """Alertmanager sends times as RFC 3339 strings; pydantic alone would take a number as Unix
    time and date an alert 1970 or 1938."""
    if not isinstance(value, str):
        raise ValueError("must be an RFC 3339 time string, like 2026-01-02T03:04:05Z")
    return value


class Alert(BaseModel):
    # Alertmanager may add fields in later versions: ignore what we do not use.
    model_config = ConfigDict(extra="ignore")

    status: Literal["firing", "resolved"]
    labels: Annotated[dict[str, str], AfterValidator(_label_set)]
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: Annotated[AwareDatetime, BeforeValidator(_rfc3339), AfterValidator(_in_utc)]
    endsAt: Annotated[AwareDatetime | None, BeforeValidator(_rfc3339), AfterValidator(_end)] = None
    fingerprint: StorableText = Field(min_length=1, max_length=MAX_FINGERPRINT)

    @property
    def summary(self) -> str | None:
        """What the alert says happened: the rules put it in annotations; labels as a fallback."""
        text = self.annotations.get("summary") or self.labels.get("summary")
        if not text:
            return None
        text = text.encode(errors="replace").decode().replace("\x00", "\ufffd")
        return text if len(text) <= MAX_SUMMARY else text[: MAX_SUMMARY - 1] + "…"


class Notification(BaseModel):
    model_config = ConfigDict(extra="ignore")

    version: Literal["4"]
    groupKey: StorableText = Field(max_length=MAX_GROUP_KEY)
    truncatedAlerts: int = Field(default=0, ge=0, le=MAX_INT4)
    status: Literal["firing", "resolved"]
    receiver: str
    # Validated one by one (`parse_notification`), so that one bad alert spares the others.
    alerts: list[Any]


@dataclass(frozen=True)
class Refusal:
    """An alert that was not recorded, and why, in words fit for a reply, a log and the audit."""

    index: int
    fingerprint: str | None
    reason: str

    def describe(self) -> dict[str, Any]:
        return {"index": self.index, "fingerprint": self.fingerprint, "reason": self.reason}


@dataclass(frozen=True)
class Parsed:
    notification: Notification
    alerts: list[tuple[int, Alert]]  # the valid ones, with their index in the payload
    refused: list[Refusal]


class ReceiverMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.notifications = Counter(
            "liquid_abt_webhook_notifications",
            "Alertmanager notifications received, by result.",
            ["result"],
            registry=registry,
        )
        for result in RESULTS:
            self.notifications.labels(result)
        self.refused_alerts = Counter(
            "liquid_abt_webhook_refused_alerts",
            "Alerts not recorded because they were invalid, in notifications otherwise recorded.",
            registry=registry,
        )


def _shorten(text: object, limit: int = 80) -> str:
    """Untrusted text made safe to echo and to store: control characters, NUL and lone
    surrogates escaped, cut short."""
    text = str(text)[: limit + 1]
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def _describe_validation(exc: ValidationError, prefix: str = "") -> str:
    first = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(_shorten(p, 40) for p in (prefix, *first["loc"]) if p != "") or "(body)"
    message = first["msg"].removeprefix("Value error, ")
    more = f" and {exc.error_count() - 1} more problem(s)" if exc.error_count() > 1 else ""
    return f"{where}: {_shorten(message, 200)}{more}"


def _parse_envelope(body: bytes) -> Notification:
    try:
        return Notification.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        if first["type"] == "json_invalid":
            # The parser bounds nesting and number sizes itself: no recursion, no huge ints.
            detail = first["msg"].removeprefix("Invalid JSON: ")
            raise ValueError(f"body is not valid JSON: {detail}") from None
        if first["type"] == "model_type":
            raise ValueError("body is not a JSON object") from None
        raise ValueError(
            f"not an Alertmanager v4 notification: {_describe_validation(exc)}"
        ) from None


def _refusal(index: int, raw: Any, reason: str) -> Refusal:
    fingerprint = raw.get("fingerprint") if isinstance(raw, dict) else None
    shown = _shorten(fingerprint, 40) if isinstance(fingerprint, str) else None
    return Refusal(index, shown, reason)


def parse_notification(body: bytes) -> Parsed:
    """The notification and its valid alerts; ValueError (a message a human can act on) when
    the envelope itself is wrong."""
    notification = _parse_envelope(body)
    alerts: list[tuple[int, Alert]] = []
    refused: list[Refusal] = []
    for index, raw in enumerate(notification.alerts):
        try:
            alerts.append((index, Alert.model_validate(raw)))
        except ValidationError as exc:
            refused.append(_refusal(index, raw, _describe_validation(exc, f"alerts.{index}")))
    return Parsed(notification, alerts, refused)


def authorized(header: str | None, secrets: Secrets) -> bool:
    """Bearer token or basic auth, compared in constant time."""
    if not header:
        return False
    try:
        header.encode()
    except UnicodeEncodeError:  # undecodable bytes: not credentials of ours
        return False
    scheme, _, credentials = header.partition(" ")
    if scheme == "Bearer" and secrets.webhook_token:
        return hmac.compare_digest(credentials.encode(), secrets.webhook_token.encode())
    if scheme == "Basic" and secrets.webhook_basic_user and secrets.webhook_basic_password:
        try:
            user, _, password = base64.b64decode(credentials, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        user_ok = hmac.compare_digest(user.encode(), secrets.webhook_basic_user.encode())
        password_ok = hmac.compare_digest(
            password.encode(), secrets.webhook_basic_password.encode()
        )
        return user_ok and password_ok
    return False


INSERT_ALERT = """
INSERT INTO liquid_abt.notifications
    (fingerprint, status, starts_at, ends_at, alertname, exchange, labels, group_key,
     truncated_alerts, summary)
VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8, $9, $10)
ON CONFLICT (fingerprint, status, starts_at) DO NOTHING
RETURNING id
"""


def refused_by_database(exc: BaseException) -> bool:
    """PostgreSQL refused this data for good: a retry of the same alert cannot succeed.

    Data exceptions (SQLSTATE class 22), integrity violations (23) and program limits (54, e.g.
    an index entry over 2,704 bytes), and values asyncpg cannot encode (its client-side DataError,
    an InterfaceError that is also a ValueError). Anything else may pass with time (a restart, a
    deadlock, a timeout, a missing migration): 503, and Alertmanager retries.
    """
    permanent = (
        asyncpg.DataError,
        asyncpg.IntegrityConstraintViolationError,
        asyncpg.ProgramLimitExceededError,
    )
    return isinstance(exc, permanent) or (
        isinstance(exc, asyncpg.InterfaceError) and isinstance(exc, ValueError)
    )


class AllRefused(Exception):
    """Every alert of a notification was refused: nothing is recorded (the transaction rolls back)."""

    def __init__(self, refused: list[Refusal]) -> None:
        super().__init__("every alert was refused")
        self.refused = refused


@dataclass(frozen=True)
class Recorded:
    new: int
    refused: list[Refusal]


def _insert_args(notification: Notification, alert: Alert) -> tuple[Any, ...]:
    return (
        alert.fingerprint, alert.status, alert.startsAt, alert.endsAt,
        alert.labels["alertname"], alert.labels.get("exchange"), json.dumps(alert.labels),
        notification.groupKey, notification.truncatedAlerts, alert.summary,
    )  # fmt: skip


async def _insert(connection: asyncpg.Connection, notification: Notification, alert: Alert) -> bool:
    """One alert state, in a savepoint: PostgreSQL refusing it leaves the others standing."""
    async with transaction(connection):
        inserted = await connection.fetchval(INSERT_ALERT, *_insert_args(notification, alert))
    return inserted is not None


async def _insert_all(
    connection: asyncpg.Connection, notification: Notification, alerts: list[Alert]
) -> int | None:
    """Every alert state in one pipelined batch and one savepoint: the common case, in a few
    round trips instead of three per alert. None when PostgreSQL refused one of them (nothing
    of the batch stays): the caller then records them one by one to keep the others."""
    try:
        async with transaction(connection):
            rows = await connection.fetchmany(
                INSERT_ALERT, [_insert_args(notification, alert) for alert in alerts]
            )
    except DATABASE_ERRORS as exc:
        if not refused_by_database(exc):
            raise
        return None
    return len(rows)  # ON CONFLICT DO NOTHING returns no row for a repeat


async def _insert_one_by_one(
    connection: asyncpg.Connection, parsed: Parsed, refused: list[Refusal]
) -> tuple[int, int]:
    """Each alert state in its own savepoint; what PostgreSQL refuses joins `refused`.
    Returns (new, stored)."""
    new = stored = 0
    for index, alert in parsed.alerts:
        try:
            new += await _insert(connection, parsed.notification, alert)
            stored += 1
        except DATABASE_ERRORS as exc:
            if not refused_by_database(exc):
                raise
            refused.append(Refusal(index, _shorten(alert.fingerprint, 40),
                                   f"PostgreSQL refused it: {_shorten(exc, 200)}"))  # fmt: skip
    return new, stored


async def _audit_refusals(
    connection: asyncpg.Connection, notification: Notification, refused: list[Refusal]
) -> None:
    for refusal in refused:
        await audit.record(
            connection, actor="alertmanager", action="alert_refused", result="refused",
            cause=notification.groupKey, fingerprint=refusal.fingerprint,
            detail={"index": refusal.index, "reason": refusal.reason},
        )  # fmt: skip


async def record(pool: asyncpg.Pool, parsed: Parsed) -> Recorded:
    """Store every valid alert not seen before, in one transaction.

    Raises AllRefused when no alert could be recorded although some were sent."""
    if parsed.refused and not parsed.alerts:  # known without asking the database
        raise AllRefused(parsed.refused)
    notification, refused = parsed.notification, list(parsed.refused)
    # A bounded wait for a connection: a busy pool answers 503 (retry) rather than hang.
    async with pool.acquire(timeout=5) as connection, connection.transaction():
        batch = await _insert_all(connection, notification, [a for _, a in parsed.alerts])
        if batch is not None:  # new: recorded now; stored: now or before (a duplicate)
            new, stored = batch, len(parsed.alerts)
        else:
            new, stored = await _insert_one_by_one(connection, parsed, refused)
        if refused and not stored:
            raise AllRefused(refused)
        await _audit_refusals(connection, notification, refused)
        if notification.truncatedAlerts and new:
            # Alerts beyond max_alerts were dropped from the payload: say so where people look.
            await audit.record(
                connection, actor=audit.ACTOR_ALERTMANAGER, action="notification_truncated",
                result="recorded", cause=notification.groupKey,
                detail={"truncated_alerts": notification.truncatedAlerts},
            )  # fmt: skip
    return Recorded(new, refused)


class BodyError(Exception):
    """The body could not be read: too large (413) or not decodable (400)."""

    def __init__(self, status: int, result: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.result = result


async def read_body(request: web.Request, limit: int) -> bytes:
    """The body, decompressed as its Content-Encoding says; BodyError as soon as it is known to be
    larger than `limit` (after decompression: a small gzip bomb stops at the limit) or corrupt."""
    too_large = BodyError(413, "too_large", f"body larger than {limit} bytes")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
    except (ConnectionError, RuntimeError) as exc:
        # aiohttp says "Connection closed." with a RuntimeError: the client went, or the
        # connection was closed to make room or at the body timeout. Nobody reads the answer.
        if request.transport is not None and not request.transport.is_closing():
            raise
        raise BodyError(400, "invalid", "connection closed before the body was complete") from exc
    except web.RequestPayloadError:
        encoding = _shorten(request.headers.get("Content-Encoding", "identity"), 40)
        raise BodyError(
            400, "invalid", f"body cannot be read as Content-Encoding {encoding} says"
        ) from None
    return b"".join(chunks)


class WebhookHandler:
    """The aiohttp handler; `on_recorded` wakes the action worker."""

    def __init__(
        self,
        pool: Callable[[], asyncpg.Pool],
        secrets: Secrets,
        metrics: ReceiverMetrics,
        max_body_bytes: int,
        on_recorded: Callable[[], None],
    ) -> None:
        self._pool = pool
        self._secrets = secrets
        self._metrics = metrics
        self._max_body_bytes = max_body_bytes
        self._on_recorded = on_recorded
        self._unavailable = 0  # 503s answered since the database went away (0: it is there)

    def _reply(self, result: str, status: int, message: str, **extra: Any) -> web.Response:
        self._metrics.notifications.labels(result).inc()
        return web.json_response({"status": result, "message": message, **extra}, status=status)

    def _invalid(self, message: str, **extra: Any) -> web.Response:
        log.warning("webhook: invalid notification", extra={"error": message})
        return self._reply("invalid", 400, message, **extra)

    async def handle(self, request: web.Request) -> web.Response:
        if not authorized(request.headers.get("Authorization"), self._secrets):
            log.warning("webhook: unauthorized", extra={"remote": request.remote})
            return self._reply("unauthorized", 401, "missing or wrong credentials")
        try:
            body = await read_body(request, self._max_body_bytes)
        except BodyError as exc:
            return self._reply(exc.result, exc.status, str(exc))
        try:
            parsed = parse_notification(body)
        except ValueError as exc:
            return self._invalid(str(exc))
        try:
            recorded = await record(self._pool(), parsed)
        except AllRefused as exc:
            return self._invalid(
                "no alert could be recorded: " + "; ".join(r.reason for r in exc.refused[:5]),
                refused=[r.describe() for r in exc.refused],
            )
        except DATABASE_ERRORS as exc:
            self._database_unavailable(exc)
            return self._reply("error", 503, "database unavailable; retry later")
        self._database_back()
        return self._recorded(parsed.notification, recorded)

    def _database_unavailable(self, exc: BaseException) -> None:
        """One line when the database goes, as the background loops do, not one per 503."""
        if not self._unavailable:
            log.error("webhook: cannot record, asking Alertmanager to retry until the database "
                      "is back", extra={"error": str(exc) or type(exc).__name__})  # fmt: skip
        self._unavailable += 1

    def _database_back(self) -> None:
        if self._unavailable:
            log.info("webhook: database back; recording again",
                     extra={"answered_503": self._unavailable})  # fmt: skip
        self._unavailable = 0

    def _recorded(self, notification: Notification, recorded: Recorded) -> web.Response:
        new, refused = recorded.new, recorded.refused
        log.info(
            "webhook: notification recorded",
            extra={"group_key": _shorten(notification.groupKey, 200),
                   "alerts": len(notification.alerts), "new": new, "refused": len(refused),
                   "truncated_alerts": notification.truncatedAlerts},
        )  # fmt: skip
        if new:
            self._on_recorded()
        message = f"{new} new alert state(s) recorded"
        if refused:
            log.warning(
                "webhook: alerts refused",
                extra={"refused": "; ".join(f"{r.index}: {r.reason}" for r in refused)},
            )
            self._metrics.refused_alerts.inc(len(refused))
            message += f", {len(refused)} alert(s) refused: " + "; ".join(
                r.reason for r in refused[:5]
            )
            return self._reply("partial", 200, message, new=new,
                               refused=[r.describe() for r in refused])  # fmt: skip
        return self._reply("accepted" if new else "duplicate", 200, message, new=new)
