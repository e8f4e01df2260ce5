"""The API call rate of each exchange: the runbook's `adjustApiCallFrequency`.

The multiplier lives in the exchange's `exchange_controls` row (pause.py owns the row); the
platform scales its exchange call rate by it.
"""

from __future__ import annotations

import math

from exporter.controls import audit
from exporter.controls.audit import CHANGED, UNCHANGED
from exporter.controls.pause import lock_controls
from exporter.database.transactions import Executor, transaction


def _check_multiplier(multiplier: float) -> float:
    value = float(multiplier)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"invalid API rate multiplier {multiplier!r}: must be a number above 0")
    return value


async def set_rate_multiplier(
    db: Executor,
    exchange: str,
    multiplier: float,
    *,
    actor: str,
    cause: str | None,
    fingerprint: str | None = None,
) -> bool:
    """The runbook's adjustApiCallFrequency (0.5 while rate limited, 1 to restore); True if changed.

    The platform reads `api_rate_multiplier` and scales its exchange call rate by it.
    """
    value = _check_multiplier(multiplier)
    async with transaction(db) as connection:
        old = await lock_controls(connection, exchange)
        changed = old.api_rate_multiplier != value
        if changed:
            await connection.execute(
                """UPDATE liquid_abt.exchange_controls
                   SET api_rate_multiplier = $2, updated_at = now() WHERE exchange = $1""",
                exchange, value,
            )  # fmt: skip
        await audit.record(
            connection, actor=actor, action="set_api_rate_multiplier",
            result=CHANGED if changed else UNCHANGED, exchange=exchange, cause=cause,
            fingerprint=fingerprint, detail={"from": old.api_rate_multiplier, "to": value},
        )  # fmt: skip
    return changed
