"""Recovery verification: "resolved" is not proof of recovery.

When the incident model finds an exchange healthy for long enough it leases one verification to
one replica (incident/decision.py). This module runs the runbook's recovery tests (system status
online, current price, a sane order book, the balance when keys are configured) outside any
transaction, since they call the exchange, and hands the result back to the model, whose
decision applies it; a result whose lease was lost meanwhile is dropped, so a slow check can
never overrule a newer decision.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from exporter.runbook.incident import IncidentModel, VerificationLease
from exporter.signals.exchange import Check, RecoveryResult

Verifier = Callable[[], Awaitable[RecoveryResult]]

NO_VERIFIER = RecoveryResult(
    False, (Check("verifier", False, "nothing can verify this exchange: a person decides"),)
)


async def verify(model: IncidentModel, lease: VerificationLease, verifier: Verifier | None) -> bool:
    """Run the checks for the lease and apply the result; True when recovery was verified."""
    result = await verifier() if verifier is not None else NO_VERIFIER
    applied = await model.verified(lease, result)
    return applied and result.ok
