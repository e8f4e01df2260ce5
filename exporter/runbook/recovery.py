"""Recovery verification: "resolved" is not proof of recovery.

When the incident model finds an exchange healthy for long enough it leases one verification to
one replica (incident.py). This module runs the runbook's recovery tests (system status online,
current price, a sane order book, the balance when keys are configured) outside any transaction,
since they call the exchange, and hands the result back; a result whose lease was lost meanwhile
is dropped, so a slow check can never overrule a newer decision.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from exporter.runbook.incident import IncidentModel, VerificationLease
from exporter.signals.kraken.probe import Check, RecoveryResult

log = logging.getLogger(__name__)

Verifier = Callable[[], Awaitable[RecoveryResult]]

NO_VERIFIER = RecoveryResult(
    False, (Check("verifier", False, "nothing can verify this exchange: a person decides"),)
)


def checks_detail(result: RecoveryResult) -> list[dict[str, Any]]:
    return [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in result.checks]


def summary(result: RecoveryResult, cause: str | None) -> str:
    if result.ok:
        return f"recovery verified after {cause}"
    failed = "; ".join(f"{c.name}: {c.detail}" for c in result.checks if not c.ok)
    return f"recovery verification failed: {failed or 'unknown'}"


async def verify(model: IncidentModel, lease: VerificationLease, verifier: Verifier | None) -> bool:
    """Run the checks for the lease and apply the result; True when recovery was verified."""
    result = await verifier() if verifier is not None else NO_VERIFIER
    why = summary(result, lease.cause)
    applied = await model.verified(lease, result.ok, checks_detail(result), why)
    if applied and not result.ok:
        log.warning("recovery not verified; purchases stay paused",
                    extra={"exchange": lease.exchange, "why": why})  # fmt: skip
    return applied and result.ok
