"""The optional push: customer notices POSTed, signed, to the notifier's webhook.

A notifier that prefers a push to claiming sets `notices.webhook_url`; every replica then acts
as a consumer of the outbox with the platform's own statements (claim with a lease, complete,
fail with backoff, then failed: the dead letter), so a notice goes out once per successful
answer, and a replica that dies mid-delivery leaves its claims to the lease.

Each body is signed with HMAC-SHA256 over the exact bytes sent, in `X-Liquid-Abt-Signature:
sha256=<hex>`; the body carries the notice's id (also `Idempotency-Key`) and `sentAt`, so the
receiver drops a repeat and a stale replay.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp
import asyncpg
from prometheus_client import CollectorRegistry, Counter

from exporter.config import NoticesConfig
from exporter.controls import notices as outbox
from exporter.controls.notices import NoticeRow
from exporter.database.background import run_forever

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Liquid-Abt-Signature"
DELIVERY_RESULTS = ("success", "http_error", "network_error")
BATCH = 10


def sign(secret: str, body: bytes) -> str:
    """The signature header's value: `sha256=` and the hex HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str | None) -> bool:
    """What a receiver does (constant time); here for the tests and the docs' example."""
    return header is not None and hmac.compare_digest(sign(secret, body), header)


def body_of(notice: NoticeRow, sent_at: datetime) -> bytes:
    """The notice as the admin API shows it, without the outbox's bookkeeping, and when it was
    sent (inside the signed bytes: a replay shows its age)."""
    payload: dict[str, Any] = {
        name: value
        for name, value in notice.as_json().items()
        if name not in ("claimedAt", "claimedBy", "lastError")
    }
    payload["sentAt"] = sent_at.isoformat()
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


class WebhookMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.deliveries = Counter(
            "liquid_abt_customer_notice_webhook_deliveries",
            "Customer notices this replica POSTed to notices.webhook_url, by result (success: "
            "2xx; http_error: any other answer; network_error: no answer in time).",
            ["result"], registry=registry,
        )  # fmt: skip
        for result in DELIVERY_RESULTS:
            self.deliveries.labels(result)


class WebhookSender:
    """Claims ready notices and POSTs each to the webhook; one consumer name per process."""

    def __init__(
        self, pool: asyncpg.Pool, config: NoticesConfig, secret: str, replica: str,
        metrics: WebhookMetrics | None = None,
    ) -> None:  # fmt: skip
        if not config.webhook_url:
            raise ValueError("notices.webhook_url is not set")
        self._pool, self._config, self._secret = pool, config, secret
        self._url = config.webhook_url
        self._metrics = metrics
        # Unique per process: a restarted replica must not complete its predecessor's claims.
        self.consumer = f"webhook:{replica}:{uuid.uuid4().hex[:12]}"

    async def deliver(self, session: aiohttp.ClientSession) -> int:
        """One round: claim up to a batch and POST each; returns how many were claimed."""
        claimed = await outbox.claim(self._pool, BATCH, self.consumer, self._config)
        for notice in claimed:
            await self._post(session, notice)
        return len(claimed)

    async def _post(self, session: aiohttp.ClientSession, notice: NoticeRow) -> None:
        body = body_of(notice, datetime.now(UTC))
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self._secret, body),
            "Idempotency-Key": str(notice.id),
        }
        timeout = aiohttp.ClientTimeout(total=self._config.webhook_timeout)
        try:
            async with session.post(self._url, data=body, headers=headers, timeout=timeout) as r:
                text = (await r.text())[:200]
                ok = 200 <= r.status < 300
                result, error = (
                    ("success", None) if ok else ("http_error", f"HTTP {r.status}: {text}")
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            result, error = "network_error", f"{type(exc).__name__}: {exc}"[:300]
        if error is None:
            await outbox.complete(self._pool, notice.id, self.consumer)
        else:
            state = await outbox.fail(self._pool, notice.id, self.consumer, error, self._config)
            level = logging.ERROR if state == "failed" else logging.WARNING
            log.log(level, "customer notice webhook delivery failed",
                    extra={"notice": notice.id, "error": error, "state": state})  # fmt: skip
        if self._metrics is not None:
            self._metrics.deliveries.labels(result).inc()

    async def run(self) -> None:
        """Deliver while notices are ready; otherwise look again every `notices.interval`."""
        interval = self._config.interval
        async with aiohttp.ClientSession() as session:

            async def iteration() -> float:
                return 0.0 if await self.deliver(session) >= BATCH else interval

            await run_forever("customer-notice-webhook", iteration, retry_after=interval)
