"""The Alertmanager webhook: authenticate, validate, record durably, answer fast.

Alertmanager semantics this module respects:
- every notification is a full snapshot of a group; each alert is recorded with its own status;
- the same notification arrives again (repeat_interval, HA peers, retries): each alert is
  recorded once per (fingerprint, status, startsAt), enforced by a unique constraint;
- 2xx once recorded, 400 for payloads that a retry cannot fix, 401 without credentials, 413 for
  bodies over the limit, 503 when the database is down, so that Alertmanager retries.
The runbook actions run afterwards, in the background (actions.py), from the recorded rows.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

import asyncpg
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from exporter.controls import audit
from exporter.database.pool import DATABASE_ERRORS
from exporter.secrets import Secrets

log = logging.getLogger(__name__)

RESULTS = ("accepted", "duplicate", "invalid", "unauthorized", "too_large", "error")


class Alert(BaseModel):
    # Alertmanager may add fields in later versions: ignore what we do not use.
    model_config = ConfigDict(extra="ignore")

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: datetime
    endsAt: datetime | None = None
    fingerprint: str = Field(min_length=1)


class Notification(BaseModel):
    model_config = ConfigDict(extra="ignore")

    version: Literal["4"]
    groupKey: str
    truncatedAlerts: int = Field(default=0, ge=0)
    status: Literal["firing", "resolved"]
    receiver: str
    alerts: list[Alert]


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


def _describe_validation(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(body)"
    return f"{where}: {first['msg']} ({exc.error_count()} problem(s))"


def parse_notification(body: bytes) -> Notification:
    """Raises ValueError with a message a human can act on."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"body is not valid JSON: {exc}") from None
    try:
        notification = Notification.model_validate(data)
    except ValidationError as exc:
        raise ValueError(
            f"not an Alertmanager v4 notification: {_describe_validation(exc)}"
        ) from None
    for index, alert in enumerate(notification.alerts):
        if "alertname" not in alert.labels:
            raise ValueError(f"alerts.{index}.labels: alertname is missing")
    return notification


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
    (fingerprint, status, starts_at, ends_at, alertname, exchange, labels, group_key, truncated_alerts)
VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8, $9)
ON CONFLICT (fingerprint, status, starts_at) DO NOTHING
RETURNING id
"""


async def record(pool: asyncpg.Pool, notification: Notification) -> int:
    """Store every alert not seen before, in one transaction; returns how many were new."""
    new = 0
    # A bounded wait for a connection: a busy pool answers 503 (retry) rather than hang.
    async with pool.acquire(timeout=5) as connection, connection.transaction():
        for alert in notification.alerts:
            inserted = await connection.fetchval(
                INSERT_ALERT,
                alert.fingerprint, alert.status, alert.startsAt,
                # Alertmanager sends 0001-01-01 for "no end yet".
                alert.endsAt if alert.endsAt and alert.endsAt.year > 1 else None,
                alert.labels["alertname"], alert.labels.get("exchange"),
                json.dumps(alert.labels), notification.groupKey, notification.truncatedAlerts,
            )  # fmt: skip
            new += inserted is not None
        if notification.truncatedAlerts and new:
            # Alerts beyond max_alerts were dropped from the payload: say so where people look.
            await audit.record(
                connection, actor=audit.ACTOR_ALERTMANAGER, action="notification_truncated",
                result="recorded", cause=notification.groupKey,
                detail={"truncated_alerts": notification.truncatedAlerts},
            )  # fmt: skip
    return new


async def _read_limited(request: web.Request, limit: int) -> bytes | None:
    """The body, or None as soon as it is known to be larger than `limit`."""
    if request.content_length is not None and request.content_length > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
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

    def _reply(self, result: str, status: int, message: str, **extra: Any) -> web.Response:
        self._metrics.notifications.labels(result).inc()
        return web.json_response({"status": result, "message": message, **extra}, status=status)

    async def handle(self, request: web.Request) -> web.Response:
        if not authorized(request.headers.get("Authorization"), self._secrets):
            log.warning("webhook: unauthorized", extra={"remote": request.remote})
            return self._reply("unauthorized", 401, "missing or wrong credentials")
        body = await _read_limited(request, self._max_body_bytes)
        if body is None:
            return self._reply("too_large", 413, f"body larger than {self._max_body_bytes} bytes")
        try:
            notification = parse_notification(body)
        except ValueError as exc:
            log.warning("webhook: invalid notification", extra={"error": str(exc)})
            return self._reply("invalid", 400, str(exc))
        try:
            new = await record(self._pool(), notification)
        except asyncpg.DataError as exc:  # e.g. a NUL byte in a label: a retry cannot help
            return self._reply("invalid", 400, f"a value PostgreSQL cannot store: {exc}")
        except DATABASE_ERRORS as exc:
            log.error(
                "webhook: cannot record, asking Alertmanager to retry", extra={"error": str(exc)}
            )
            return self._reply("error", 503, "database unavailable; retry later")
        result = "accepted" if new else "duplicate"
        log.info(
            "webhook: notification recorded",
            extra={"group_key": notification.groupKey, "alerts": len(notification.alerts),
                   "new": new, "truncated_alerts": notification.truncatedAlerts},
        )  # fmt: skip
        if new:
            self._on_recorded()
        return self._reply(result, 200, f"{new} new alert state(s) recorded", new=new)
